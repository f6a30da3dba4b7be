"""The autotuning space of the Triton APM kernels (``kernels.py``), how the environment narrows it,
and whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, on CPU tensors).

Autotuning: on a GPU each kernel times its configs once per (HW, C, Ck, dtypes) and keeps the
fastest. ``AP3D_TRITON_AUTOTUNE=0`` (read at import) keeps only the first config of each list:
one compile per shape instead of six, for test runs and short jobs on a fresh machine;
``AP3D_TRITON_CONFIG=i`` keeps only the i-th (``scripts/gpu_check.sh`` compiles each config in a
process of its own this way, in parallel, so that the autotuner then finds them all in Triton's
on-disk cache).
"""
from __future__ import annotations

import os

import triton

__all__ = ["GPU_CONFIG_CHOICES", "INTERPRETED", "autotune_enabled", "selected_choices", "triton_configs"]


def _interpret_env() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 reads the variable through its knobs
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# Read when kernels.py imports this module, just before its @triton.jit decorators decide between
# compiled and interpreted kernels: what counts afterwards is that decision, not the env var now.
INTERPRETED = _interpret_env()


def autotune_enabled() -> bool:
    """Whether the kernels choose among several configs (``AP3D_TRITON_AUTOTUNE``, default on)."""
    value = os.environ.get("AP3D_TRITON_AUTOTUNE", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on", "no", "yes"):
        raise ValueError(f"AP3D_TRITON_AUTOTUNE must be 0 or 1 (or on/off), got {value!r}")
    return value in ("1", "true", "on", "yes")


def selected_choices(choices: list) -> list:
    """The configs of ``choices`` that the environment leaves to the autotuner: the i-th alone
    with ``AP3D_TRITON_CONFIG=i``, the first alone with ``AP3D_TRITON_AUTOTUNE=0``, else all."""
    pinned = os.environ.get("AP3D_TRITON_CONFIG", "").strip()
    if pinned:
        if not pinned.isdigit() or int(pinned) >= len(choices):
            raise ValueError(f"AP3D_TRITON_CONFIG must be a config index 0..{len(choices) - 1}, got {pinned!r}")
        return choices[int(pinned):int(pinned) + 1]
    return list(choices) if autotune_enabled() else choices[:1]


# Autotuning space on GPU, keyed on (HW, C, Ck) (and the dtypes): (BLOCK_M, BLOCK_N, num_warps,
# num_stages); the value block BLOCK_C is chosen by the launcher (all of C up to 128 per program).
# Chosen from AOT builds for sm_90 (cubin resource usage): in bf16 each list holds configs that
# compile without register spills at BLOCK_C = 128. "bwd_kv" serves the key-block kernel (dk,
# dvphi and the fused dx) and the separate dx kernel, "bwd_q" the query-block kernel.
# Each list starts with the config the autotuner picked most often on an H100 (triton 3.6,
# bench_apm.py's stage-2/3 shapes in fp32 and bf16; bench/results/apm_cuda.md): it is the one
# used when autotuning is off, and a bad first choice is costly there (the previous first
# key-block config made the fp32 stage-2 backward 8x slower than the tuned one).
GPU_CONFIG_CHOICES = {
    "fwd": [(64, 32, 4, 3), (128, 64, 8, 3), (64, 64, 8, 2), (64, 64, 8, 3), (128, 32, 8, 3), (32, 32, 4, 3)],
    "bwd_kv": [(16, 64, 4, 2), (64, 64, 8, 2), (32, 32, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (32, 32, 8, 2)],
    "bwd_q": [(64, 32, 4, 2), (64, 32, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (32, 32, 4, 3), (32, 64, 4, 2)],
}


def triton_configs(block_names: tuple[str, ...], gpu_choices: list[tuple], interpreted: bool) -> list:
    """One fixed config in interpreter mode (multi-config autotune fails there), else a
    small set covering the paper's stage-2/3 shapes (HW 128..512, C 128..1024)."""
    if interpreted:
        return [triton.Config({name: 16 for name in block_names}, num_warps=4, num_stages=1)]
    chosen = selected_choices(gpu_choices)
    return [
        triton.Config(dict(zip(block_names, blocks)), num_warps=warps, num_stages=stages)
        for (*blocks, warps, stages) in chosen
    ]
