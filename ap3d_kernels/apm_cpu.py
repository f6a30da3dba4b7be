"""The ``"cpu"`` backend of :func:`ap3d_kernels.apm`: fused C++ kernels (``csrc/``).

The kernels are the operators ``torch.ops.ap3d_cpu.apm_fwd`` and ``torch.ops.ap3d_cpu.apm_bwd``,
registered in C++ with ``TORCH_LIBRARY``. This module loads them and adds what PyTorch needs
around a C++ operator: fake (meta) kernels for ``torch.compile`` and ``opcheck``, the autograd
formula, and FLOP formulas for ``torch.utils.flop_counter``.

The shared object comes from one of two builds:

- ``pip install --no-build-isolation -e .`` builds ``ap3d_kernels/_C*.so`` (imported here);
- CMake (``CMakeLists.txt`` at the repository root) builds ``libap3d_kernels.so``; point
  ``AP3D_KERNELS_LIBRARY`` at it and this module loads it with ``torch.ops.load_library``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from . import _build
from .flops import apm_backward_flops, apm_forward_flops

__all__ = ["is_available", "supports_device", "apm", "apm_forward", "apm_backward", "isa", "LIBRARY_ENV"]

LIBRARY_ENV = "AP3D_KERNELS_LIBRARY"

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` in the ap3d-kernels checkout "
    "(or `bash scripts/install.sh`), or build with CMake "
    "(`cmake -S . -B build -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)') "
    "&& cmake --build build`) and set "
    f"{LIBRARY_ENV}=build/libap3d_kernels.so"
)

_load_error: Optional[str] = None
_loaded = False


def _load() -> Optional[str]:
    """Load the operators once; returns None on success, else why not (with build instructions)."""
    global _load_error, _loaded
    if _loaded or _load_error is not None:
        return _load_error
    path = os.environ.get(LIBRARY_ENV)
    try:
        if path:
            torch.ops.load_library(path)
        else:
            _build.load_or_build()  # the prebuilt ap3d_kernels._C, else compiled at first use (cached)
        torch.ops.ap3d_cpu.apm_fwd  # noqa: B018 - raises if the library registered nothing
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        where = f"{LIBRARY_ENV}={path}" if path else "the extension ap3d_kernels._C"
        _load_error = f"the fused CPU kernels are not available: {where} could not be loaded ({exc}); {BUILD_HINT}"
        return _load_error
    _register_python_parts()
    _loaded = True
    return None


def is_available() -> tuple[bool, str]:
    reason = _load()
    return (reason is None, reason or "")


def supports_device(device) -> bool:
    return torch.device(device).type == "cpu"


def isa() -> str:
    """The instruction set the kernels' vector loops run with on this CPU."""
    _require()
    return torch.ops.ap3d_cpu.apm_isa()


def _require() -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(reason)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_python_parts() -> None:
    """Fake kernels, autograd and FLOP formulas of the C++ operators (once, after loading)."""

    @torch.library.register_fake("ap3d_cpu::apm_fwd")
    def _apm_fwd_fake(x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim, contrastive,
                      detach_gate_inputs):
        B, C, T, H, W = x.shape
        acc = _acc_dtype(x.dtype)
        out = x.new_empty((B, C, time_dim * T, H, W))
        lse = x.new_empty((B, T, time_dim - 1, H * W), dtype=acc)
        if contrastive:
            gate = x.new_empty((B, T, time_dim - 1, H * W), dtype=acc)
            phi_y = x.new_empty((B, T, time_dim - 1, H * W, g_weight.shape[0]), dtype=acc)
        else:
            gate = x.new_empty((0,), dtype=acc)
            phi_y = x.new_empty((0,), dtype=acc)
        return out, lse, gate, phi_y

    @torch.library.register_fake("ap3d_cpu::apm_bwd")
    def _apm_bwd_fake(grad_out, x, g_weight, theta_weight, phi_weight, att_weight, out, lse, gate, phi_y, scale,
                      time_dim, contrastive, detach_gate_inputs):
        grad_x = x.new_empty(x.shape)
        grad_g = g_weight.new_empty(g_weight.shape)
        if contrastive:
            return (grad_x, grad_g, g_weight.new_empty(theta_weight.shape), g_weight.new_empty(phi_weight.shape),
                    g_weight.new_empty(att_weight.shape))
        empty = g_weight.new_empty((0,))
        return grad_x, grad_g, empty, g_weight.new_empty((0,)), g_weight.new_empty((0,))

    def _setup_context(ctx, inputs, output):
        x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim, contrastive, detach = inputs
        out, lse, gate, phi_y = output
        ctx.save_for_backward(x, g_weight, theta_weight, phi_weight, att_weight, out, lse, gate, phi_y)
        ctx.args = (scale, time_dim, contrastive, detach)

    def _backward(ctx, grad_out, _grad_lse, _grad_gate, _grad_phi_y):
        # lse / gate / phi_y are saved statistics, not differentiable results: their gradients are ignored.
        x, g_weight, theta_weight, phi_weight, att_weight, out, lse, gate, phi_y = ctx.saved_tensors
        scale, time_dim, contrastive, detach = ctx.args
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        gx, gg, gth, gph, gatt = torch.ops.ap3d_cpu.apm_bwd(
            grad_out, x, g_weight, theta_weight, phi_weight, att_weight, out, lse, gate, phi_y,
            scale, time_dim, contrastive, detach,
        )
        if not contrastive:
            gth = gph = gatt = None
        return gx, gg, gth, gph, gatt, None, None, None, None

    torch.library.register_autograd("ap3d_cpu::apm_fwd", _backward, setup_context=_setup_context)

    @register_flop_formula(torch.ops.ap3d_cpu.apm_fwd)
    def _apm_fwd_flop(x_shape, g_shape, theta_shape, phi_shape, att_shape, scale, time_dim, contrastive,
                      detach_gate_inputs, *args, out_shape=None, **kwargs) -> int:
        B, C, T, H, W = x_shape
        return apm_forward_flops(B, C, T, H * W, g_shape[0], time_dim, contrastive)

    @register_flop_formula(torch.ops.ap3d_cpu.apm_bwd)
    def _apm_bwd_flop(grad_shape, x_shape, g_shape, theta_shape, phi_shape, att_shape, out_shape_, lse_shape,
                      gate_shape, phi_y_shape, scale, time_dim, contrastive, detach_gate_inputs, *args,
                      out_shape=None, **kwargs) -> int:
        B, C, T, H, W = x_shape
        return apm_backward_flops(B, C, T, H * W, g_shape[0], time_dim, contrastive)


def apm_forward(x, g_weight, theta_weight, phi_weight, att_weight, *, scale, time_dim, contrastive,
                detach_gate_inputs=True):
    """The raw forward operator: ``(out, lse, gate, phi_y)`` (arguments must be validated)."""
    _require()
    return torch.ops.ap3d_cpu.apm_fwd(x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim,
                                      contrastive, detach_gate_inputs)


def apm_backward(grad_out, x, g_weight, theta_weight, phi_weight, att_weight, out, lse, gate, phi_y, *, scale,
                 time_dim, contrastive, detach_gate_inputs=True):
    """The raw backward operator: gradients of x, g, theta, phi and att (empty when not contrastive)."""
    _require()
    return torch.ops.ap3d_cpu.apm_bwd(grad_out, x, g_weight, theta_weight, phi_weight, att_weight, out, lse, gate,
                                      phi_y, scale, time_dim, contrastive, detach_gate_inputs)


def apm(x, g_weight, theta_weight, phi_weight, att_weight, *, scale, time_dim, contrastive, detach_gate_inputs):
    """Backend entry point of :func:`ap3d_kernels.apm` (arguments already validated)."""
    return apm_forward(x, g_weight, theta_weight, phi_weight, att_weight, scale=scale, time_dim=time_dim,
                       contrastive=contrastive, detach_gate_inputs=detach_gate_inputs)[0]
