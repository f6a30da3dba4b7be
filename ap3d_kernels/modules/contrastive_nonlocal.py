"""``ContrastiveNonLocalBlock3D``: the "CA-NL" baseline of the AP3D paper's Table 2, a non-local
block with APM's contrastive-attention gate embedded.

The paper names the model (Sec. 5.3, "Contrastive Attention embedded Non-local") but not its
layers; the release has no code for it. What is fixed here, and why:

- **Where the gate sits.** A non-local block rebuilds every position as an attention-weighted
  sum of the values ``g(x_j)`` over all ``T x H x W`` positions, ``y_i = sum_j P_ij g(x_j)``:
  the analogue of APM's reconstruction of a neighbour. The gate compares ``y_i`` with the
  position's own value ``c_i = g(x_i)`` (the centre, in the same space), exactly as APM's gate
  compares its reconstruction with the centre feature (paper Eq. 3-4):
  ``z_i = sigmoid(w^T (theta'(c_i) * phi'(y_i))) * y_i``, then ``x + BN(W z)``.
  With ``detach_gate_inputs`` (default, as APM in the release) ``theta'`` and ``phi'`` see
  detached inputs.
- **Its width.** Table 2 gives CA-NL 32.75M parameters against NL's 30.87M on ResNet-50: +1.88M
  over five blocks of C = 512, 512, 1024, 1024, 1024 channels, i.e. about ``C^2 / 2`` per block.
  Two bias-free ``C/2 -> C/2`` maps (``gate_channels`` = the block's ``inter_channels``) give
  exactly ``C^2 / 2 + C / 2`` per block: 32.71M in all. APM's own width, ``C/16``, would give
  31.10M. No layout of 1x1 convs run at every position fits both Table 2's parameters and its
  +0.18 GFLOPs over NL (``C^2 / 2`` parameters at every position cost about 1.3 GMACs), so the
  parameter count, which the task checks, chose the width; ``gate_channels`` changes it.

The gate's layers take APM's release names (``x_mapping`` = theta', ``n_mapping`` = phi',
``contrastive_att_net.0`` = w), bias-free like APM's. ``W``'s BatchNorm starts at zero, so the
block is the identity at initialisation, like the plain non-local block.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..validation import check_bool, check_positive_int
from .nonlocal_block import NonLocalBlock3D

__all__ = ["ContrastiveNonLocalBlock3D"]


class ContrastiveNonLocalBlock3D(NonLocalBlock3D):
    """Non-local block whose reconstruction ``y`` is gated by APM's contrastive attention.

    Args:
        in_channels, inter_channels, sub_sample: as ``NonLocalBlock3D``.
        gate_channels: width of the gate's shared space (default ``inter_channels``, the width
            Table 2's parameter count implies; see the module docstring).
        detach_gate_inputs: theta' and phi' see detached inputs (APM's release default).
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: Optional[int] = None,
        sub_sample: bool = True,
        gate_channels: Optional[int] = None,
        detach_gate_inputs: bool = True,
    ):
        super().__init__(in_channels, inter_channels, sub_sample)
        ci = self.inter_channels
        self.gate_channels = check_positive_int("gate_channels", ci if gate_channels is None else gate_channels)
        self.detach_gate_inputs = check_bool("detach_gate_inputs", detach_gate_inputs)
        ck = self.gate_channels
        self.x_mapping = nn.Conv3d(ci, ck, kernel_size=1, bias=False)
        self.n_mapping = nn.Conv3d(ci, ck, kernel_size=1, bias=False)
        # built after the parent's init ran: PyTorch's default conv init, as APM's gate in the release
        self.contrastive_att_net = nn.Sequential(nn.Conv3d(ck, 1, kernel_size=1, bias=False), nn.Sigmoid())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The non-local block's init (``W``'s BN zeroed), then PyTorch's default conv init for the
        gate, as the release uses for APM's gate."""
        super().reset_parameters()
        if hasattr(self, "contrastive_att_net"):  # not yet built when the parent's __init__ calls this
            for conv in (self.x_mapping, self.n_mapping, self.contrastive_att_net[0]):
                conv.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre, y = self.reconstruct(x)  # g(x_i) and y_i = sum_j P_ij g(x_j)
        c_in, y_in = (centre.detach(), y.detach()) if self.detach_gate_inputs else (centre, y)
        gate = self.contrastive_att_net(self.x_mapping(c_in) * self.n_mapping(y_in))  # [B, 1, T, H, W]
        return x + self.W(gate * y)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, gate_channels={self.gate_channels}, "
            f"detach_gate_inputs={self.detach_gate_inputs}"
        )
