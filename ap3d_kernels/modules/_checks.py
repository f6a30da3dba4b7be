"""Input and argument checks shared by the module layer.

Every error names the module, the argument, what it got and what it expects, so a mistake in a
network definition is reported where it is made rather than deep inside a convolution.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

__all__ = ["check_video_input", "check_positive_int", "check_bool", "describe"]


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_video_input(
    module: str, x, *, channels: int, device: Optional[torch.device] = None, name: str = "x"
) -> None:
    """``x`` must be a floating ``[B, channels, T, H, W]`` tensor on the module's device."""
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


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value
