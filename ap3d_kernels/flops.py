"""FLOP counts of APM: the one set of formulas every backend registers with ``torch.utils.flop_counter``.

Conventions are the counter's own: a multiply-add is 2 FLOPs, element-wise work is not counted,
and a recomputing (FlashAttention-2 style) backward counts its recomputation of ``q k^T``, as
PyTorch's formula for ``scaled_dot_product_attention``'s backward does. Only the pairs a fused
kernel computes are counted: zero-padded neighbours contribute nothing.

- ``core_*_flops``: the fused operators ``<backend>::apm_fwd`` / ``apm_bwd`` (the HW x HW part).
- ``projection_*_flops``: the prologue's 1x1x1 projections, which run as PyTorch GEMMs and are
  counted by the counter's own formulas.
- ``apm_*_flops``: the whole of ``ap3d_kernels.apm`` (prologue + core), i.e. what a
  ``FlopCounterMode`` reports for one call and its backward when x and every weight require grad.
"""
from __future__ import annotations

__all__ = [
    "valid_pairs",
    "core_forward_flops",
    "core_backward_flops",
    "projection_forward_flops",
    "projection_backward_flops",
    "apm_forward_flops",
    "apm_backward_flops",
]


def valid_pairs(T: int, time_dim: int) -> int:
    """Number of (centre, neighbour) pairs whose neighbour is a real frame, per clip."""
    half = time_dim // 2
    return sum(1 for t in range(T) for o in range(-half, half + 1) if o != 0 and 0 <= t + o < T)


def core_forward_flops(B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool) -> int:
    pairs = B * valid_pairs(T, time_dim)
    flops = 2 * pairs * HW * HW * ck  # S = q k^T
    flops += 2 * pairs * HW * HW * C  # y = P V
    if contrastive:
        flops += 2 * pairs * HW * HW * ck  # phi = P vphi
        flops += 2 * pairs * HW * ck  # gate logit tw . phi
    return flops


def core_backward_flops(
    B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool, detach_gate_inputs: bool = True
) -> int:
    pairs = B * valid_pairs(T, time_dim)
    flops = 2 * pairs * HW * HW * ck  # recompute S
    flops += 2 * pairs * HW * HW * C * 2  # dP = dY V^T and dV = P^T dY
    flops += 2 * pairs * HW * HW * ck * 2  # dq = dS k and dk = dS^T q
    if contrastive:
        flops += 2 * pairs * HW * HW * ck  # dvphi = P^T dphi
        if not detach_gate_inputs:
            flops += 2 * pairs * HW * HW * ck  # dP += dphi vphi^T (the gate's path into P)
    return flops


def projection_forward_flops(B: int, C: int, T: int, HW: int, ck: int, contrastive: bool) -> int:
    return 2 * B * T * HW * C * ck * (3 if contrastive else 1)  # g (and theta, phi)


def projection_backward_flops(
    B: int, C: int, T: int, HW: int, ck: int, contrastive: bool, detach_gate_inputs: bool = True
) -> int:
    one = 2 * B * T * HW * C * ck
    flops = 2 * one  # g: dW_g and dx
    if contrastive:
        flops += 2 * (1 if detach_gate_inputs else 2) * one  # theta, phi: dW (and dx when attached)
    return flops


def apm_forward_flops(B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool) -> int:
    return projection_forward_flops(B, C, T, HW, ck, contrastive) + core_forward_flops(
        B, C, T, HW, ck, time_dim, contrastive
    )


def apm_backward_flops(
    B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool, detach_gate_inputs: bool = True
) -> int:
    return projection_backward_flops(B, C, T, HW, ck, contrastive, detach_gate_inputs) + core_backward_flops(
        B, C, T, HW, ck, time_dim, contrastive, detach_gate_inputs
    )
