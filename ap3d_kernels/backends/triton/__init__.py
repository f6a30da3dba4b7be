"""The ``"triton"`` backend of :func:`ap3d_kernels.apm`: the APM core as fused Triton kernels.

``kernels.py`` holds the kernels, ``launchers.py`` lays out the operands and launches them, and
``ops.py`` registers them as ``torch.ops.ap3d_triton.apm_fwd`` / ``apm_bwd`` (the contract of
:mod:`ap3d_kernels.backends`). triton is optional: without it this module imports and reports
the backend unavailable. Kernels run compiled on CUDA tensors, or, with ``TRITON_INTERPRET=1``
set before triton is first imported, interpreted on CPU tensors (slow; this is how CI tests them).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["is_available", "supports_device", "interpreting", "forward_op", "backward_op"]

try:  # triton is optional
    import triton  # noqa: F401

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without triton
    _IMPORT_ERROR = exc

if _IMPORT_ERROR is None:
    from . import ops
    from .kernels import INTERPRETED as _INTERPRETED

    forward_op = torch.ops.ap3d_triton.apm_fwd
    backward_op = torch.ops.ap3d_triton.apm_bwd
else:
    _INTERPRETED = False
    forward_op = backward_op = None


def interpreting() -> bool:
    """Whether the kernels were built for the Triton interpreter (CPU tensors)."""
    return _INTERPRETED


def is_available() -> tuple[bool, str]:
    if _IMPORT_ERROR is not None:
        return False, (
            f"the 'triton' backend needs the triton package (pip install triton>=3.0); "
            f"importing it failed: {_IMPORT_ERROR}"
        )
    if not _INTERPRETED and not torch.cuda.is_available():
        return False, (
            "the 'triton' backend needs a CUDA GPU, or TRITON_INTERPRET=1 set before triton is "
            "first imported to run its kernels on CPU tensors (slow; for testing)"
        )
    return True, ""


def supports_device(device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return _IMPORT_ERROR is None and torch.cuda.is_available()
    if device.type == "cpu":
        return _INTERPRETED
    return False
