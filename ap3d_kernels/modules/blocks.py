"""Temporal replacements for the spatial ``k x k`` convolution of a residual block.

Each block maps ``[B, C_in, T, H, W]`` to ``[B, C_out, T, H', W']`` (the frame count is kept)
and is a drop-in replacement for a 2D convolution applied frame by frame. Every block is
initialised so that it computes exactly that 2D convolution (the authors' release): the 2D
kernel sits in the centre temporal tap (I3D, AP-I3D) or in a ``1 x k x k`` spatial conv (P3D),
P3D-A's temporal conv is the identity and P3D-B/C's is zero. A network inflated from 2D
weights therefore starts as its 2D (C2D) counterpart and learns temporal modelling from there.

Build a block around existing 2D weights with ``Block.from_2d(conv)`` (the 2D kernel goes
straight into its 3D place), or re-initialise one from a 2D kernel with
``block.load_2d(weight, bias)``. Parameter names follow the release (``conv3d``;
``spatial_conv3d``/``temporal_conv3d``; ``APM``) so its checkpoints load.
"""
from __future__ import annotations

import abc
import math
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..validation import check_positive_int, check_time_dim, check_video_input, describe
from .apm import APM
from .frame_conv import FrameConv3d, FrameGroupConv3d

__all__ = [
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
]


def _spatial_pair(name: str, value) -> tuple[int, int]:
    pair = _pair(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


class TemporalBlock(nn.Module, abc.ABC):
    """Base class: a 3D replacement of a 2D ``Conv2d(in, out, kernel_size, stride, padding)``.

    The base validates and stores the geometry. A subclass then creates its layers in its own
    ``__init__`` and finishes with ``self.reset_parameters()`` (as ``torch.nn`` layers do); it
    names the conv holding the 2D kernel (``spatial_conv``) and may initialise its other
    weights in ``_reset_temporal()`` (the release's initialisation; APM keeps PyTorch's default).
    """

    uses_apm = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, *, time_dim: int = 3):
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = _spatial_pair("kernel_size", kernel_size)
        self.stride = _spatial_pair("stride", stride)
        self.padding = tuple(k // 2 for k in self.kernel_size) if padding is None else _spatial_pair("padding", padding)
        for name, pair, low in (("kernel_size", self.kernel_size, 1), ("stride", self.stride, 1), ("padding", self.padding, 0)):
            if min(pair) < low:
                raise ValueError(f"{type(self).__name__}: {name} must be >= {low}, got {pair}")
        self.time_dim = check_time_dim(time_dim)

    # -- construction ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def spatial_conv(self) -> nn.Conv3d:
        """The conv that holds the 2D kernel."""

    def _spatial_conv3d(self, bias: bool, time_dim: int = 1, time_stride: int = 1, time_padding: int = 0) -> nn.Conv3d:
        frame_wise = (time_dim, time_stride, time_padding) == (1, 1, 0)  # a 2D conv per frame: run as one conv2d
        return (FrameConv3d if frame_wise else nn.Conv3d)(
            self.in_channels,
            self.out_channels,
            kernel_size=(time_dim, *self.kernel_size),
            stride=(time_stride, *self.stride),
            padding=(time_padding, *self.padding),
            bias=bias,
        )

    @classmethod
    def from_2d(cls, conv: nn.Module, *, stride=None, **kwargs) -> "TemporalBlock":
        """Build the block around the weights of ``conv``: an ``nn.Conv2d``, or an ``nn.Conv3d``
        of temporal kernel, stride and padding ``(1, 1, 0)`` (a 2D conv already inflated).
        ``stride`` overrides the conv's spatial stride (e.g. a ResNet's last stride)."""
        if isinstance(conv, nn.Conv3d):
            if conv.kernel_size[0] != 1 or conv.stride[0] != 1 or conv.padding[0] != 0:
                raise ValueError(
                    f"{cls.__name__}.from_2d: a Conv3d must be an inflated 2D conv (temporal kernel 1, stride 1, "
                    f"padding 0), got kernel_size={conv.kernel_size}, stride={conv.stride}, padding={conv.padding}"
                )
            weight = conv.weight[:, :, 0]
            kernel, conv_stride, padding, dilation = conv.kernel_size[1:], conv.stride[1:], conv.padding[1:], conv.dilation
        elif isinstance(conv, nn.Conv2d):
            weight = conv.weight
            kernel, conv_stride, padding, dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        else:
            raise TypeError(f"{cls.__name__}.from_2d: conv must be an nn.Conv2d or nn.Conv3d, got {type(conv).__name__}")
        if isinstance(padding, str) or conv.groups != 1 or any(d != 1 for d in dilation) or conv.padding_mode != "zeros":
            raise ValueError(
                f"{cls.__name__}.from_2d: only dense convs with numeric zero padding are supported, got groups={conv.groups}, "
                f"dilation={dilation}, padding={padding!r}, padding_mode={conv.padding_mode!r}"
            )
        block = cls(
            conv.in_channels,
            conv.out_channels,
            kernel_size=tuple(kernel),
            stride=tuple(conv_stride) if stride is None else stride,
            padding=tuple(padding),
            bias=conv.bias is not None,
            **kwargs,
        )
        block.to(device=conv.weight.device, dtype=conv.weight.dtype)
        block.load_2d(weight, conv.bias)
        return block

    # -- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh 2D kernel with ``nn.Conv2d``'s default init, then the release's temporal init."""
        weight = torch.empty(self.out_channels, self.in_channels, *self.kernel_size)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bias = None
        if self.spatial_conv.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            bias = torch.empty(self.out_channels).uniform_(-bound, bound)
        self.load_2d(weight, bias)
        for m in self.modules():
            if isinstance(m, APM):
                m.reset_parameters()

    @torch.no_grad()
    def load_2d(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
        """Initialise from a 2D kernel ``[C_out, C_in, kh, kw]`` (and bias) so the block computes
        that 2D conv on every frame; temporal weights are reset, APM weights are left alone."""
        expected = (self.out_channels, self.in_channels, *self.kernel_size)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != expected:
            got = describe(weight) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"{type(self).__name__}.load_2d: weight must have shape {list(expected)}, got {got}")
        conv = self.spatial_conv
        if (bias is None) != (conv.bias is None):
            raise ValueError(
                f"{type(self).__name__}.load_2d: bias must be {'a tensor' if conv.bias is not None else 'None'} "
                f"(the block was built with bias={conv.bias is not None}), got {'None' if bias is None else describe(bias)}"
            )
        if bias is not None and tuple(bias.shape) != (self.out_channels,):
            raise ValueError(f"{type(self).__name__}.load_2d: bias must have shape [{self.out_channels}], got {describe(bias)}")
        conv.weight.zero_()
        centre = conv.kernel_size[0] // 2
        conv.weight[:, :, centre].copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        self._reset_temporal()

    def _reset_temporal(self) -> None:
        """Nothing beyond the spatial kernel by default (C2D, I3D, AP-I3D)."""

    # -- forward --------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        check_video_input(type(self).__name__, x, channels=self.in_channels, device=self.spatial_conv.weight.device)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, time_dim={self.time_dim}"
        )


# ---------------------------------------------------------------------------------------------
class _SingleConv3d(TemporalBlock):
    """One ``conv3d`` of temporal kernel 1 (C2D) or ``time_dim`` with "same" padding (I3D)."""

    temporal_kernel = False

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=False, *, time_dim=3):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, time_dim=time_dim)
        n = self.time_dim if self.temporal_kernel else 1
        self.conv3d = self._spatial_conv3d(bias, time_dim=n, time_padding=n // 2)
        self.reset_parameters()

    @property
    def spatial_conv(self):
        return self.conv3d

    def forward(self, x):
        self._check(x)
        return self.conv3d(x)


class C2D(_SingleConv3d):
    """``1 x k x k`` conv: the 2D conv applied to each frame (no temporal modelling)."""


class I3D(_SingleConv3d):
    """``N x k x k`` conv with temporal padding ``N // 2``, 2D kernel in the centre tap."""

    temporal_kernel = True


class API3D(TemporalBlock):
    """AP-I3D: ``APM(C_in)`` then an ``N x k x k`` conv of temporal stride ``N`` (no temporal
    padding), 2D kernel in the centre tap."""

    uses_apm = True

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=False, *,
                 time_dim=3, apm_reduction=16, scale=4.0, contrastive=True, detach_gate_inputs=True, backend="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, time_dim=time_dim)
        self.APM = APM(self.in_channels, apm_reduction, scale=scale, time_dim=self.time_dim, contrastive=contrastive,
                       detach_gate_inputs=detach_gate_inputs, backend=backend)
        self.conv3d = self._spatial_conv3d(bias, time_dim=self.time_dim, time_stride=self.time_dim)
        self.reset_parameters()

    @property
    def spatial_conv(self):
        return self.conv3d

    def forward(self, x):
        self._check(x)
        return self.conv3d(self.APM(x))


class _P3DLayout(TemporalBlock):
    """Spatial ``1 x k x k`` conv ``s`` and a temporal ``N x 1 x 1`` conv ``t`` (no bias), arranged
    as ``t(s(x))`` (A, centre tap = identity), ``s(x) + t(x)`` (B, zero) or ``s(x) + t(s(x))``
    (C, zero). The AP variants put ``APM`` before ``t``, which then has temporal stride ``N``."""

    arrangement = "C"

    def _add_convs(self, bias: bool) -> None:
        parallel = self.arrangement == "B"  # t sees the input, so it carries the spatial stride
        self.spatial_conv3d = self._spatial_conv3d(bias)
        # after APM (stride N, no padding, no spatial stride) each output frame maps its own group of
        # N aligned frames: one conv2d over the groups (FrameGroupConv3d)
        grouped = self.uses_apm and not (parallel and self.stride != (1, 1))
        self.temporal_conv3d = (FrameGroupConv3d if grouped else nn.Conv3d)(
            self.in_channels if parallel else self.out_channels,
            self.out_channels,
            kernel_size=(self.time_dim, 1, 1),
            stride=(self.time_dim if self.uses_apm else 1, *(self.stride if parallel else (1, 1))),
            padding=(0 if self.uses_apm else self.time_dim // 2, 0, 0),
            bias=False,
        )

    def _check_parallel_geometry(self):
        # The parallel temporal branch (kernel 1 x 1, spatial stride s) has the spatial conv's
        # output size for every input size only with "same" padding.
        if self.arrangement == "B" and any(k % 2 == 0 or p != k // 2 for k, p in zip(self.kernel_size, self.padding)):
            raise ValueError(
                f"{type(self).__name__}: the parallel temporal branch needs an odd kernel_size with padding = "
                f"kernel_size // 2, got kernel_size={self.kernel_size}, padding={self.padding}"
            )

    @property
    def spatial_conv(self):
        return self.spatial_conv3d

    def _reset_temporal(self):
        if self.arrangement == "A":  # centre tap = identity matrix: t passes the centre frame through
            conv = self.temporal_conv3d
            conv.weight.zero_()
            eye = torch.eye(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)
            conv.weight[:, :, conv.kernel_size[0] // 2, 0, 0].copy_(eye)
        else:
            self.temporal_conv3d.weight.zero_()

    def _temporal(self, x):
        return self.temporal_conv3d(self.APM(x) if self.uses_apm else x)

    def forward(self, x):
        self._check(x)
        out = self.spatial_conv3d(x)
        if self.arrangement == "A":
            return self._temporal(out)
        return out + self._temporal(x if self.arrangement == "B" else out)


class _P3D(_P3DLayout):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=False, *, time_dim=3):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, time_dim=time_dim)
        self._check_parallel_geometry()
        self._add_convs(bias)
        self.reset_parameters()


class _APP3D(_P3DLayout):
    uses_apm = True

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=False, *,
                 time_dim=3, apm_reduction=16, scale=4.0, contrastive=True, detach_gate_inputs=True, backend="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, time_dim=time_dim)
        self._check_parallel_geometry()
        # APM works on what the temporal conv sees: the input (B) or the spatial conv's output
        channels = self.in_channels if self.arrangement == "B" else self.out_channels
        self.APM = APM(channels, apm_reduction, scale=scale, time_dim=self.time_dim, contrastive=contrastive,
                       detach_gate_inputs=detach_gate_inputs, backend=backend)
        self._add_convs(bias)
        self.reset_parameters()


class P3DA(_P3D):
    """P3D-A: spatial conv, then temporal conv (centre tap = identity)."""

    arrangement = "A"


class P3DB(_P3D):
    """P3D-B: spatial conv plus a parallel temporal conv on the input (zero-initialised)."""

    arrangement = "B"


class P3DC(_P3D):
    """P3D-C: spatial conv ``s``, then ``s + temporal(s)`` (temporal conv zero-initialised)."""

    arrangement = "C"


class APP3DA(_APP3D):
    """AP-P3D-A: spatial conv, ``APM(C_out)``, temporal conv of stride ``N`` (identity centre)."""

    arrangement = "A"


class APP3DB(_APP3D):
    """AP-P3D-B: spatial conv plus a parallel ``APM(C_in)`` + temporal conv of stride ``N`` on the
    input (temporal conv zero-initialised)."""

    arrangement = "B"


class APP3DC(_APP3D):
    """AP-P3D-C ("AP3D"): spatial conv ``s``, then ``s + temporal(APM(s))`` with a temporal conv of
    stride ``N`` (zero-initialised)."""

    arrangement = "C"


TEMPORAL_BLOCKS: dict[str, type[TemporalBlock]] = {
    "c2d": C2D,
    "i3d": I3D,
    "ap_i3d": API3D,
    "p3d_a": P3DA,
    "p3d_b": P3DB,
    "p3d_c": P3DC,
    "ap_p3d_a": APP3DA,
    "ap_p3d_b": APP3DB,
    "ap_p3d_c": APP3DC,
}
