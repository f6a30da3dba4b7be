"""Host-memory allocator policy: keep freed memory for reuse instead of faulting it back in.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults, a block above a dynamic
threshold (128 KiB up to 32 MiB) is a fresh ``mmap`` and goes back to the kernel when freed, and
free memory at the top of the heap is trimmed away. A training step or an inference batch
allocates and frees tens of MiB of activations each time, so every one of their pages is faulted
in (and zeroed by the kernel) again on every step: 6 million minor faults in the default
``python -m reid.train`` run. ``--malloc auto`` (the default, on Linux with glibc) turns both
off with ``mallopt``: freed blocks stay in the process and the next step reuses them.

Measured on the 2-core AMD EPYC (``bench/bench_model.py``, README "Speed"): AP3D-ResNet-18
inference 448 -> 648 frames/s at 8 clips of 32 frames; the training step 703 -> 685 ms. The cost
is a resident set that stays at its peak instead of shrinking between steps.
``--malloc system`` leaves glibc's defaults; other C libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from typing import Optional

__all__ = ["MALLOC_CHOICES", "TRIM_THRESHOLD", "configure_allocator"]

MALLOC_CHOICES = ("auto", "system")
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# free memory at the heap's top is returned to the kernel only beyond this (mallopt takes an int)
TRIM_THRESHOLD = 1 << 30
# glibc's documented defaults, restored by "system" after "auto" in the same process
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_tuned = False


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """The running glibc, or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def configure_allocator(choice: str = "auto") -> str:
    """Apply ``--malloc`` to this process (and the data-loader workers it forks later); returns
    one line for the run header. Idempotent; raises ValueError naming the option for a bad value."""
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"malloc: got {choice!r}, expected one of {', '.join(MALLOC_CHOICES)}")
    global _tuned
    libc = _glibc()
    if choice == "system":
        if _tuned and libc is not None:  # undo an earlier "auto" of this process
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            _tuned = False
        return "malloc system (--malloc system: the C library's defaults)"
    if libc is None:
        return f"malloc system (auto: {platform.system()} without glibc, nothing to tune)"
    if libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "malloc system (auto: glibc refused mallopt)"
    _tuned = True
    return "malloc reuse (auto: glibc keeps freed blocks instead of unmapping and re-faulting them every step)"
