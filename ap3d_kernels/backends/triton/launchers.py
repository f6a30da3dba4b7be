"""Launchers of the Triton APM kernels: lay out the operands, allocate the results, pick the
block sizes and launch (called inside the registered operators, ``ops.py``)."""
from __future__ import annotations

import torch
import triton

from .. import accumulation_dtype, output_memory_format
from .kernels import (
    INTERPRETED,
    apm_bwd_dk_kernel,
    apm_bwd_dq_kernel,
    apm_bwd_dx_kernel,
    apm_bwd_rowdot_kernel,
    apm_fwd_fill_kernel,
    apm_fwd_kernel,
)

__all__ = ["launch_forward", "launch_backward"]


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _key_dim_padded(ck: int) -> int:
    # tl.dot needs K >= 16 for 16-bit operands (>= 8 for fp32) and power-of-two aranges; 16 suits
    # every dtype, and the padded lanes are loaded as zeros, so they add nothing to any dot.
    return max(16, _next_pow2(ck))


def _value_block(C: int) -> int:
    if INTERPRETED:
        return 32  # small, so that the C = 48 test covers several chunks and a masked tail
    return min(128, max(16, _next_pow2(C)))


# Rows per program of the untuned per-row kernels (fill, backward pre-pass); small in the
# interpreter, where every program is a Python loop.
_ROW_BLOCK = 16 if INTERPRETED else 64


def _fixed_offset_ok(scale: float, dtype: torch.dtype) -> bool:
    """Whether ``exp(S - scale)`` (values down to ``exp(-2 scale)``) keeps full precision once
    cast to the dtype of the ``P @ V`` operand; otherwise the kernel finds each row's max first."""
    limit = {torch.float16: 8.0, torch.bfloat16: 60.0, torch.float32: 60.0, torch.float64: 600.0}[dtype]
    return 2.0 * scale <= limit


def _qk_dtype(dtype: torch.dtype) -> torch.dtype:
    # Unit vectors fit fp16's range exactly and fp16 keeps 3 more mantissa bits than bf16, so
    # 16-bit inputs compute similarities from fp16 q/k on tensor cores.
    return torch.float16 if dtype in (torch.float16, torch.bfloat16) else dtype


def _dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "ieee"
    if dtype == torch.float64:
        return "ieee"
    return "tf32"  # 16-bit operands: the default; the setting only affects fp32 operands


def _tf32_allowed() -> bool:
    # Read at launch, as torch.mm reads it: fp32 products are IEEE unless the user allows TF32.
    return bool(torch.backends.cuda.matmul.allow_tf32)


_PAIR_TABLES: dict = {}


def _pair_table(T: int, time_dim: int, device: torch.device) -> torch.Tensor:
    """The real (centre t, slot) pairs of a clip as an int32 [n, 2] tensor (cached per device)."""
    key = (T, time_dim, str(device))
    table = _PAIR_TABLES.get(key)
    if table is None:
        half = time_dim // 2
        pairs = [(t, s) for t in range(T) for s in range(time_dim) if s != half and 0 <= t + s - half < T]
        table = torch.tensor(pairs, dtype=torch.int32).reshape(-1, 2).to(device)
        _PAIR_TABLES[key] = table
    return table


def _as_format(t: torch.Tensor, B: int, H: int, W: int, fmt: torch.memory_format) -> torch.Tensor:
    """[B, C, F, HW] NCDHW result as [B, C, F, H, W] in the contract's memory format. The kernels
    write NCDHW, so a channels_last_3d caller costs one copy here (unlike the CPU kernels, which
    read and write either layout in place)."""
    return t.view(B, t.shape[1], t.shape[2], H, W).contiguous(memory_format=fmt)


def launch_forward(x, q, vphi, tw, scale, time_dim, contrastive):
    """``apm_fwd`` of the contract (see ``ap3d_kernels.backends``)."""
    B, C, T, H, W = x.shape
    HW = H * W
    fmt = output_memory_format(x)
    x = x.reshape(B, C, T, HW).contiguous()
    q, vphi, tw = (None if t is None else t.contiguous() for t in (q, vphi, tw))
    ck = q.shape[-1]
    nb = time_dim - 1
    acc = accumulation_dtype(x.dtype)
    out = x.new_empty((B, C, time_dim * T, HW))
    lse = x.new_empty((B, T, nb, HW), dtype=acc)
    gate = x.new_empty((B, T, nb, HW) if contrastive else (0,), dtype=acc)
    phi = x.new_empty((B, T, nb, HW, ck) if contrastive else (0,), dtype=acc)
    block_c = _value_block(C)
    # The centre slots (x itself) and the zero-padded neighbours with the reference's statistics
    # for them (the attention kernel below writes only the real pairs).
    apm_fwd_fill_kernel[(triton.cdiv(HW, _ROW_BLOCK) * B * T,)](
        x, out, lse, gate if contrastive else lse, phi if contrastive else lse,
        T, HW, C, ck,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        TIME_DIM=time_dim, CKP=_key_dim_padded(ck), CONTRASTIVE=contrastive, BLOCK_M=_ROW_BLOCK, BLOCK_C=block_c,
    )
    pairs = _pair_table(T, time_dim, x.device)
    n_pairs = pairs.shape[0]
    if n_pairs == 0:  # T = 1: every neighbour is padding
        return _as_format(out, B, H, W, fmt), lse, gate, phi

    def grid(meta):
        return (triton.cdiv(HW, meta["BLOCK_M"]) * B * n_pairs, triton.cdiv(C, block_c))

    apm_fwd_kernel[grid](
        x, q.to(_qk_dtype(x.dtype)), vphi if contrastive else q, tw if contrastive else q, out, lse, gate, phi, pairs,
        scale,
        T, HW, C, ck, n_pairs,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        TIME_DIM=time_dim, CKP=_key_dim_padded(ck), CONTRASTIVE=contrastive,
        ROW_MAX=not _fixed_offset_ok(scale, x.dtype), PREC=_dot_precision(x.dtype, _tf32_allowed()),
        BLOCK_C=block_c,
    )
    return _as_format(out, B, H, W, fmt), lse, gate, phi


def launch_backward(dout, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive, detach_gate_inputs):
    """``apm_bwd`` of the contract (see ``ap3d_kernels.backends``)."""
    B, C, T, H, W = x.shape
    HW = H * W
    fmt = output_memory_format(x)
    x = x.reshape(B, C, T, HW).contiguous()
    dout = dout.to(x.dtype).reshape(B, C, time_dim * T, HW).contiguous()
    out = out.reshape(B, C, time_dim * T, HW).contiguous()
    q, vphi, tw, lse, gate, phi = (None if t is None else t.contiguous() for t in (q, vphi, tw, lse, gate, phi))
    ck = q.shape[-1]
    nb = time_dim - 1
    acc = accumulation_dtype(x.dtype)
    ckp = _key_dim_padded(ck)
    prec = _dot_precision(x.dtype, _tf32_allowed())
    block_c = _value_block(C)
    one_c = triton.cdiv(C, block_c) == 1
    qk = q.to(_qk_dtype(x.dtype))
    strides = (x.stride(0), x.stride(1), x.stride(2), dout.stride(0), dout.stride(1), dout.stride(2))

    # One pre-pass: R = rowsum(dz * z) per (pair, row) and, with the gate, dlogit = (1 - a) R
    # (exactly, without dividing by a, which may underflow), dphi = dlogit tw, dtw = sum over
    # pairs of dlogit phi, and delta = R (+ dphi . phi when the gate's input is not detached:
    # phi = P vphi then also sends dP += dphi vphi^T).
    gate_grad_to_p = contrastive and not detach_gate_inputs
    delta = x.new_empty((B, T, nb, HW), dtype=acc)
    if contrastive:
        dphi = x.new_empty((B, T, nb, HW, ck), dtype=acc)  # dL/dphi(y)
        dtw = x.new_empty((B, T, HW, ck), dtype=acc)
        dvphi = torch.empty_like(vphi)
    else:
        dphi = dvphi = dtw = None
    apm_bwd_rowdot_kernel[(triton.cdiv(HW, _ROW_BLOCK) * B * T,)](
        dout, out, gate if contrastive else delta, phi if contrastive else delta, tw if contrastive else delta,
        delta, dphi if contrastive else delta, dtw if contrastive else delta,
        T, HW, C, ck, dout.stride(0), dout.stride(1), dout.stride(2),
        TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=gate_grad_to_p,
        BLOCK_M=_ROW_BLOCK, BLOCK_C=block_c,
    )

    dx = torch.empty_like(x)
    if not one_c:  # otherwise the dk kernel computes dx from the same tiles
        apm_bwd_dx_kernel[lambda meta: (triton.cdiv(HW, meta["BLOCK_N"]) * B * T, triton.cdiv(C, block_c))](
            dout, x, qk, lse, gate if contrastive else lse, dx,
            scale, T, HW, C, ck, *strides,
            TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, PREC=prec, BLOCK_C=block_c,
        )
    dk = torch.empty_like(q)
    apm_bwd_dk_kernel[lambda meta: (triton.cdiv(HW, meta["BLOCK_N"]) * B * T,)](
        dout, x, qk, vphi if contrastive else q, lse, gate if contrastive else lse, delta,
        dphi if contrastive else q, dk, dvphi if contrastive else dk, dx,
        scale, T, HW, C, ck, *strides,
        TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=gate_grad_to_p,
        PREC=prec, ONE_C=one_c, WITH_DX=one_c, BLOCK_C=block_c,
    )
    dqk = dk  # the dq kernel adds dq to dk in place (q and k are one tensor)
    apm_bwd_dq_kernel[lambda meta: (triton.cdiv(HW, meta["BLOCK_M"]) * B * T,)](
        dout, x, qk, vphi if contrastive else q, lse, gate if contrastive else lse, delta,
        dphi if contrastive else q, dqk,
        scale, T, HW, C, ck, *strides,
        TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=gate_grad_to_p,
        PREC=prec, ONE_C=one_c, BLOCK_C=block_c,
    )
    if not contrastive:  # two distinct empties: op outputs must not alias each other
        dvphi, dtw = x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc)
    return _as_format(dx, B, H, W, fmt), dqk, dvphi, dtw

