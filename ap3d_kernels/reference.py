"""Pure-PyTorch Appearance-Preserving Module (APM): the oracle for every fused kernel.

It follows the authors' release exactly (see README, "APM semantics"): it materialises the
``HW x HW`` similarity matrix of every (centre, neighbour) pair, so it is simple and slow.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["apm_reference", "neighbour_offsets"]


def neighbour_offsets(time_dim: int) -> list[int]:
    """Temporal offsets of the neighbours of a centre frame, in output order (e.g. [-1, 1])."""
    half = time_dim // 2
    return [o for o in range(-half, half + 1) if o != 0]


def apm_reference(
    x: torch.Tensor,
    g_weight: torch.Tensor,
    theta_weight: Optional[torch.Tensor],
    phi_weight: Optional[torch.Tensor],
    att_weight: Optional[torch.Tensor],
    *,
    scale: float = 4.0,
    time_dim: int = 3,
    contrastive: bool = True,
    detach_gate_inputs: bool = True,
) -> torch.Tensor:
    """APM forward in plain PyTorch ops (differentiable by autograd).

    Args:
        x: ``[B, C, T, H, W]`` features.
        g_weight: ``[Ck, C]`` semantic mapping (squeezed 1x1x1 conv weight).
        theta_weight, phi_weight: ``[Ck, C]`` contrastive-attention mappings of the centre and
            the reconstructed neighbour; ``att_weight``: ``[Ck]`` (the 1x1x1 conv to one channel).
        scale: ``s`` of Eq. (2) (``temperature`` in the release).
        time_dim: odd temporal window ``N``; each frame gets ``N - 1`` reconstructed neighbours.
        contrastive: apply the contrastive-attention gate.
        detach_gate_inputs: feed theta/phi with detached inputs (the release's choice).

    Returns:
        ``[B, C, N*T, H, W]``: for each ``t`` the frames ``[z(t-N//2) .. z(t-1), x_t, z(t+1) ..]``.
    """
    B, C, T, H, W = x.shape
    HW = H * W
    half = time_dim // 2
    offsets = neighbour_offsets(time_dim)

    values = x.reshape(B, C, T, HW).permute(0, 2, 3, 1)  # [B, T, HW, C]
    query = F.normalize(values @ g_weight.t(), p=2, dim=-1)  # [B, T, HW, Ck]

    # Zero padding in time: padded neighbours have zero keys and zero values, so their
    # reconstruction is the mean of zeros, i.e. zero, exactly as in the release.
    pad = (0, 0, 0, 0, half, half)
    keys_padded = F.pad(query, pad)
    values_padded = F.pad(values, pad)
    # neighbour o of every frame t is padded frame t + half + o: one slice per offset (no index
    # tensor built from range(T), so T stays symbolic under torch.export / ONNX export)
    keys = torch.stack([keys_padded[:, half + o:half + o + T] for o in offsets], dim=2)  # [B, T, N-1, HW, Ck]
    neighbours = torch.stack([values_padded[:, half + o:half + o + T] for o in offsets], dim=2)  # [B, T, N-1, HW, C]

    similarity = scale * (query.unsqueeze(2) @ keys.transpose(-1, -2))  # [B, T, N-1, HW, HW]
    weights = torch.softmax(similarity, dim=-1)
    recon = weights @ neighbours  # [B, T, N-1, HW, C]

    if contrastive:
        centre = values.detach() if detach_gate_inputs else values
        gate_recon = recon.detach() if detach_gate_inputs else recon
        theta = (centre @ theta_weight.t()).unsqueeze(2)  # [B, T, 1, HW, Ck]
        phi = gate_recon @ phi_weight.t()  # [B, T, N-1, HW, Ck]
        gate = torch.sigmoid((theta * phi) @ att_weight)  # [B, T, N-1, HW]
        recon = recon * gate.unsqueeze(-1)

    frames = torch.cat([recon[:, :, :half], values.unsqueeze(2), recon[:, :, half:]], dim=2)
    return frames.permute(0, 4, 1, 2, 3).reshape(B, C, T * time_dim, H, W)
