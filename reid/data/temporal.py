"""Which frames of a tracklet form a clip (protocol.md, "Training" and "Testing")."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["temporal_random_crop", "evenly_spaced", "clip_ranges", "TEMPORAL_SAMPLERS"]


def _check(n: int, size: int) -> None:
    if n < 1:
        raise ValueError(f"a tracklet needs at least one frame to sample from, got {n} frames")
    if size < 1:
        raise ValueError(f"clip size must be >= 1 frame, got {size}")


def temporal_random_crop(n: int, size: int, stride: int, rng: np.random.Generator) -> list[int]:
    """`size` frame indices for training, as AP3D's TemporalRandomCrop.

    n >= size*stride: a random start, then every `stride`-th frame; otherwise `size` distinct
    random frames in temporal order if n >= size; otherwise `size` random frames with
    replacement, sorted (short tracklets repeat frames rather than being dropped).
    """
    _check(n, size)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if n >= size * stride:
        begin = int(rng.integers(0, n - (size - 1) * stride))  # inclusive end n-(size-1)*stride-1
        return list(range(begin, begin + (size - 1) * stride + 1, stride))
    idx = rng.choice(n, size=size, replace=n < size)
    return sorted(int(i) for i in idx)


def evenly_spaced(n: int, size: int) -> list[int]:
    """`size` indices spread evenly over the whole tracklet (first and last frame included)."""
    _check(n, size)
    if size == 1:
        return [n // 2]
    return [int(round(i * (n - 1) / (size - 1))) for i in range(size)]


def clip_ranges(n: int, clip_len: int = 32) -> list[tuple[int, int]]:
    """Cover every frame exactly once with ceil(n / clip_len) consecutive clips of <= clip_len
    frames: full clips, then the remainder (the AP3D release's torch.split)."""
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    _check(n, 1)
    return [(s, min(s + clip_len, n)) for s in range(0, n, clip_len)][: math.ceil(n / clip_len)]


TEMPORAL_SAMPLERS = ("random", "evenly")
