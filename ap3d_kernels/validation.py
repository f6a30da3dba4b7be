"""Argument checks of the op library: the APM op's and the modules'. The one home of these
helpers; ``reid`` uses them too (``describe``, ``check_positive_int``, ``check_video_input``).

Every error names the argument, what it got and what it expects, and is raised before any
kernel runs (so a fused backend never sees malformed input) or any layer is built.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = [
    "check_apm_args",
    "check_time_dim",
    "check_scale",
    "check_positive_int",
    "check_bool",
    "check_video_input",
    "describe",
    "FLOATING_DTYPES",
]

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(t: torch.Tensor) -> str:
    """``shape (..), dtype .., device ..``: how an error message shows a tensor."""
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int; TypeError if it is not an integer (bools refused), ValueError if below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def check_video_input(
    module: str, x, *, channels: int, device: Optional[torch.device] = None, name: str = "x"
) -> None:
    """``x`` must be a floating ``[B, channels, T, H, W]`` tensor (on ``device`` when given);
    errors start with ``module``, the layer being called."""
    expected = f"[B, C={channels}, T, H, W]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{module}: {name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{module}: {name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {x.dtype} ({describe(x)})"
        )
    if x.dim() != 5:
        raise ValueError(f"{module}: {name} must have rank 5, shape {expected}, got rank {x.dim()} ({describe(x)})")
    if x.shape[1] != channels:
        raise ValueError(
            f"{module}: {name} must have {channels} channels (shape {expected}), got {x.shape[1]} ({describe(x)})"
        )
    if device is not None and x.device != device:
        raise ValueError(
            f"{module}: {name} is on {x.device} but the module's parameters are on {device}; "
            f"move the input or the module so both share one device"
        )


def check_time_dim(time_dim) -> int:
    if isinstance(time_dim, bool) or not isinstance(time_dim, numbers.Integral):
        raise TypeError(f"time_dim must be an odd integer >= 3, got {time_dim!r} ({type(time_dim).__name__})")
    if time_dim < 3 or time_dim % 2 == 0:
        raise ValueError(f"time_dim must be an odd integer >= 3, got {time_dim}")
    return int(time_dim)


def check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a finite positive real number, got {scale!r} ({type(scale).__name__})")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite positive real number, got {scale}")
    return float(scale)


def _check_tensor(name: str, t, *, ndim: int, expected: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dtype not in FLOATING_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.dim() != ndim:
        raise ValueError(f"{name} must have rank {ndim}, shape {expected}, got rank {t.dim()} ({describe(t)})")


def check_apm_args(
    x: torch.Tensor,
    g_weight: torch.Tensor,
    theta_weight: Optional[torch.Tensor],
    phi_weight: Optional[torch.Tensor],
    att_weight: Optional[torch.Tensor],
    *,
    scale,
    time_dim,
    contrastive: bool,
    caller: Optional[str] = None,
) -> tuple[float, int]:
    """Validate the arguments of ``apm``; returns the normalised ``(scale, time_dim)``.

    ``caller`` (e.g. ``"APM"``, when the module calls) prefixes every message.
    """
    try:
        return _check_apm_args(x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim, contrastive)
    except (TypeError, ValueError) as exc:
        if caller is None:
            raise
        raise type(exc)(f"{caller}: {exc}") from None


def _check_apm_args(x, g_weight, theta_weight, phi_weight, att_weight, scale, time_dim, contrastive):
    _check_tensor("x", x, ndim=5, expected="[B, C, T, H, W]")
    B, C, T, H, W = x.shape
    # not min(...): under torch.export's symbolic sizes, min() of a dynamic batch and a fixed C guards batch <= C
    if any(d == 0 for d in (B, C, T, H, W)):
        raise ValueError(f"x must have no empty dimension ([B, C, T, H, W] all >= 1), got {describe(x)}")
    _check_tensor("g_weight", g_weight, ndim=2, expected=f"[Ck, C={C}]")
    ck, c_w = g_weight.shape
    if ck == 0 or c_w == 0:
        raise ValueError(f"g_weight must have shape [Ck, C] with Ck, C >= 1, got {describe(g_weight)}")
    if c_w != C:
        raise ValueError(
            f"x must have {c_w} channels (shape [B, C={c_w}, T, H, W], to match g_weight of shape [Ck={ck}, C={c_w}]), "
            f"got {C} ({describe(x)})"
        )
    named = [("g_weight", g_weight)]
    if contrastive:
        for name, w in (("theta_weight", theta_weight), ("phi_weight", phi_weight)):
            if w is None:
                raise ValueError(f"{name} is required when contrastive=True (expected shape [{ck}, {C}]), got None")
            _check_tensor(name, w, ndim=2, expected=f"[Ck={ck}, C={C}]")
            if tuple(w.shape) != (ck, C):
                raise ValueError(f"{name} must have shape [Ck={ck}, C={C}] (same as g_weight), got {describe(w)}")
            named.append((name, w))
        if att_weight is None:
            raise ValueError(f"att_weight is required when contrastive=True (expected shape [{ck}]), got None")
        _check_tensor("att_weight", att_weight, ndim=1, expected=f"[Ck={ck}]")
        if att_weight.shape[0] != ck:
            raise ValueError(f"att_weight must have shape [Ck={ck}], got {describe(att_weight)}")
        named.append(("att_weight", att_weight))
    for name, w in named:
        if w.device != x.device:
            raise ValueError(f"{name} is on {w.device} but x is on {x.device}; all tensors must share one device")
    return check_scale(scale), check_time_dim(time_dim)
