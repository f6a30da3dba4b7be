"""A trained network back from a ``reid.train`` checkpoint, ready for inference.

Shared by the tools that use a trained model outside training: ``reid.extract`` / ``reid.search``
(features of your own tracklets), ``reid.visualize ranks`` and ``reid.export``.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import torch

from .engine.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .engine.config import MACHINE_DEFAULTS, Config, ConfigError, config_from_dict, load_config

__all__ = ["TrainedModel", "load_trained_model", "resolve_device", "add_checkpoint_arguments", "inference_overrides"]


@dataclasses.dataclass
class TrainedModel:
    model: torch.nn.Module  # in eval mode: clips [B, 3, T, H, W] -> per-frame features [B, T, D]
    cfg: Config  # the run's configuration, with any overrides applied
    checkpoint: str
    epoch: int
    num_classes: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: got 'cuda' but no CUDA device is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: got {device!r}, expected auto, cpu or cuda")
    return torch.device(device)


def load_trained_model(path: str, device: str | torch.device = "cpu", overrides: Optional[dict] = None,
                       args: Optional[argparse.Namespace] = None) -> TrainedModel:
    """Build the checkpoint's network with its stored config and load its weights.

    ``overrides`` (config keys) or ``args`` (parsed config flags, as ``reid.test`` takes them)
    change stored values such as ``test_batch_size``, ``num_workers`` or ``root``.
    """
    from .engine.builders import build_network  # the trainer's factory: the same network as in training

    ckpt = load_checkpoint(path)
    try:
        base = config_from_dict(ckpt["config"], source=path)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read: {exc}") from exc
    # the backbone's ImageNet file is irrelevant here (the weights come from the checkpoint), and so is
    # the training machine's device and its machine-dependent choices
    base = dataclasses.replace(base, pretrained=None, resume=None, **MACHINE_DEFAULTS)
    if overrides:
        base = config_from_dict(overrides, source="overrides", base=base)
    cfg = load_config(args, base=base) if args is not None else base.validate()
    model = build_network(cfg, int(ckpt["num_classes"]), pretrained=None)
    load_model_weights(model, ckpt["model"], f"checkpoint {path}", f"{cfg.arch} with {ckpt['num_classes']} classes")
    device = torch.device(device)
    return TrainedModel(model.to(device).eval(), cfg, path, int(ckpt["epoch"]), int(ckpt["num_classes"]))


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` plus the inference options every tool takes."""
    parser.add_argument("--checkpoint", required=True, metavar="PTH",
                        help="checkpoint written by reid.train (model_best.pth or checkpoint_last.pth)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="[default: auto]")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="clips per batch [default: the run's test_batch_size]")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="data loader worker processes [default: the run's num_workers]")


def inference_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from :func:`add_checkpoint_arguments`' options."""
    out = {}
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag}: got {value}, expected an integer >= {least}")
    if args.batch_size is not None:
        out["test_batch_size"] = args.batch_size
    if args.num_workers is not None:
        out["num_workers"] = args.num_workers
    return out
