"""AP3D kernels: the Appearance-Preserving Module as fused CPU (C++) and GPU (Triton) ops.

This package is an op library: it knows nothing of person re-identification.
"""
from .flops import apm_backward_flops, apm_forward_flops
from .functional import apm, available_backends
from .reference import apm_reference
# The CPU backend is imported up front (it only loads its shared library) so that a model compiled
# before any eager call never traces an import. The Triton backend stays lazy (importing triton is
# slow, and TRITON_INTERPRET must be chosen before it); it is cached after its first use.
from . import apm_cpu  # noqa: F401
from . import modules
from .modules import (
    API3D,
    APM,
    APP3DA,
    APP3DB,
    APP3DC,
    C2D,
    I3D,
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
]
