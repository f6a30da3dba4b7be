"""The fused APM backends and the one operator contract they all implement.

Split of the work
-----------------
APM (``ap3d_kernels.apm``) is computed in two parts, the same way for every fused backend:

1. **Prologue, in PyTorch, differentiated by autograd** (:func:`prologue`, shared): the three
   cheap 1x1x1 projections (one GEMM for the stacked weights where the detach setting allows)
   and the L2 normalisation, in the accumulation dtype::

       q    = normalize(x W_g^T)                      [B, T, HW, Ck]  unit rows
       vphi = x' W_phi^T                              [B, T, HW, Ck]
       tw   = (x' W_theta^T) * w                      [B, T, HW, Ck]
       (x' = x.detach() when detach_gate_inputs, else x)

2. **Core, one fused operator per backend** (``torch.ops.<namespace>.apm_fwd``): everything
   quadratic in HW, one (centre t, neighbour t') pair at a time, the ``HW x HW`` matrix held
   only as on-chip tiles / per-thread row blocks::

       P = softmax(scale * q_t q_t'^T),  y = P x_t',  phi = P vphi_t'  (= phi(y): phi is linear)
       a = sigmoid(sum_k tw_t * phi),    z = a * y                     (a = 1 without the gate)

   written straight into the interleaved output ``[z(t-N//2) .. z(t-1), x_t, z(t+1) ..]``
   with the centre copy; zero-padded neighbours (outside the clip) reconstruct exactly zero.

The operator
------------
Every backend registers the same two operators under its own namespace (``ap3d_cpu`` for the
C++ kernels, ``ap3d_triton`` for the Triton kernels), with the schemas :data:`FORWARD_SCHEMA`
and :data:`BACKWARD_SCHEMA` (the tests check that each registered schema is exactly this)::

    apm_fwd(x, q, vphi, tw, scale, time_dim, contrastive, detach_gate_inputs)
        -> (out, lse, gate, phi)
    apm_bwd(grad_out, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive,
            detach_gate_inputs) -> (grad_x, grad_q, grad_vphi, grad_tw)

- ``x`` ``[B, C, T, H, W]`` any floating dtype and strides; ``q``, ``vphi``, ``tw``
  ``[B, T, H*W, Ck]`` in the accumulation dtype (float64 for float64 ``x``, else float32);
  ``vphi`` and ``tw`` are ``None`` when ``contrastive`` is false.
- ``out`` ``[B, C, N*T, H, W]`` and ``grad_x`` in ``x``'s dtype and memory format
  (:func:`output_memory_format`: channels_last_3d or contiguous).
- Saved statistics, accumulation dtype, O(HW) per pair and never O(HW^2): ``lse``
  ``[B, T, N-1, HW]`` (log-sum-exp of each row's scaled similarities), ``gate`` ``[B, T, N-1,
  HW]`` and ``phi`` ``[B, T, N-1, HW, Ck]`` (empty when not contrastive). Rows whose neighbour
  is zero padding hold the reference's values for them: ``lse = log(HW)``, ``gate = 0.5``,
  ``phi = 0``.
- ``detach_gate_inputs`` changes the backward only: when true, the gate's ``phi = P vphi``
  sends no gradient into ``P`` (the release's detached reconstruction), only into ``vphi``.
- The backward recomputes ``P`` from ``lse`` (FlashAttention-2 style), is deterministic and has
  one writer per gradient. It is not itself differentiable: double backward raises (use
  ``backend="reference"`` for higher-order gradients).

Why this signature (as FlashAttention keeps one op signature on every path):

- *Projected maps in, not weights.* The projections are O(HW C Ck), cheap next to the O(HW^2 C)
  core; outside the op, autograd differentiates them (and the release's detach semantics)
  exactly, so no kernel carries a hand-written backward for them.
- *phi = P vphi rather than phi(y).* Accumulated beside ``P @ V`` in the key loop, it gives the
  gate at the end of that loop without the phi weights and without a second pass over y, so a
  kernel may split C across programs.
- *w folded into tw.* The gate logit becomes a plain dot product; one input fewer.
- *x itself, 5-D.* It is both the values and the centre copy, and its memory format
  (channels_last_3d) carries through to out and grad_x.
- *detach_gate_inputs in the forward's schema.* It changes only the backward, but autograd is
  registered on the operator, so what the backward needs must be an input.
- *Statistics as outputs* (like FlashAttention's ``softmax_lse``): plain tensors that autograd
  saves and ``torch.compile`` traces, marked non-differentiable.
- *One namespace per backend.* The Triton interpreter runs on CPU tensors, so the two backends
  cannot share one operator with per-device kernels.

Around each operator (``registration.register_core``, shared): fake kernels for
``torch.compile`` / ``opcheck``, the autograd formula, and the FLOP formulas of
:mod:`ap3d_kernels.flops`, registered when the backend module is imported.

Backend modules
---------------
``ap3d_kernels.backends.cpu`` and ``ap3d_kernels.backends.triton`` each expose
``is_available() -> (bool, reason)``, ``supports_device(device) -> bool`` and ``forward_op``
(the ``apm_fwd`` operator), and are imported by :mod:`ap3d_kernels.functional`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["FORWARD_SCHEMA", "BACKWARD_SCHEMA", "accumulation_dtype", "output_memory_format", "prologue", "fused_apm"]

FORWARD_SCHEMA = (
    "(Tensor x, Tensor q, Tensor? vphi, Tensor? tw, float scale, int time_dim, bool contrastive, "
    "bool detach_gate_inputs) -> (Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor q, Tensor? vphi, Tensor? tw, Tensor out, Tensor lse, Tensor gate, "
    "Tensor phi, float scale, int time_dim, bool contrastive, bool detach_gate_inputs) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of q / vphi / tw and of the saved statistics for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``out`` and ``grad_x``: channels_last_3d when x is (and not also
    contiguous, which happens when a dimension is 1), else contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x W^T`` for ``x`` ``[B, C, T, H, W]`` and ``weight`` ``[k, C]``: ``[B, T*H*W, k]``, contiguous.

    One GEMM on x's own memory, never a copy of x: channels-last x is a ``[B*THW, C]`` matrix;
    NCDHW x is ``[B, C, THW]``, multiplied as ``W @ x`` per clip (the BLAS is slow on the
    transposed, k-wide form) and the small result transposed.
    """
    B, C = x.shape[:2]
    if x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x.permute(0, 2, 3, 4, 1).reshape(B, -1, C) @ weight.t()
    flat = x.reshape(B, C, -1)
    return torch.bmm(weight.expand(B, *weight.shape), flat).transpose(1, 2).contiguous()


def prologue(
    x: torch.Tensor,
    g_weight: torch.Tensor,
    theta_weight: Optional[torch.Tensor],
    phi_weight: Optional[torch.Tensor],
    att_weight: Optional[torch.Tensor],
    *,
    contrastive: bool,
    detach_gate_inputs: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(q, vphi, tw)`` of the contract from validated arguments (differentiable by autograd).

    The projections run in ``x``'s dtype (fp32 accumulation inside the BLAS, as a 1x1x1 conv
    would) and are then cast to the accumulation dtype.
    """
    B, _, T, H, W = x.shape
    ck = g_weight.shape[0]
    acc = accumulation_dtype(x.dtype)

    def frames(t: torch.Tensor) -> torch.Tensor:  # [B, THW, k] -> [B, T, HW, k] in acc dtype
        return t.reshape(B, T, H * W, t.shape[-1]).to(acc)

    if not contrastive:
        return F.normalize(frames(_project(x, g_weight)), dim=-1), None, None
    if detach_gate_inputs:
        # The gate's projections see x detached: they train theta and phi but send x nothing.
        p = frames(_project(x, g_weight))
        gate_p = frames(_project(x.detach(), torch.cat([theta_weight, phi_weight])))
        theta_x, vphi = gate_p[..., :ck], gate_p[..., ck:]
    else:
        stacked = frames(_project(x, torch.cat([g_weight, theta_weight, phi_weight])))
        p, theta_x, vphi = stacked[..., :ck], stacked[..., ck : 2 * ck], stacked[..., 2 * ck :]
    q = F.normalize(p, dim=-1)
    return q, vphi.contiguous(), theta_x * att_weight.to(acc)


def fused_apm(
    forward_op,
    x: torch.Tensor,
    g_weight: torch.Tensor,
    theta_weight: Optional[torch.Tensor],
    phi_weight: Optional[torch.Tensor],
    att_weight: Optional[torch.Tensor],
    *,
    scale: float,
    time_dim: int,
    contrastive: bool,
    detach_gate_inputs: bool,
) -> torch.Tensor:
    """APM through a backend's core operator: the shared prologue, then ``forward_op``."""
    q, vphi, tw = prologue(
        x, g_weight, theta_weight, phi_weight, att_weight, contrastive=contrastive,
        detach_gate_inputs=detach_gate_inputs,
    )
    return forward_op(x, q, vphi, tw, float(scale), int(time_dim), bool(contrastive), bool(detach_gate_inputs))[0]
