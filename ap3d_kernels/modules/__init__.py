"""``nn.Module`` layer of ``ap3d_kernels``: APM, the temporal residual-block convolutions, the
non-local block, and the other temporal baselines of the AP3D paper's Table 2 (CA-NL,
deformable 3D conv). Generic video modules: nothing here knows about re-identification."""
from .apm import APM
from .blocks import API3D, APP3DA, APP3DB, APP3DC, C2D, I3D, P3DA, P3DB, P3DC, TEMPORAL_BLOCKS, TemporalBlock
from .contrastive_nonlocal import ContrastiveNonLocalBlock3D
from .deformable import Deform3D, deformable_warp
from .frame_conv import FrameConv3d, FrameGroupConv3d, is_frame_conv, is_frame_group_conv
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
    "ContrastiveNonLocalBlock3D",
    "Deform3D",
    "deformable_warp",
    "FrameConv3d",
    "FrameGroupConv3d",
    "is_frame_conv",
    "is_frame_group_conv",
]
