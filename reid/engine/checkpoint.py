"""Checkpoints: atomic writes, safe loads (``weights_only=True``) and clear errors.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(..., weights_only=True)``: no pickled code runs when opening a file. Before that,
the CRC32 of every record of the archive is checked (``reid.serialization``): ``torch.load``
does not, and a flipped byte inside a tensor would otherwise load silently.
Writes go through :mod:`reid.engine.fileio` (temporary file in the same directory, fsync,
``os.replace``), so a crash or a full disk never leaves a half-written ``checkpoint_last.pth``
or ``model_best.pth``.
"""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch

from ..serialization import WeightsFileError, load_weights_file
from .fileio import atomic_torch_save as atomic_save

__all__ = [
    "CheckpointError",
    "FORMAT_VERSION",
    "LAST_NAME",
    "BEST_NAME",
    "atomic_save",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "load_model_weights",
]

FORMAT_VERSION = 1
LAST_NAME = "checkpoint_last.pth"
BEST_NAME = "model_best.pth"
REQUIRED_KEYS = ("format_version", "model", "epoch", "config", "num_classes")
RESUME_KEYS = ("optimizer", "scheduler", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupted, or not one written by reid.train."""


def load_checkpoint(path: str, for_resume: bool = False) -> dict:
    """Load a checkpoint written by reid.train: integrity-checked, then ``weights_only=True``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = load_weights_file(path, what="checkpoint")
    except WeightsFileError as exc:  # CRC mismatch, truncation, pickle payload: one message, no traceback
        raise CheckpointError(str(exc)) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict written by reid.train")
    missing = [k for k in REQUIRED_KEYS + (RESUME_KEYS if for_resume else ()) if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: it is not a "
            f"{'resumable ' if for_resume else ''}checkpoint written by reid.train"
            + (" (model_best.pth holds weights only; resume from checkpoint_last.pth)" if for_resume else "")
        )
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt['format_version']}, this code reads up to {FORMAT_VERSION}"
        )
    return ckpt


def capture_rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_primitives(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    random.setstate(_python_state_from_primitives(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_primitives(st) -> list:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _python_state_from_primitives(st: list):
    version, internal, gauss = st
    return (version, tuple(internal), gauss)


def checkpoint_summary(ckpt: dict) -> Optional[str]:
    cfg = ckpt.get("config", {})
    return f"{cfg.get('arch', '?')} on {cfg.get('dataset', '?')}, epoch {ckpt.get('epoch')}"


def load_model_weights(model: torch.nn.Module, state: dict, source: str, what: str) -> None:
    """``model.load_state_dict(state)``, or a :class:`CheckpointError` saying which tensors are
    missing, unexpected or of the wrong shape (``source``: where the weights come from;
    ``what``: the model they were meant for, e.g. ``"ap3d_resnet18 with 8 classes"``)."""
    own = model.state_dict()
    state = state if isinstance(state, dict) else {}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {list(state[k].shape)} (the model's: {list(own[k].shape)})"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]

    def few(items):
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    problems = [f"{len(v)} {name}: {few(v)}" for name, v in
                (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if v]
    if not problems:
        try:
            model.load_state_dict(state)
            return
        except (RuntimeError, TypeError) as exc:
            problems = [str(exc).strip().splitlines()[-1].strip()]
    raise CheckpointError(f"{source}: its weights do not fit {what} ({'; '.join(problems)})")
