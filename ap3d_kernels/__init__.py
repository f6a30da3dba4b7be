"""AP3D kernels: the Appearance-Preserving Module as fused CPU (C++) and GPU (Triton) ops.

This package is an op library: it knows nothing of person re-identification.
"""
from .flops import apm_backward_flops, apm_forward_flops
from .functional import apm, available_backends, preload_backends
from .reference import apm_reference
from . import modules
from .modules import (
    API3D,
    APM,
    APP3DA,
    APP3DB,
    APP3DC,
    C2D,
    I3D,
    ContrastiveNonLocalBlock3D,
    Deform3D,
    P3DA,
    P3DB,
    P3DC,
    NonLocalBlock3D,
    TemporalBlock,
)

__version__ = "0.1.0"

__all__ = [
    "apm",
    "apm_reference",
    "available_backends",
    "preload_backends",
    "apm_forward_flops",
    "apm_backward_flops",
    "modules",
    "APM",
    "TemporalBlock",
    "C2D",
    "I3D",
    "API3D",
    "P3DA",
    "P3DB",
    "P3DC",
    "APP3DA",
    "APP3DB",
    "APP3DC",
    "NonLocalBlock3D",
    "ContrastiveNonLocalBlock3D",
    "Deform3D",
]
