"""Resuming a run: which checkpoint, whether it fits the run, and restoring its state.

Nothing of the run's directory changes before :func:`check_resumable` has accepted the
checkpoint: a refused resume leaves every file as it was.
"""
from __future__ import annotations

import os
from typing import Optional

from .checkpoint import LAST_NAME, CheckpointError, restore_rng_state

__all__ = ["RESUME_MUST_MATCH", "resolve_resume_path", "check_resumable", "restore_training_state"]

# config keys that must agree between a checkpoint and the run resuming it
RESUME_MUST_MATCH = ("dataset", "split_id", "arch", "stages", "num_blocks", "last_stride", "optimizer")


def resolve_resume_path(resume: Optional[str], out_dir: str) -> Optional[str]:
    """``--resume auto``: the run's own last checkpoint if there is one (else a fresh start)."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(out_dir, LAST_NAME)
        return path if os.path.isfile(path) else None
    return resume


def check_resumable(ckpt: dict, path: str, run_config: dict, num_classes: int) -> None:
    """Refuse (CheckpointError) a checkpoint of another set-up."""
    saved = ckpt["config"]
    clash = [f"{k}: checkpoint {saved.get(k)!r} vs now {run_config[k]!r}" for k in RESUME_MUST_MATCH if saved.get(k) != run_config[k]]
    if clash or ckpt["num_classes"] != num_classes:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with a different set-up ("
            + "; ".join(clash or [f"num_classes: checkpoint {ckpt['num_classes']} vs now {num_classes}"])
            + ")"
        )


def restore_training_state(ckpt: dict, path: str, trainer) -> None:
    """Load weights, optimiser, schedule, loss scaler and RNG states into ``trainer``."""
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt["rng"])
