"""Resuming a run: which checkpoint, whether it fits the run, and restoring its state.

Nothing of the run's directory changes before :func:`check_resumable` has accepted the
checkpoint: a refused resume leaves every file as it was.
"""
from __future__ import annotations

import os
from typing import Optional

from .checkpoint import LAST_NAME, CheckpointError, load_model_weights, restore_rng_state
from .config import Config
from .optim import load_optimizer_state

__all__ = ["RESUME_MUST_MATCH", "resolve_resume_path", "check_resumable", "restore_training_state"]

# Config keys that must agree between a checkpoint and the run resuming it: they decide the
# data, the shapes of the weights (APM's time_dim, apm_reduction, contrastive), what the
# weights compute (last_stride, apm_scale) or the optimiser's state.
RESUME_MUST_MATCH = (
    "dataset", "split_id", "arch", "stages", "num_blocks", "last_stride", "time_dim", "apm_reduction",
    "contrastive", "apm_scale", "optimizer",
)
_DEFAULTS = Config().to_dict()  # what a checkpoint written before a key existed was trained with


def resolve_resume_path(resume: Optional[str], out_dir: str) -> Optional[str]:
    """``--resume auto``: the run's own last checkpoint if there is one (else a fresh start)."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(out_dir, LAST_NAME)
        return path if os.path.isfile(path) else None
    return resume


def check_resumable(ckpt: dict, path: str, run_config: dict, num_classes: int) -> None:
    """Refuse (CheckpointError) a checkpoint of another set-up, or one already past ``--epochs``
    (resuming it would relabel its results and best checkpoint with a smaller epoch)."""
    saved = {**_DEFAULTS, **ckpt["config"]}
    clash = [f"{k}: checkpoint {saved[k]!r} vs now {run_config[k]!r}" for k in RESUME_MUST_MATCH if saved[k] != run_config[k]]
    if ckpt["num_classes"] != num_classes:
        clash.append(f"num_classes: checkpoint {ckpt['num_classes']} vs now {num_classes}")
    if clash:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with a different set-up ({'; '.join(clash)}). "
            "Resume with the checkpoint's settings, or start a new run in another --output-dir."
        )
    done, epochs = int(ckpt["epoch"]), run_config["epochs"]
    if done > epochs:
        raise CheckpointError(
            f"cannot resume from {path}: that run already trained {done} epochs, more than --epochs {epochs}; "
            f"nothing was changed. Evaluate it with `python -m reid.test --checkpoint {path}`, or give "
            f"--epochs above {done} to train on."
        )


def restore_training_state(ckpt: dict, path: str, trainer) -> None:
    """Load weights, optimiser, schedule, loss scaler and RNG states into ``trainer``."""
    what = f"{trainer.cfg.arch} with {trainer.num_classes} classes"
    load_model_weights(trainer.model, ckpt["model"], f"checkpoint {path}", what)
    try:
        load_optimizer_state(trainer.optimizer, ckpt["optimizer"])
        trainer.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            trainer.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its optimiser or schedule state does not fit this run's "
            f"{trainer.cfg.optimizer} optimiser ({type(exc).__name__}: {exc})"
        ) from exc
    restore_rng_state(ckpt["rng"])
