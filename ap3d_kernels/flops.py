"""FLOP counts of APM, shared by every backend's ``torch.utils.flop_counter`` formula.

Counts multiply-adds as 2 FLOPs (the counter's convention) and only the pairs a fused kernel
computes: zero-padded neighbours contribute nothing, so they are not counted.
"""
from __future__ import annotations

__all__ = ["valid_pairs", "apm_forward_flops", "apm_backward_flops"]


def valid_pairs(T: int, time_dim: int) -> int:
    """Number of (centre, neighbour) pairs whose neighbour is a real frame, per clip."""
    half = time_dim // 2
    return sum(1 for t in range(T) for o in range(-half, half + 1) if o != 0 and 0 <= t + o < T)


def apm_forward_flops(B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool) -> int:
    pairs = B * valid_pairs(T, time_dim)
    frames = B * T
    flops = 2 * frames * HW * C * ck  # g projection
    flops += 2 * pairs * HW * HW * ck  # q k^T
    flops += 2 * pairs * HW * HW * C  # P @ V
    if contrastive:
        flops += 2 * frames * HW * C * ck  # theta on the centre frame
        flops += 2 * pairs * HW * C * ck  # phi on the reconstruction
        flops += 2 * pairs * HW * ck  # w^T (theta * phi)
    return flops


def apm_backward_flops(B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool) -> int:
    """Backward of a recomputing (FlashAttention-2 style) kernel: S recomputed, then dV, dP, dQ, dK."""
    pairs = B * valid_pairs(T, time_dim)
    frames = B * T
    flops = 2 * pairs * HW * HW * ck  # recompute q k^T
    flops += 2 * pairs * HW * HW * C * 2  # dP = dY V^T and dV = P^T dY
    flops += 2 * pairs * HW * HW * ck * 2  # dQ = dS K and dK = dS^T Q
    flops += 2 * frames * HW * C * ck * 2  # g projection: dW_g and dx
    if contrastive:
        flops += 2 * pairs * HW * C * ck * 2  # phi: dW_phi and dy
        flops += 2 * frames * HW * C * ck * 2  # theta: dW_theta and dx
        flops += 2 * pairs * HW * ck * 2
    return flops
