"""The ``"cpu"`` backend of :func:`ap3d_kernels.apm`: the APM core as fused C++ kernels (``csrc/``).

The kernels are the operators ``torch.ops.ap3d_cpu.apm_fwd`` and ``apm_bwd`` (the contract in
:mod:`ap3d_kernels.backends`), defined and implemented in C++ with ``TORCH_LIBRARY``. Importing
this module loads them and registers, next to them, their fake kernels, autograd formula and
FLOP formulas (:func:`ap3d_kernels.backends.registration.register_core`). ``import
ap3d_kernels`` imports it, so a ``torch.compile``'d model or a ``FlopCounterMode`` created
before the first call sees the operators fully registered.

The shared object comes from one of two builds:

- ``pip install --no-build-isolation -e .`` builds ``ap3d_kernels/_C*.so`` (imported here);
- CMake (``CMakeLists.txt`` at the repository root) builds ``libap3d_kernels.so``; point
  ``AP3D_KERNELS_LIBRARY`` at it and this module loads it with ``torch.ops.load_library``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _build
from .registration import register_core

__all__ = ["is_available", "supports_device", "isa", "forward_op", "backward_op", "LIBRARY_ENV"]

LIBRARY_ENV = "AP3D_KERNELS_LIBRARY"

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` in the ap3d-kernels checkout "
    "(or `bash scripts/install.sh`), or build with CMake "
    "(`cmake -S . -B build -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)') "
    "&& cmake --build build`) and set "
    f"{LIBRARY_ENV}=build/libap3d_kernels.so"
)


def _load() -> Optional[str]:
    """Load the operators; returns None on success, else why not (with build instructions)."""
    path = os.environ.get(LIBRARY_ENV)
    try:
        if path:
            torch.ops.load_library(path)
        else:
            _build.load_or_build()  # the prebuilt ap3d_kernels._C, else compiled at first use (cached)
        torch.ops.ap3d_cpu.apm_fwd  # noqa: B018 - raises if the library registered nothing
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        where = f"{LIBRARY_ENV}={path}" if path else "the extension ap3d_kernels._C"
        return f"the fused CPU kernels are not available: {where} could not be loaded ({exc}); {BUILD_HINT}"
    return None


_LOAD_ERROR = _load()
if _LOAD_ERROR is None:
    register_core("ap3d_cpu", backend="cpu")
    forward_op = torch.ops.ap3d_cpu.apm_fwd
    backward_op = torch.ops.ap3d_cpu.apm_bwd
else:
    forward_op = backward_op = None


def is_available() -> tuple[bool, str]:
    return (_LOAD_ERROR is None, _LOAD_ERROR or "")


def supports_device(device) -> bool:
    return torch.device(device).type == "cpu"


def isa() -> str:
    """The instruction set the kernels' vector loops run with on this CPU."""
    if _LOAD_ERROR is not None:
        raise RuntimeError(_LOAD_ERROR)
    return torch.ops.ap3d_cpu.apm_isa()
