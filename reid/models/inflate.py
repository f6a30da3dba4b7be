"""Inflate a 2D ResNet to 3D with temporal kernel 1 (the C2D network).

Every 2D layer becomes its 3D counterpart acting on ``[B, C, T, H, W]`` frame by frame, with
the same weights and the same parameter names, so the inflated network applied to a clip equals
the 2D network applied to each frame. ``ResNet3D(..., conv2=...)`` builds chosen blocks' conv2
from the 2D conv directly (``reid.models.video_resnet`` puts its temporal blocks there), so
every weight is copied from 2D to 3D exactly once.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ap3d_kernels.modules import FrameConv3d

from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "inflate_conv",
    "inflate_batch_norm",
    "inflate_max_pool",
    "BasicBlock3D",
    "Bottleneck3D",
    "inflate_block",
    "ResNet3D",
    "check_resnet",
    "set_last_stride",
    "inflate_resnet",
]


# conv2(stage, block index, the 2D conv, its spatial stride) -> the block's 3D conv2, or None
# to inflate the 2D conv
Conv2Factory = Callable[[int, int, nn.Conv2d, tuple], Optional[nn.Module]]


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


@torch.no_grad()
def inflate_conv(conv2d: nn.Conv2d, *, stride=None) -> nn.Conv3d:
    """``Conv2d(k x k)`` -> ``Conv3d(1 x k x k)`` with the same weights (``stride``: another
    spatial stride)."""
    if not isinstance(conv2d, nn.Conv2d):
        raise TypeError(f"inflate_conv: expected an nn.Conv2d, got {type(conv2d).__name__}")
    if isinstance(conv2d.padding, str):
        raise ValueError(f"inflate_conv: string padding {conv2d.padding!r} is not supported; use explicit ints")
    # skip_init: the weights are overwritten below, so don't pay for a random initialisation
    conv3d = nn.utils.skip_init(
        FrameConv3d,  # an nn.Conv3d that runs as one conv2d over the frames of a channels-last clip
        conv2d.in_channels,
        conv2d.out_channels,
        kernel_size=(1, *conv2d.kernel_size),
        stride=(1, *(conv2d.stride if stride is None else _pair(stride))),
        padding=(0, *conv2d.padding),
        dilation=(1, *conv2d.dilation),
        groups=conv2d.groups,
        bias=conv2d.bias is not None,
        padding_mode=conv2d.padding_mode,
        device=conv2d.weight.device,
        dtype=conv2d.weight.dtype,
    )
    conv3d.weight.copy_(conv2d.weight.unsqueeze(2))
    if conv2d.bias is not None:
        conv3d.bias.copy_(conv2d.bias)
    return conv3d


def inflate_batch_norm(bn2d: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """``BatchNorm2d`` -> ``BatchNorm3d`` with the same affine parameters and running statistics."""
    if not isinstance(bn2d, nn.BatchNorm2d):
        raise TypeError(f"inflate_batch_norm: expected an nn.BatchNorm2d, got {type(bn2d).__name__}")
    bn3d = nn.BatchNorm3d(
        bn2d.num_features,
        eps=bn2d.eps,
        momentum=bn2d.momentum,
        affine=bn2d.affine,
        track_running_stats=bn2d.track_running_stats,
        device=bn2d.weight.device if bn2d.affine else None,
    )
    bn3d.load_state_dict(bn2d.state_dict())
    return bn3d.to(dtype=bn2d.weight.dtype) if bn2d.affine else bn3d


def inflate_max_pool(pool2d: nn.MaxPool2d) -> nn.MaxPool3d:
    """``MaxPool2d(k, s, p)`` -> ``MaxPool3d((1, k, k), (1, s, s), (0, p, p))``."""
    if not isinstance(pool2d, nn.MaxPool2d):
        raise TypeError(f"inflate_max_pool: expected an nn.MaxPool2d, got {type(pool2d).__name__}")
    return nn.MaxPool3d(
        kernel_size=(1, *_pair(pool2d.kernel_size)),
        stride=(1, *_pair(pool2d.stride)),
        padding=(0, *_pair(pool2d.padding)),
        dilation=(1, *_pair(pool2d.dilation)),
        ceil_mode=pool2d.ceil_mode,
    )


def _inflate_downsample(downsample, stride=None):
    if downsample is None:
        return None
    conv, bn = downsample
    return nn.Sequential(inflate_conv(conv, stride=stride), inflate_batch_norm(bn))


def _conv2(block2d, stride, make) -> nn.Module:
    """The 3D conv2: ``make(conv2d, stride)`` if it gives one, else the inflated 2D conv."""
    stride = block2d.conv2.stride if stride is None else _pair(stride)
    built = make(block2d.conv2, tuple(stride)) if make is not None else None
    return inflate_conv(block2d.conv2, stride=stride) if built is None else built


class BasicBlock3D(nn.Module):
    """Inflated ``BasicBlock``; ``conv2`` may be a temporal block. ``stride`` replaces the
    block's spatial stride (conv1's and the downsample's)."""

    def __init__(self, block2d: BasicBlock, *, stride=None, conv2=None):
        super().__init__()
        self.conv1 = inflate_conv(block2d.conv1, stride=stride)
        self.bn1 = inflate_batch_norm(block2d.bn1)
        self.conv2 = _conv2(block2d, None, conv2)
        self.bn2 = inflate_batch_norm(block2d.bn2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _inflate_downsample(block2d.downsample, stride)

    # The residual wiring does not depend on the dimensionality: reuse the 2D block's.
    forward = BasicBlock.forward


class Bottleneck3D(nn.Module):
    """Inflated ``Bottleneck``; ``conv2`` (the 3x3) may be a temporal block. ``stride`` replaces
    the block's spatial stride (conv2's and the downsample's)."""

    def __init__(self, block2d: Bottleneck, *, stride=None, conv2=None):
        super().__init__()
        self.conv1 = inflate_conv(block2d.conv1)
        self.bn1 = inflate_batch_norm(block2d.bn1)
        self.conv2 = _conv2(block2d, stride, conv2)
        self.bn2 = inflate_batch_norm(block2d.bn2)
        self.conv3 = inflate_conv(block2d.conv3)
        self.bn3 = inflate_batch_norm(block2d.bn3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _inflate_downsample(block2d.downsample, stride)

    forward = Bottleneck.forward


def inflate_block(block2d: nn.Module, *, stride=None, conv2=None) -> nn.Module:
    """``conv2(conv2d, spatial_stride)``: an optional factory of the block's 3D conv2."""
    if isinstance(block2d, Bottleneck):
        return Bottleneck3D(block2d, stride=stride, conv2=conv2)
    if isinstance(block2d, BasicBlock):
        return BasicBlock3D(block2d, stride=stride, conv2=conv2)
    raise TypeError(f"inflate_block: expected a BasicBlock or Bottleneck, got {type(block2d).__name__}")


def check_resnet(resnet2d) -> ResNet:
    if not isinstance(resnet2d, ResNet):
        raise TypeError(f"expected a reid.models.resnet.ResNet, got {type(resnet2d).__name__}")
    return resnet2d


class ResNet3D(nn.Module):
    """The inflated trunk: ``[B, 3, T, H, W]`` -> layer4's map ``[B, feature_dim, T, h, w]``.

    ``last_stride``: layer4's spatial stride (None: the 2D network's). ``conv2``: a
    :data:`Conv2Factory` giving the 3D conv2 of chosen blocks (stages 1..4 = layer1..layer4)."""

    def __init__(self, resnet2d: ResNet, *, last_stride: Optional[int] = None, conv2: Optional[Conv2Factory] = None):
        super().__init__()
        check_resnet(resnet2d)
        if last_stride is not None and last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.conv1 = inflate_conv(resnet2d.conv1)
        self.bn1 = inflate_batch_norm(resnet2d.bn1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = inflate_max_pool(resnet2d.maxpool)
        for stage in (1, 2, 3, 4):
            blocks = []
            for i, block2d in enumerate(getattr(resnet2d, f"layer{stage}")):
                stride = last_stride if (stage, i) == (4, 0) else None
                make = None if conv2 is None else (lambda conv, s, stage=stage, i=i: conv2(stage, i, conv, s))
                blocks.append(inflate_block(block2d, stride=stride, conv2=make))
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.feature_dim = resnet2d.feature_dim

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def set_last_stride(model: nn.Module, last_stride: int) -> nn.Module:
    """Set the spatial stride of layer4's first block (its strided conv and its downsample) of a
    2D ``ResNet`` or an inflated ``ResNet3D``, in place."""
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    first = model.layer4[0]
    strided = first.conv2 if isinstance(first, (Bottleneck, Bottleneck3D)) else first.conv1
    convs = [strided] + ([first.downsample[0]] if first.downsample is not None else [])
    for conv in convs:
        if not isinstance(conv, (nn.Conv2d, nn.Conv3d)):
            raise TypeError(f"set_last_stride: layer4[0] holds a {type(conv).__name__}; set the stride before replacing it")
        conv.stride = (last_stride, last_stride) if isinstance(conv, nn.Conv2d) else (1, last_stride, last_stride)
    return model


def inflate_resnet(resnet2d: ResNet, *, last_stride: int = 1) -> ResNet3D:
    """The C2D network: ``resnet2d`` inflated to 3D with temporal kernel 1 (``resnet2d`` itself is
    not modified; ``fc`` is dropped) and layer4's stride set to ``last_stride`` (1 for ReID)."""
    return ResNet3D(resnet2d, last_stride=last_stride)
