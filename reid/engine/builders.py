"""Builders: a run's parts from its :class:`~reid.engine.config.Config`, shared by ``reid.train``
and ``reid.test`` (fast-reid's ``build_*`` functions). Each takes the config and returns one part;
none of them starts training or writes a file.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import distributed as du
from .config import Config, ConfigError
from .optim import WarmupMultiStepLR, build_optimizer
from .workers import resolve_num_workers

__all__ = ["config_values", "build_data", "build_train_loader", "build_network", "build_optimizer_and_schedule", "build_grad_scaler"]


def config_values(cfg: Config, *keys: str) -> dict:
    """``{key: cfg.key}``: config options handed on under their own names."""
    return {k: getattr(cfg, k) for k in keys}


def build_data(cfg: Config, split_id: int, info: Optional[du.DistInfo] = None):
    """The dataset. Under torchrun rank 0 builds it first (the synthetic default is generated
    and cached on first use), then the other nodes' first processes, then everyone else."""
    from reid.data import build_dataset

    options = dict(cfg.dataset_options)
    if cfg.dataset == "mars":
        options.setdefault("protocol", cfg.mars_protocol)

    def make():
        try:
            return build_dataset(cfg.dataset, root=cfg.root, split_id=split_id, verbose=False, **options)
        except TypeError as exc:  # an option the dataset does not take
            raise ConfigError(f"dataset_options: {exc}") from exc

    if info is None or not info.distributed:
        return make()
    return du.run_staged(make, info)


def build_train_loader(cfg: Config, dataset, info: du.DistInfo):
    """The P x K identity-balanced loader of this rank and the number of steps in an epoch."""
    from reid.data import build_train_loader as make_loader

    if cfg.num_identities % info.world_size:
        raise ValueError(
            f"num_identities: got {cfg.num_identities}, which does not split evenly across "
            f"{info.world_size} processes (each rank takes num_identities/world_size identities)"
        )
    loader = make_loader(
        dataset.train,
        **config_values(cfg, "seq_len", "stride", "height", "width", "num_identities", "num_instances",
                        "seed", "random_erasing"),
        num_workers=resolve_num_workers(cfg.num_workers, info.device)[0],
        rank=info.rank,
        world_size=info.world_size,
    )
    steps = len(loader)
    if cfg.iters_per_epoch:
        steps = min(steps, cfg.iters_per_epoch)
    if steps == 0:
        raise ValueError(
            f"the training set ({len(dataset.train)} tracklets, {dataset.num_train_pids} identities) cannot fill "
            f"one batch of num_identities={cfg.num_identities} x num_instances={cfg.num_instances}"
        )
    return loader, steps


def build_network(cfg: Config, num_classes: int, pretrained: Optional[str] = None):
    """The video network named by ``cfg.arch`` with the config's placement and APM options."""
    from reid.models import build_model

    placement = {} if cfg.stages is None else {"stages": tuple(cfg.stages)}
    if cfg.num_blocks is not None:
        placement["num_blocks"] = cfg.num_blocks
    return build_model(
        cfg.arch,
        num_classes=num_classes,
        pretrained=pretrained,
        **config_values(cfg, "time_dim", "apm_scale", "apm_reduction", "contrastive", "detach_gate_inputs",
                        "apm_backend", "last_stride"),
        **placement,
    )


def build_optimizer_and_schedule(cfg: Config, model: torch.nn.Module):
    """The optimiser over the trainable parameters and its per-epoch learning-rate schedule."""
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = WarmupMultiStepLR(optimizer, cfg.milestones, cfg.gamma, cfg.warmup_epochs, cfg.warmup_factor)
    return optimizer, scheduler


def build_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast (a pass-through otherwise); ``amp`` is the resolved policy's."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp: got 'fp16', which needs a CUDA device; use --amp bf16 on CPU (or none)")
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
