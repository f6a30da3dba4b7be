"""``nn.Module`` layer of ``ap3d_kernels``: APM, the temporal residual-block convolutions and
the non-local block. Generic video modules: nothing here knows about re-identification."""
from .apm import APM
from .blocks import API3D, APP3DA, APP3DB, APP3DC, C2D, I3D, P3DA, P3DB, P3DC, TEMPORAL_BLOCKS, TemporalBlock
from .nonlocal_block import NonLocalBlock3D

__all__ = [
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
    "TEMPORAL_BLOCKS",
    "NonLocalBlock3D",
]
