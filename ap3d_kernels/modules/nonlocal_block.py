"""Embedded-Gaussian non-local block (Wang et al., CVPR 2018), as used by the AP3D release."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_bool, check_positive_int, check_video_input

__all__ = ["NonLocalBlock3D"]


class NonLocalBlock3D(nn.Module):
    """``z = x + BN(W(softmax(theta(x) phi(x)^T) g(x)))`` over all ``T x H x W`` positions.

    ``theta``, ``phi``, ``g``: ``1x1x1`` convs ``C -> inter_channels`` (``C // 2`` by default) with
    bias; with ``sub_sample`` the key/value branches (``phi``, ``g``) are max-pooled ``1x2x2``.
    ``W``: ``1x1x1`` conv back to ``C`` (with bias) followed by a BatchNorm whose weight and bias
    start at zero, so the block is the identity at initialisation. Attention logits are not
    scaled (as in the paper and the release). Module names follow the release (``g.0``,
    ``theta``, ``phi.0``, ``W.0``, ``W.1``) so its checkpoints load.

    Attention runs through ``F.scaled_dot_product_attention``, which on recent PyTorch avoids
    materialising the ``THW x THW/4`` matrix (long test clips) and reports its FLOPs to
    ``torch.utils.flop_counter``.
    """

    def __init__(self, in_channels: int, inter_channels: Optional[int] = None, sub_sample: bool = True):
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        if inter_channels is None:
            inter_channels = max(self.in_channels // 2, 1)
        self.inter_channels = check_positive_int("inter_channels", inter_channels)
        self.sub_sample = check_bool("sub_sample", sub_sample)

        c, ci = self.in_channels, self.inter_channels
        self.g = nn.Conv3d(c, ci, kernel_size=1, bias=True)
        self.theta = nn.Conv3d(c, ci, kernel_size=1, bias=True)
        self.phi = nn.Conv3d(c, ci, kernel_size=1, bias=True)
        if self.sub_sample:
            self.g = nn.Sequential(self.g, nn.MaxPool3d(kernel_size=(1, 2, 2)))
            self.phi = nn.Sequential(self.phi, nn.MaxPool3d(kernel_size=(1, 2, 2)))
        self.W = nn.Sequential(nn.Conv3d(ci, c, kernel_size=1, bias=True), nn.BatchNorm3d(c))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The release's init: convs ``N(0, sqrt(2 / fan_out))``, zero biases, ``W``'s BN zeroed."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.out_channels))  # fan_out of a 1x1x1 conv
                if m.bias is not None:
                    m.bias.zero_()
        bn = self.W[1]
        bn.reset_running_stats()
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(x), y)``, both ``[B, inter_channels, T, H, W]``: the values at every position (before
        the key/value pooling) and their attention-weighted sum ``y_i = sum_j P_ij g(x_j)``."""
        check_video_input(type(self).__name__, x, channels=self.in_channels, device=self.theta.weight.device)
        B, _, T, H, W = x.shape
        if self.sub_sample and (H < 2 or W < 2):
            raise ValueError(
                f"{type(self).__name__}: sub_sample pools keys/values 1x2x2, so x needs H >= 2 and W >= 2, "
                f"got shape {tuple(x.shape)}"
            )
        g_conv, pool = (self.g[0], self.g[1]) if self.sub_sample else (self.g, None)
        values = g_conv(x)
        value = values if pool is None else pool(values)
        query = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, THW, Ci]
        key = self.phi(x).flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, THW', Ci]
        value = value.flatten(2).transpose(1, 2).unsqueeze(1)
        y = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # unscaled, as the release
        return values, y.squeeze(1).transpose(1, 2).reshape(B, self.inter_channels, T, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.W(self.reconstruct(x)[1])

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, sub_sample={self.sub_sample}"
