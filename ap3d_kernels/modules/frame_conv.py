"""Conv3d layers that never mix frames across groups, run as one ``conv2d`` on channels-last clips.

``FrameConv3d``: a ``1 x k x k`` Conv3d, i.e. a 2D convolution applied to every frame.
``FrameGroupConv3d``: an ``N x 1 x 1`` Conv3d of temporal stride ``N``, i.e. every output frame a
linear map of its own group of ``N`` input frames (the temporal conv after APM, which lays each
frame's aligned neighbours side by side).

Most convolutions of a video network inflated from 2D (C2D, and the spatial convs of P3D and
AP3D) have temporal kernel 1, stride 1 and padding 0: they treat each frame alone. On a
``channels_last_3d`` clip ``[N, C, T, H, W]`` (memory order N, T, H, W, C) the N*T frames already
lie one after another as channels-last images, so the same convolution is one ``conv2d`` over a
free view ``[N*T, C, H, W]``. oneDNN's 2D kernels are better tuned than its 3D ones: on the 2-core
AMD EPYC in bf16, forward + backward, 5-10 % faster for the 3x3 convs of ResNet-18's stages and
30 % for the strided 1x1 (README "Speed"); the AP3D-ResNet-18 training step 693 -> 643 ms. A group of
``N`` frames is likewise a ``[C, N, H*W]`` channels-last image for a ``conv2d`` of kernel ``(N, 1)`` and
stride ``(N, 1)``: 10-20 % faster forward + backward than the 3D conv at AP3D's stage shapes in bf16.

Everything else (other layouts, padding modes) takes ``nn.Conv3d``'s own path. Parameters, state
dict and results are ``nn.Conv3d``'s: a drop-in subclass.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrameConv3d", "FrameGroupConv3d", "is_frame_conv", "is_frame_group_conv"]


def is_frame_conv(conv: nn.Conv3d) -> bool:
    """Whether ``conv`` treats each frame alone: temporal kernel 1, stride 1, padding 0 (a string
    padding, "valid" or "same", pads a kernel of 1 by 0)."""
    if conv.kernel_size[0] != 1 or conv.stride[0] != 1:
        return False
    return isinstance(conv.padding, str) or conv.padding[0] == 0


class _CheckedConv3d(nn.Conv3d):
    """``nn.Conv3d`` that refuses a geometry its subclass's 2D path does not compute
    (``accepts``, described by ``needs``). The signature is spelt out because
    ``nn.utils.skip_init`` looks for ``device`` in it."""

    accepts: Callable[[nn.Conv3d], bool]  # set by each subclass
    needs: str

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        if not self.accepts(self):
            raise ValueError(
                f"{type(self).__name__}: needs {self.needs}, got kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
            )


class FrameConv3d(_CheckedConv3d):
    """``nn.Conv3d`` of temporal kernel 1, stride 1 and padding 0, computed frame-wise as one
    ``conv2d`` on ``channels_last_3d`` input (see the module docstring)."""

    accepts = staticmethod(is_frame_conv)
    needs = "temporal kernel 1, stride 1 and padding 0"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or x.dim() != 5 or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        n, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)  # a view: channels-last images
        padding = self.padding if isinstance(self.padding, str) else self.padding[1:]
        y = F.conv2d(frames, self.weight.squeeze(2), self.bias, self.stride[1:], padding, self.dilation[1:], self.groups)
        return y.reshape(n, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)  # back to [N, C', T, H', W'], channels_last_3d


def is_frame_group_conv(conv: nn.Conv3d) -> bool:
    """Whether ``conv`` maps disjoint groups of frames pointwise: kernel ``(N, 1, 1)``, stride
    ``(N, 1, 1)``, no padding, no dilation, one group."""
    n = conv.kernel_size[0]
    return (conv.kernel_size[1:] == (1, 1) and conv.stride == (n, 1, 1) and not isinstance(conv.padding, str)
            and conv.padding == (0, 0, 0) and conv.dilation == (1, 1, 1) and conv.groups == 1)


class FrameGroupConv3d(_CheckedConv3d):
    """``nn.Conv3d`` of kernel ``(N, 1, 1)`` and stride ``(N, 1, 1)``, computed as one ``conv2d``
    of kernel ``(N, 1)`` on channels-last input whose frame count is a multiple of ``N`` (see the
    module docstring); every other input takes ``nn.Conv3d``'s path."""

    accepts = staticmethod(is_frame_group_conv)
    needs = "kernel (N, 1, 1), stride (N, 1, 1), no padding, dilation or groups"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.kernel_size[0]
        if x.dim() != 5 or x.shape[2] % n or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        b, c, frames, h, w = x.shape
        t = frames // n
        # memory order (b, t, group member, h, w, c): each group a channels-last [c, n, h*w] image
        groups = x.permute(0, 2, 3, 4, 1).reshape(b * t, n, h * w, c).permute(0, 3, 1, 2)
        y = F.conv2d(groups, self.weight.squeeze(-1), self.bias, (n, 1))  # [b*t, c', 1, h*w]
        return y.permute(0, 2, 3, 1).reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)
