"""A network to analyse, from a ``reid.train`` checkpoint: its trained weights or the weights its
training started from. Shared by ``reid.analysis.registration`` and ``reid.visualize``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ap3d_kernels import APM

__all__ = ["Network", "load_network", "analysis_device"]


@dataclass
class Network:
    model: torch.nn.Module
    cfg: object              # the run's reid.engine.config.Config, with the command line's overrides
    weights: str             # "trained (epoch N)" or "init" / "init (pretrained 2D)"


def load_network(path: str, args, *, initial: bool = False) -> Network:
    """The AP-network of checkpoint ``path``, in eval mode.

    Any ``reid.train`` config flag present in ``args`` (a ``reid.engine.config.build_parser``
    namespace) overrides the stored value. ``initial=True`` gives the weights ``reid.train``
    started from instead of the trained ones: the same seed before the same construction, with
    the run's ``pretrained`` 2D file (or ``--pretrained``) if it used one.
    """
    from reid.engine.checkpoint import CheckpointError, load_checkpoint
    from reid.engine.config import ConfigError, config_from_dict, load_config
    from reid.engine.trainer import build_network, seed_everything

    ckpt = load_checkpoint(path)
    try:
        stored = config_from_dict(ckpt["config"], source=path)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read: {exc}") from exc
    # The stored 2D weights file matters only for the initialisation (and may be gone by now).
    base = dataclasses.replace(stored, resume=None, pretrained=stored.pretrained if initial else None)
    cfg = load_config(args, base=base)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    num_classes = int(ckpt["num_classes"])
    if initial:
        seed_everything(cfg.seed)  # exactly what reid.train does before building the network
        model = build_network(cfg, num_classes, cfg.pretrained)
        weights = "init" + (" (pretrained 2D)" if cfg.pretrained else "")
    else:
        model = build_network(cfg, num_classes, pretrained=None)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path}: its weights do not fit {cfg.arch} "
                                  f"({str(exc).splitlines()[0]})") from exc
        weights = f"trained (epoch {ckpt['epoch']})"
    if not any(isinstance(m, APM) for m in model.modules()):
        raise ValueError(f"checkpoint {path}: {cfg.arch} has no APM module, so there is no registration to look at "
                         f"(an AP-network such as ap3d_resnet18 expected)")
    return Network(model.eval(), cfg, weights)


def analysis_device(cfg) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: got 'cuda', but no CUDA device is available")
    return torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
