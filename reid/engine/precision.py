"""Precision and memory-layout policy: the fastest correct setting for the machine a run is on.

``--amp auto`` (the default) picks:

- **CPU**: bf16 autocast when the CPU computes bf16 natively (x86 ``avx512_bf16`` / ``amx_bf16``,
  Arm ``bf16`` in ``/proc/cpuinfo``) and oneDNN is built in; fp32 otherwise, because bf16 without
  hardware support is emulated and slower than fp32.
- **CUDA**: bf16 autocast where the GPU supports bf16 (sm_80 and newer); fp16 autocast with loss
  scaling on older GPUs with tensor cores (sm_70+); fp32 below that.

``--memory-format auto`` picks ``channels_last_3d`` (NDHWC) on CPU when oneDNN is present: its 3-D
convolutions run natively channels-last, so NCDHW pays reorders around every conv (measured:
``bench/bench_model.py``, README "Speed"). On CUDA it picks ``channels_last_3d`` under bf16/fp16
(the layout cuDNN's tensor-core convolutions take) and ``contiguous`` in fp32.

An explicit ``--amp`` / ``--memory-format`` value is always honoured; ``fp16`` on a CPU is refused
(CPU fp16 autocast is neither fast nor what the loss scaler expects).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass
from typing import Optional

import torch

__all__ = [
    "AMP_CHOICES",
    "MEMORY_FORMAT_CHOICES",
    "Policy",
    "cpu_flags",
    "native_bf16",
    "resolve_policy",
]

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
MEMORY_FORMAT_CHOICES = ("auto", "contiguous", "channels_last_3d")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}
# /proc/cpuinfo flags that mean native bf16 arithmetic (x86: AVX512-BF16 dot products, AMX tiles;
# aarch64: the FEAT_BF16 instructions oneDNN uses on e.g. Graviton3)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
    """The CPU's feature flags (x86 ``flags``, aarch64 ``Features``); empty where unreadable."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device, flags: Optional[frozenset] = None) -> tuple[bool, str]:
    """(whether ``device`` computes bf16 natively, the reason in words)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    flags = cpu_flags() if flags is None else flags
    found = [f for f in _BF16_FLAGS if f in flags]
    if not found:
        return False, "this CPU has no native bf16 (no avx512_bf16 / amx_bf16 / bf16 flag in /proc/cpuinfo)"
    if not torch.backends.mkldnn.is_available():
        return False, f"this CPU has {'/'.join(found)} but torch was built without oneDNN"
    return True, f"this CPU has native bf16 ({', '.join(found)})"


@dataclass(frozen=True)
class Policy:
    """A resolved setting: ``amp`` in none|bf16|fp16, ``memory_format`` in contiguous|channels_last_3d."""

    amp: str
    memory_format: str
    amp_reason: str
    memory_format_reason: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype, or None for fp32."""
        return _AMP_DTYPES.get(self.amp)

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return _MEMORY_FORMATS[self.memory_format]

    def autocast(self, device: torch.device):
        """The autocast region for forward passes (a no-op context in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Convert 5-D parameters (conv weights) to the layout, in place; returns the model."""
        if self.memory_format != "contiguous":
            model.to(memory_format=self.torch_memory_format)
        return model

    def prepare_batch(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips ``[B, 3, T, H, W]`` in the layout (a no-op when already there, as the loaders'
        channels-last batches are for ``channels_last_3d``)."""
        if clips.dim() == 5:
            return clips.contiguous(memory_format=self.torch_memory_format)
        return clips

    def short(self) -> str:
        """E.g. ``bf16 autocast, channels_last_3d``."""
        return f"{'fp32' if self.amp == 'none' else self.amp + ' autocast'}, {self.memory_format}"

    def describe(self) -> str:
        """One line for the run header: what was chosen and why."""
        precision = "fp32" if self.amp == "none" else f"{self.amp} autocast"
        return f"precision {precision} ({self.amp_reason}) | layout {self.memory_format} ({self.memory_format_reason})"

    def as_dict(self) -> dict:
        return asdict(self)


def _auto_amp(device: torch.device, flags: Optional[frozenset]) -> tuple[str, str]:
    native, why = native_bf16(device, flags)
    if native:
        return "bf16", f"auto: {why}"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0):
        return "fp16", f"auto: {why}; fp16 tensor cores with loss scaling instead"
    return "none", f"auto: {why}"


def _auto_memory_format(device: torch.device, amp: str) -> tuple[str, str]:
    if device.type == "cpu":
        if torch.backends.mkldnn.is_available():
            return "channels_last_3d", "auto: oneDNN runs 3-D convolutions channels-last on CPU"
        return "contiguous", "auto: torch was built without oneDNN"
    if device.type == "cuda" and amp in ("bf16", "fp16"):
        return "channels_last_3d", f"auto: cuDNN's {amp} tensor-core convolutions take NDHWC"
    return "contiguous", f"auto: {amp if amp != 'none' else 'fp32'} on {device.type}"


def resolve_policy(amp: str, memory_format: str, device, *, flags: Optional[frozenset] = None) -> Policy:
    """Resolve ``--amp`` and ``--memory-format`` for ``device``.

    ``flags`` replaces the CPU flags read from ``/proc/cpuinfo`` (for tests). Raises ValueError
    naming the option for an unknown value or fp16 on a CPU.
    """
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp: got {amp!r}, expected one of {', '.join(AMP_CHOICES)}")
    if memory_format not in MEMORY_FORMAT_CHOICES:
        raise ValueError(f"memory_format: got {memory_format!r}, expected one of {', '.join(MEMORY_FORMAT_CHOICES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp: got 'fp16', which needs a CUDA device; use --amp bf16 on CPU (or none, or auto)")
    if amp == "auto":
        amp, amp_reason = _auto_amp(device, flags)
    else:
        amp_reason = f"--amp {amp}"
        if amp == "bf16" and not native_bf16(device, flags)[0]:
            amp_reason += f", emulated: {native_bf16(device, flags)[1]}"
    if memory_format == "auto":
        memory_format, memory_format_reason = _auto_memory_format(device, amp)
    else:
        memory_format_reason = f"--memory-format {memory_format}"
    return Policy(amp, memory_format, amp_reason, memory_format_reason)
