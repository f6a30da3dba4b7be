"""``Deform3D``: a deformable 3D convolution (the "Deformable 3D Conv" baseline of the AP3D
paper's Table 2, after Dai et al., ICCV 2017), in pure PyTorch.

Where AP-I3D registers each neighbour frame to its centre frame with APM before a ``N x k x k``
conv of temporal stride ``N``, this block registers it with a learned displacement field:

1. a ``N x k x k`` conv on the input predicts, at every position of every frame ``t``, a 2D
   offset ``(dx, dy)`` (in pixels of the input map) for each of the ``N - 1`` neighbours
   ``t + d``, ``d`` in ``-N//2 .. N//2``, ``d != 0``;
2. each neighbour is sampled bilinearly at ``p + offset(p)`` (``F.grid_sample``; outside the map
   and outside the clip it reads zeros, as I3D's zero padding does);
3. the frames ``[warped(t - N//2) .. x_t .. warped(t + N//2)]`` are interleaved exactly as APM
   interleaves its output, and the ``N x k x k`` conv of temporal stride ``N`` follows.

The offset conv is zero-initialised (weight and bias), so at initialisation every neighbour is
read in place and the block is I3D; the main conv holds the 2D kernel in its centre tap, so it
also computes the 2D conv on every frame. The offsets start to learn once the non-centre taps
have moved away from zero (their gradient flows through those taps), as APM's weights do.

On CUDA, ``grid_sample``'s backward accumulates with atomics, so its gradients are not bitwise
reproducible from run to run (on CPU they are).

Parameters: I3D's plus the offset conv, ``C_in * N * k * k * 2 (N - 1) + 2 (N - 1)``. On
ResNet-50 at the paper's five positions this gives 27.75M, Table 2's count (I3D: 27.64M).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import TemporalBlock

__all__ = ["Deform3D", "deformable_warp"]


def deformable_warp(frames: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sample ``frames`` ``[B, C, T, H, W]`` bilinearly at ``p + offsets(p)``.

    ``offsets``: ``[B, 2, T, H, W]``, ``(dx, dy)`` in pixels, i.e. output pixel ``(y, x)`` of frame
    ``t`` reads ``frames[..., t, y + dy, x + dx]`` (bilinear; zeros outside the map). Zero offsets
    read every pixel in place.
    """
    B, C, T, H, W = frames.shape
    dtype = torch.promote_types(frames.dtype, offsets.dtype)
    ys = torch.arange(H, device=offsets.device, dtype=dtype).view(H, 1)
    xs = torch.arange(W, device=offsets.device, dtype=dtype).view(1, W)
    off = offsets.to(dtype).permute(0, 2, 3, 4, 1).reshape(B * T, H, W, 2)
    # pixel centre -> grid_sample's [-1, 1] coordinates (align_corners=False: valid for H or W = 1)
    gx = (2 * (xs + off[..., 0]) + 1) / W - 1
    gy = (2 * (ys + off[..., 1]) + 1) / H - 1
    grid = torch.stack((gx, gy), dim=-1)
    flat = frames.transpose(1, 2).reshape(B * T, C, H, W)
    out = F.grid_sample(flat.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(frames.dtype).view(B, T, C, H, W).transpose(1, 2)


class Deform3D(TemporalBlock):
    """Deformable 3D conv: learned per-neighbour offsets, bilinear sampling of the neighbour
    frames, then an ``N x k x k`` conv of temporal stride ``N`` (module docstring).

    Layers: ``offset_conv3d`` (``C_in -> 2 (N - 1)``, kernel ``N x k x k``, "same" padding, with
    bias, zero-initialised; channel ``2 j`` / ``2 j + 1`` is ``dx`` / ``dy`` of the ``j``-th
    neighbour in temporal order, the centre skipped) and ``conv3d`` (the I3D conv, 2D kernel in
    the centre tap, no temporal padding: the neighbours are padded before sampling).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=False, *, time_dim=3):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, time_dim=time_dim)
        if any(k % 2 == 0 or p != k // 2 for k, p in zip(self.kernel_size, self.padding)):
            raise ValueError(
                f"Deform3D: the offset conv predicts one offset per input position, which needs an odd kernel_size "
                f"with padding = kernel_size // 2, got kernel_size={self.kernel_size}, padding={self.padding}"
            )
        n = self.time_dim
        self.offset_conv3d = nn.Conv3d(
            self.in_channels,
            2 * (n - 1),
            kernel_size=(n, *self.kernel_size),
            padding=(n // 2, *self.padding),
            bias=True,
        )
        self.conv3d = self._spatial_conv3d(bias, time_dim=n, time_stride=n)
        self.reset_parameters()

    @property
    def spatial_conv(self):
        return self.conv3d

    def _reset_temporal(self):
        self.offset_conv3d.weight.zero_()
        self.offset_conv3d.bias.zero_()

    def sample_neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` -> ``[B, C, N*T, H, W]``: for each ``t`` the warped neighbours and the
        untouched centre, in temporal order (the layout ``ap3d_kernels.apm`` produces)."""
        T, r = x.shape[2], self.time_dim // 2
        offsets = self.offset_conv3d(x)  # [B, 2 (N - 1), T, H, W]
        padded = F.pad(x, (0, 0, 0, 0, r, r))  # zero frames beyond the clip, as I3D's padding
        frames, j = [], 0
        for d in range(-r, r + 1):
            if d == 0:
                frames.append(x)
                continue
            frames.append(deformable_warp(padded[:, :, r + d : r + d + T], offsets[:, 2 * j : 2 * j + 2]))
            j += 1
        return torch.stack(frames, dim=3).flatten(2, 3)

    def forward(self, x):
        self._check(x)
        return self.conv3d(self.sample_neighbours(x))
