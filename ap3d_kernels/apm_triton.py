"""Triton backend of ``ap3d_kernels.apm``: fused APM forward and backward for GPUs.

What runs where
---------------
The three 1x1x1 projections are tiny GEMMs (``C -> C/16``) and stay in PyTorch, so autograd
differentiates them (and applies the detach semantics of the gate inputs) for free:

    q    = normalize(x W_g^T)                    [B, T, HW, Ck]  (unit rows)
    vphi = x' W_phi^T,  tw = (x' W_theta^T) * w  [B, T, HW, Ck]  (x' = x.detach() by default)

Everything quadratic in HW runs in the kernels, one ``(centre t, neighbour t')`` pair at a time,
with ``HW x HW`` similarities only ever held as one on-chip tile:

    S = scale * q_t q_t'^T,  P = softmax(S),  y = P x_t'^T,  phi(y) = P vphi_t'  (phi is linear),
    a = sigmoid(sum_d tw * phi(y)),  z = a * y  -> written into the interleaved output.

Because ``phi(y) = P @ vphi`` is accumulated beside ``P @ V``, the gate is known at the end of
the key loop of every program, so the value dimension C can be split across programs (C up to
2048 and beyond) without a second pass over the output. Programs are launched for real pairs
only; the launcher copies the centre frames into their slots and zeroes the few slots whose
neighbour is temporal zero padding (exactly the reference's result for them).

Numerics: q and k are unit vectors, so S lies in [-scale, scale] and ``exp(S - scale)`` is a
safe fixed softmax offset (no running max, no accumulator rescaling) as long as
``exp(-2 * scale)`` is comfortably representable in the dtype ``P`` is cast to; for larger
scales a cheap extra pass over the keys (dimension Ck) finds the exact row maximum first.
Accumulation is fp32 (fp64 for fp64 inputs, so ``gradcheck`` is meaningful); for fp16/bf16
inputs the unit vectors q, k enter ``tl.dot`` as fp16 (3 more mantissa bits than bf16). fp32 ``tl.dot``
uses IEEE precision unless the caller allows TF32 (``torch.backends.cuda.matmul.allow_tf32``).

Backward (FlashAttention-2 style, deterministic, no atomics): a pre-pass computes
``R = rowsum(dz * z)`` per pair row (then ``dlogit = (1 - a) R`` and ``delta = R`` exactly, with
no division by the gate), and kernels recompute ``P`` tile by tile from the saved log-sum-exp:
one per key block for the key gradient, ``P^T dphi`` (the gradient of ``vphi``) and, when C fits
one channel block, dx as well (FlashAttention-2's fused dK/dV); else a separate dx kernel split
over channel chunks; and one per query block for the query gradient.

The kernels are registered as ``torch.library.custom_op`` ops (``ap3d::apm_triton_forward`` and
``ap3d::apm_triton_backward``) with fake kernels, autograd and FLOP formulas, so ``torch.compile``
keeps each as one opaque node of the graph (no graph break). ``custom_op`` rather than
``triton_op``: ``triton_op`` makes the compiler trace into the kernels, which the interpreter
cannot do, so only ``custom_op`` is the same, tested op on CPU CI and on the GPU.

Interpreter mode: with ``TRITON_INTERPRET=1`` set before triton is imported, the same kernels
run on CPU tensors (slowly, one fixed config, no autotuning); that is how CI tests them.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from .flops import valid_pairs

__all__ = [
    "is_available",
    "supports_device",
    "apm",
    "interpreting",
    "triton_forward_flops",
    "triton_backward_flops",
]

try:  # triton is optional: without it the backend reports itself unavailable.
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None
    _IMPORT_ERROR = exc


def _interpret_env() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 reads the variable through its knobs
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# @triton.jit decides between compiled and interpreted kernels when the kernel is defined, i.e.
# when this module is imported; what counts afterwards is that decision, not the env var now.
_INTERPRETED = triton is not None and _interpret_env()


def interpreting() -> bool:
    """Whether this module's kernels were built for the Triton interpreter (CPU tensors)."""
    return _INTERPRETED


def is_available() -> tuple[bool, str]:
    if triton is None:
        return False, (
            f"the 'triton' backend needs the triton package (pip install triton>=3.0); "
            f"importing it failed: {_IMPORT_ERROR}"
        )
    if not _INTERPRETED and not torch.cuda.is_available():
        return False, (
            "the 'triton' backend needs a CUDA GPU, or TRITON_INTERPRET=1 set before triton is "
            "first imported to run its kernels on CPU tensors (slow; for testing)"
        )
    return True, ""


def supports_device(device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return triton is not None and torch.cuda.is_available()
    if device.type == "cpu":
        return _INTERPRETED
    return False


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _key_dim_padded(ck: int) -> int:
    # tl.dot needs K >= 16 for 16-bit operands (>= 8 for fp32) and power-of-two aranges; 16 suits
    # every dtype, and the padded lanes are loaded as zeros, so they add nothing to any dot.
    return max(16, _next_pow2(ck))


def _value_block(C: int) -> int:
    if _INTERPRETED:
        return 32  # small, so that the C = 48 test covers several chunks and a masked tail
    return min(128, max(16, _next_pow2(C)))


def _fixed_offset_ok(scale: float, dtype: torch.dtype) -> bool:
    """Whether ``exp(S - scale)`` (values down to ``exp(-2 scale)``) keeps full precision once
    cast to the dtype of the ``P @ V`` operand; otherwise the kernel finds each row's max first."""
    limit = {torch.float16: 8.0, torch.bfloat16: 60.0, torch.float32: 60.0, torch.float64: 600.0}[dtype]
    return 2.0 * scale <= limit


def _qk_dtype(dtype: torch.dtype) -> torch.dtype:
    # Unit vectors fit fp16's range exactly and fp16 keeps 3 more mantissa bits than bf16, so
    # 16-bit inputs compute similarities from fp16 q/k on tensor cores.
    return torch.float16 if dtype in (torch.float16, torch.bfloat16) else dtype


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "ieee"
    if dtype == torch.float64:
        return "ieee"
    return "tf32"  # 16-bit operands: the default; the setting only affects fp32 operands


def _tf32_allowed() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32)


# Autotuning space on GPU, keyed on (HW, C, Ck) (and the dtypes): (BLOCK_M, BLOCK_N, num_warps,
# num_stages); the value block BLOCK_C is chosen by the launcher (all of C up to 128 per program).
# Chosen from AOT builds for sm_90 with triton 3.9 (cubin resource usage): in bf16 each list
# holds configs that compile without register spills at BLOCK_C = 128, mostly 8 warps (4-warp
# 64 x 64 tiles spill hundreds of bytes). "bwd_kv" serves the key-block kernel (dk, dvphi and
# the fused dx) and the separate dx kernel, "bwd_q" the query-block kernel.
GPU_CONFIG_CHOICES = {
    "fwd": [(64, 64, 8, 2), (64, 64, 8, 3), (128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (32, 32, 4, 3)],
    "bwd_kv": [(32, 64, 8, 2), (32, 64, 8, 3), (32, 32, 8, 2), (16, 64, 4, 2), (64, 64, 8, 2), (32, 32, 4, 3)],
    "bwd_q": [(64, 64, 8, 2), (64, 32, 8, 2), (128, 32, 8, 2), (32, 32, 4, 3), (64, 32, 4, 2), (32, 64, 4, 2)],
}


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
if triton is not None:

    def _configs(block_names: tuple[str, ...], gpu_choices: list[tuple]) -> list:
        """One fixed config in interpreter mode (multi-config autotune fails there), else a
        small set covering the paper's stage-2/3 shapes (HW 128..512, C 128..1024)."""
        if _INTERPRETED:
            return [triton.Config({name: 16 for name in block_names}, num_warps=4, num_stages=1)]
        return [
            triton.Config(dict(zip(block_names, blocks)), num_warps=warps, num_stages=stages)
            for (*blocks, warps, stages) in gpu_choices
        ]

    _FWD_CONFIGS = _configs(("BLOCK_M", "BLOCK_N"), GPU_CONFIG_CHOICES["fwd"])
    _BWD_KV_CONFIGS = _configs(("BLOCK_M", "BLOCK_N"), GPU_CONFIG_CHOICES["bwd_kv"])
    _BWD_Q_CONFIGS = _configs(("BLOCK_M", "BLOCK_N"), GPU_CONFIG_CHOICES["bwd_q"])
    _KEY = ["HW", "C", "CK"]

    @triton.autotune(configs=_FWD_CONFIGS, key=_KEY)
    @triton.jit
    def _apm_fwd_kernel(
        X, Q, VPHI, TW, OUT, LSE, GATE, PHI, PAIRS,
        scale,
        T, HW, C, CK, N_PAIRS,
        stride_xb, stride_xc, stride_xt,
        stride_ob, stride_oc, stride_ot,
        TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr,
        ROW_MAX: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """One program: one real (centre t, neighbour t') pair of one clip, BLOCK_M positions,
        BLOCK_C channels. PAIRS lists the clip's real pairs as (t, slot); the centre slots and
        the zero-padded neighbours are written by the launcher, so the kernel has no branches
        (branches here cost registers that the key loop needs)."""
        HALF: tl.constexpr = TIME_DIM // 2
        NB: tl.constexpr = TIME_DIM - 1
        # Axis 0 enumerates (clip pair, row block) with the row block fastest, so programs that
        # share one neighbour's keys and values run together (L2 reuse), and its 2^31 limit
        # (unlike axis 1's 65535) never binds.
        n_m = tl.cdiv(HW, BLOCK_M)
        pid_m = tl.program_id(0) % n_m
        pid_p = tl.program_id(0) // n_m
        pid_c = tl.program_id(1)
        pair = pid_p % N_PAIRS
        b = (pid_p // N_PAIRS).to(tl.int64)
        t = tl.load(PAIRS + 2 * pair)
        slot = tl.load(PAIRS + 2 * pair + 1)
        src = t + slot - HALF
        nb = slot - (slot > HALF).to(tl.int32)

        ACC = LSE.dtype.element_ty
        DT = X.dtype.element_ty
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_d = tl.arange(0, CKP)
        mask_m = offs_m < HW
        mask_c = offs_c < C
        mask_d = offs_d < CK
        row = ((b * T + t) * NB + nb) * HW + offs_m  # index into [B, T, NB, HW]

        q_base = Q + (b * T + t) * HW * CK
        k_base = Q + (b * T + src) * HW * CK
        q = tl.load(q_base + offs_m[:, None] * CK + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if ROW_MAX:
            # Large scale: exp(S - scale) could underflow, so find each row's max first
            # (a pass of Ck-dim dots only, cheap next to P @ V).
            m_i = tl.full([BLOCK_M], float("-inf"), ACC)
            for start_n in range(0, HW, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                mask_n = offs_n < HW
                kT = tl.load(k_base + offs_n[None, :] * CK + offs_d[:, None], mask=mask_d[:, None] & mask_n[None, :], other=0.0)
                s = tl.dot(q, kT, input_precision=PREC, out_dtype=ACC) * scale
                s = tl.where(mask_n[None, :], s, float("-inf"))
                m_i = tl.maximum(m_i, tl.max(s, 1))
            offset = m_i
        else:
            offset = tl.full([BLOCK_M], 1.0, ACC) * scale

        l_i = tl.zeros([BLOCK_M], dtype=ACC)
        acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
        phi_acc = tl.zeros([BLOCK_M, CKP], dtype=ACC)
        v_base = X + b * stride_xb + src * stride_xt
        for start_n in range(0, HW, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < HW
            kT = tl.load(k_base + offs_n[None, :] * CK + offs_d[:, None], mask=mask_d[:, None] & mask_n[None, :], other=0.0)
            s = tl.dot(q, kT, input_precision=PREC, out_dtype=ACC) * scale
            # Masking the exponent (not its result) keeps padded lanes at exp(-inf) = 0 and
            # never overflows, whatever scale is.
            p = tl.exp(tl.where(mask_n[None, :], s - offset[:, None], float("-inf")))
            l_i += tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] + offs_c[None, :] * stride_xc, mask=mask_n[:, None] & mask_c[None, :], other=0.0)
            p_dt = p.to(DT)
            acc = tl.dot(p_dt, v, acc, input_precision=PREC, out_dtype=ACC)
            if CONTRASTIVE:
                vphi = tl.load(VPHI + (b * T + src) * HW * CK + offs_n[:, None] * CK + offs_d[None, :],
                               mask=mask_n[:, None] & mask_d[None, :], other=0.0)
                phi_acc = tl.dot(p_dt, vphi.to(DT), phi_acc, input_precision=PREC, out_dtype=ACC)

        inv_l = 1.0 / l_i
        y = acc * inv_l[:, None]
        if CONTRASTIVE:
            phi = phi_acc * inv_l[:, None]
            tw = tl.load(TW + ((b * T + t) * HW + offs_m[:, None]) * CK + offs_d[None, :],
                         mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            logit = tl.sum(tw * phi, 1)
            gate = 1.0 / (1.0 + tl.exp(-logit))
            y = y * gate[:, None]
        # Output pointers formed only here: a [BLOCK_M, BLOCK_C] tile of 64-bit pointers kept live
        # across the key loop would cost 2 registers per element.
        out_base = OUT + b * stride_ob + (t * TIME_DIM + slot) * stride_ot
        tl.store(out_base + (offs_m[:, None] + offs_c[None, :] * stride_oc), y.to(DT),
                 mask=mask_m[:, None] & mask_c[None, :])
        if pid_c == 0:
            tl.store(LSE + row, offset + tl.log(l_i), mask=mask_m)
            if CONTRASTIVE:
                tl.store(GATE + row, gate, mask=mask_m)
                tl.store(PHI + row[:, None] * CK + offs_d[None, :], phi, mask=mask_m[:, None] & mask_d[None, :])

    @triton.jit
    def _apm_bwd_rowdot_kernel(
        DOUT, OUT, R,
        T, HW, C,
        stride_b, stride_c, stride_t,
        TIME_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """R[b, t, nb, i] = sum_c dz * z over the neighbour slots (FlashAttention's delta pre-pass)."""
        HALF: tl.constexpr = TIME_DIM // 2
        NB: tl.constexpr = TIME_DIM - 1
        n_m = tl.cdiv(HW, BLOCK_M)
        pid_m = tl.program_id(0) % n_m
        pid_p = tl.program_id(0) // n_m
        nb = pid_p % NB
        bt = pid_p // NB
        t = bt % T
        b = (bt // T).to(tl.int64)
        slot = nb + (nb >= HALF).to(tl.int32)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < HW
        base = b * stride_b + (t * TIME_DIM + slot) * stride_t
        acc = tl.zeros([BLOCK_M], dtype=R.dtype.element_ty)
        for start_c in range(0, C, BLOCK_C):
            offs_c = start_c + tl.arange(0, BLOCK_C)
            mask = mask_m[None, :] & (offs_c < C)[:, None]
            ptrs = base + offs_c[:, None] * stride_c + offs_m[None, :]
            dz = tl.load(DOUT + ptrs, mask=mask, other=0.0).to(R.dtype.element_ty)
            z = tl.load(OUT + ptrs, mask=mask, other=0.0).to(R.dtype.element_ty)
            acc += tl.sum(dz * z, 0)
        tl.store(R + ((b * T + t) * NB + nb) * HW + offs_m, acc, mask=mask_m)

    @triton.autotune(configs=_BWD_KV_CONFIGS, key=_KEY)
    @triton.jit
    def _apm_bwd_dx_kernel(
        DOUT, X, Q, LSE, GATE, DX,
        scale,
        T, HW, C, CK,
        stride_xb, stride_xc, stride_xt,
        stride_ob, stride_oc, stride_ot,
        TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """dx of key frame t' (BLOCK_N positions, BLOCK_C channels): the centre-slot gradient plus
        sum over the pairs that use t' as neighbour of P^T (a * dz). Written once, no atomics."""
        HALF: tl.constexpr = TIME_DIM // 2
        n_n = tl.cdiv(HW, BLOCK_N)
        pid_n = tl.program_id(0) % n_n
        pid_bt = tl.program_id(0) // n_n
        pid_c = tl.program_id(1)
        tk = pid_bt % T
        b = (pid_bt // T).to(tl.int64)
        ACC = LSE.dtype.element_ty
        DT = X.dtype.element_ty
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_d = tl.arange(0, CKP)
        mask_n = offs_n < HW
        mask_c = offs_c < C
        mask_d = offs_d < CK
        k = tl.load(Q + ((b * T + tk) * HW + offs_n[:, None]) * CK + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        # The centre slot of the output is x itself.
        dx = tl.load(DOUT + b * stride_ob + (tk * TIME_DIM + HALF) * stride_ot + offs_n[:, None] + offs_c[None, :] * stride_oc,
                     mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(ACC)
        for slot in tl.static_range(TIME_DIM):
            if slot != HALF:
                nb = slot if slot < HALF else slot - 1
                t = tk - (slot - HALF)  # the centre frame that has tk as this neighbour
                if (t >= 0) & (t < T):
                    dz_base = DOUT + b * stride_ob + (t * TIME_DIM + slot) * stride_ot
                    for start_m in range(0, HW, BLOCK_M):
                        offs_m = start_m + tl.arange(0, BLOCK_M)
                        mask_m = offs_m < HW
                        qT = tl.load(Q + ((b * T + t) * HW + offs_m[None, :]) * CK + offs_d[:, None],
                                     mask=mask_d[:, None] & mask_m[None, :], other=0.0)
                        row = ((b * T + t) * (TIME_DIM - 1) + nb) * HW + offs_m
                        lse = tl.load(LSE + row, mask=mask_m, other=0.0)
                        sT = tl.dot(k, qT, input_precision=PREC, out_dtype=ACC) * scale
                        pT = tl.exp(tl.where(mask_n[:, None] & mask_m[None, :], sT - lse[None, :], float("-inf")))
                        dz = tl.load(dz_base + offs_m[:, None] + offs_c[None, :] * stride_oc,
                                     mask=mask_m[:, None] & mask_c[None, :], other=0.0)
                        if CONTRASTIVE:
                            gate = tl.load(GATE + row, mask=mask_m, other=0.0)
                            dz = (dz.to(ACC) * gate[:, None]).to(DT)
                        dx = tl.dot(pT.to(DT), dz, dx, input_precision=PREC, out_dtype=ACC)
        tl.store(DX + b * stride_xb + tk * stride_xt + offs_n[:, None] + offs_c[None, :] * stride_xc, dx.to(DX.dtype.element_ty),
                 mask=mask_n[:, None] & mask_c[None, :])

    @triton.autotune(configs=_BWD_KV_CONFIGS, key=_KEY)
    @triton.jit
    def _apm_bwd_dk_kernel(
        DOUT, X, Q, VPHI, LSE, GATE, DELTA, DPHI, DK, DVPHI, DX,
        scale,
        T, HW, C, CK,
        stride_xb, stride_xc, stride_xt,
        stride_ob, stride_oc, stride_ot,
        TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr, GATE_GRAD_TO_P: tl.constexpr,
        PREC: tl.constexpr, ONE_C: tl.constexpr, WITH_DX: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Key frame t', BLOCK_N positions: dk = scale * sum dS^T q and dvphi = sum P^T dphi,
        over every pair that uses t' as neighbour and every query block. dP needs all of C, so
        the channel loop sits inside (a single load when C fits one chunk). When it does
        (WITH_DX, needs ONE_C), dx = P^T (a dz) comes from the same tiles (FlashAttention-2's
        fused dK/dV) and the separate dx kernel is skipped."""
        tl.static_assert(ONE_C or not WITH_DX, "WITH_DX needs all of C in one chunk")
        HALF: tl.constexpr = TIME_DIM // 2
        n_n = tl.cdiv(HW, BLOCK_N)
        pid_n = tl.program_id(0) % n_n
        pid_bt = tl.program_id(0) // n_n
        tk = pid_bt % T
        b = (pid_bt // T).to(tl.int64)
        ACC = LSE.dtype.element_ty
        DT = X.dtype.element_ty
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, CKP)
        offs_cb = tl.arange(0, BLOCK_C)
        mask_n = offs_n < HW
        mask_d = offs_d < CK
        mask_nd = mask_n[:, None] & mask_d[None, :]
        kd_ptrs = ((b * T + tk) * HW + offs_n[:, None]) * CK + offs_d[None, :]
        k = tl.load(Q + kd_ptrs, mask=mask_nd, other=0.0)
        if GATE_GRAD_TO_P:
            vphi = tl.load(VPHI + kd_ptrs, mask=mask_nd, other=0.0).to(DT)
        v_base = X + b * stride_xb + tk * stride_xt
        mask_nc = mask_n[:, None] & (offs_cb < C)[None, :]
        if ONE_C:
            v = tl.load(v_base + offs_n[:, None] + offs_cb[None, :] * stride_xc, mask=mask_nc, other=0.0)
        if WITH_DX:  # the centre slot of the output is x itself
            dx = tl.load(DOUT + b * stride_ob + (tk * TIME_DIM + HALF) * stride_ot + offs_n[:, None] + offs_cb[None, :] * stride_oc,
                         mask=mask_nc, other=0.0).to(ACC)
        dk = tl.zeros([BLOCK_N, CKP], dtype=ACC)
        dvphi = tl.zeros([BLOCK_N, CKP], dtype=ACC)
        for slot in tl.static_range(TIME_DIM):
            if slot != HALF:
                nb = slot if slot < HALF else slot - 1
                t = tk - (slot - HALF)
                if (t >= 0) & (t < T):
                    dz_base = DOUT + b * stride_ob + (t * TIME_DIM + slot) * stride_ot
                    for start_m in range(0, HW, BLOCK_M):
                        offs_m = start_m + tl.arange(0, BLOCK_M)
                        mask_m = offs_m < HW
                        mask_md = mask_m[:, None] & mask_d[None, :]
                        q = tl.load(Q + ((b * T + t) * HW + offs_m[:, None]) * CK + offs_d[None, :], mask=mask_md, other=0.0)
                        row = ((b * T + t) * (TIME_DIM - 1) + nb) * HW + offs_m
                        lse = tl.load(LSE + row, mask=mask_m, other=0.0)
                        delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
                        sT = tl.dot(k, tl.trans(q), input_precision=PREC, out_dtype=ACC) * scale
                        pT = tl.exp(tl.where(mask_n[:, None] & mask_m[None, :], sT - lse[None, :], float("-inf")))
                        if ONE_C:
                            dzT = tl.load(dz_base + offs_m[None, :] + offs_cb[:, None] * stride_oc,
                                          mask=mask_m[None, :] & (offs_cb < C)[:, None], other=0.0)
                            dpT = tl.dot(v, dzT, input_precision=PREC, out_dtype=ACC)
                        else:
                            dpT = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
                            for start_c in range(0, C, BLOCK_C):
                                offs_c = start_c + offs_cb
                                mask_c = offs_c < C
                                vc = tl.load(v_base + offs_n[:, None] + offs_c[None, :] * stride_xc,
                                             mask=mask_n[:, None] & mask_c[None, :], other=0.0)
                                dzT = tl.load(dz_base + offs_m[None, :] + offs_c[:, None] * stride_oc,
                                              mask=mask_m[None, :] & mask_c[:, None], other=0.0)
                                dpT = tl.dot(vc, dzT, dpT, input_precision=PREC, out_dtype=ACC)
                        if CONTRASTIVE:
                            gate = tl.load(GATE + row, mask=mask_m, other=0.0)
                            dpT = dpT * gate[None, :]
                            if WITH_DX:
                                dzT = (dzT.to(ACC) * gate[None, :]).to(DT)
                        if WITH_DX:
                            dx = tl.dot(pT.to(DT), tl.trans(dzT), dx, input_precision=PREC, out_dtype=ACC)
                        if CONTRASTIVE:
                            dphi = tl.load(DPHI + row[:, None] * CK + offs_d[None, :], mask=mask_md, other=0.0).to(DT)
                            dvphi = tl.dot(pT.to(DT), dphi, dvphi, input_precision=PREC, out_dtype=ACC)
                            if GATE_GRAD_TO_P:
                                # Undetached gate: phi(y) = P vphi also sends gradient into P.
                                dpT = tl.dot(vphi, tl.trans(dphi), dpT, input_precision=PREC, out_dtype=ACC)
                        dsT = pT * (dpT - delta[None, :])
                        dk = tl.dot(dsT.to(DT), q.to(DT), dk, input_precision=PREC, out_dtype=ACC)
        tl.store(DK + kd_ptrs, dk * scale, mask=mask_nd)
        if CONTRASTIVE:
            tl.store(DVPHI + kd_ptrs, dvphi.to(DVPHI.dtype.element_ty), mask=mask_nd)
        if WITH_DX:
            tl.store(DX + b * stride_xb + tk * stride_xt + offs_n[:, None] + offs_cb[None, :] * stride_xc,
                     dx.to(DX.dtype.element_ty), mask=mask_nc)

    @triton.autotune(configs=_BWD_Q_CONFIGS, key=_KEY)
    @triton.jit
    def _apm_bwd_dq_kernel(
        DOUT, X, Q, VPHI, LSE, GATE, DELTA, DPHI, DQ,
        scale,
        T, HW, C, CK,
        stride_xb, stride_xc, stride_xt,
        stride_ob, stride_oc, stride_ot,
        TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr, GATE_GRAD_TO_P: tl.constexpr,
        PREC: tl.constexpr, ONE_C: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Centre frame t, BLOCK_M positions: dq = scale * sum over its neighbours and key blocks
        of dS k, with dS = P (dP - delta) recomputed tile by tile."""
        HALF: tl.constexpr = TIME_DIM // 2
        n_m = tl.cdiv(HW, BLOCK_M)
        pid_m = tl.program_id(0) % n_m
        pid_bt = tl.program_id(0) // n_m
        t = pid_bt % T
        b = (pid_bt // T).to(tl.int64)
        ACC = LSE.dtype.element_ty
        DT = X.dtype.element_ty
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, CKP)
        offs_cb = tl.arange(0, BLOCK_C)
        mask_m = offs_m < HW
        mask_d = offs_d < CK
        mask_md = mask_m[:, None] & mask_d[None, :]
        qd_ptrs = ((b * T + t) * HW + offs_m[:, None]) * CK + offs_d[None, :]
        q = tl.load(Q + qd_ptrs, mask=mask_md, other=0.0)
        dq = tl.zeros([BLOCK_M, CKP], dtype=ACC)
        for slot in tl.static_range(TIME_DIM):
            if slot != HALF:
                nb = slot if slot < HALF else slot - 1
                src = t + (slot - HALF)
                if (src >= 0) & (src < T):
                    row = ((b * T + t) * (TIME_DIM - 1) + nb) * HW + offs_m
                    lse = tl.load(LSE + row, mask=mask_m, other=0.0)
                    delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
                    dz_base = DOUT + b * stride_ob + (t * TIME_DIM + slot) * stride_ot
                    v_base = X + b * stride_xb + src * stride_xt
                    if CONTRASTIVE:
                        gate = tl.load(GATE + row, mask=mask_m, other=0.0)
                        if GATE_GRAD_TO_P:
                            dphi = tl.load(DPHI + row[:, None] * CK + offs_d[None, :], mask=mask_md, other=0.0).to(DT)
                    if ONE_C:
                        dz = tl.load(dz_base + offs_m[:, None] + offs_cb[None, :] * stride_oc,
                                     mask=mask_m[:, None] & (offs_cb < C)[None, :], other=0.0)
                    for start_n in range(0, HW, BLOCK_N):
                        offs_n = start_n + tl.arange(0, BLOCK_N)
                        mask_n = offs_n < HW
                        mask_nd = mask_n[:, None] & mask_d[None, :]
                        k = tl.load(Q + ((b * T + src) * HW + offs_n[:, None]) * CK + offs_d[None, :], mask=mask_nd, other=0.0)
                        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * scale
                        p = tl.exp(tl.where(mask_m[:, None] & mask_n[None, :], s - lse[:, None], float("-inf")))
                        if ONE_C:
                            vT = tl.load(v_base + offs_n[None, :] + offs_cb[:, None] * stride_xc,
                                         mask=mask_n[None, :] & (offs_cb < C)[:, None], other=0.0)
                            dp = tl.dot(dz, vT, input_precision=PREC, out_dtype=ACC)
                        else:
                            dp = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
                            for start_c in range(0, C, BLOCK_C):
                                offs_c = start_c + offs_cb
                                mask_c = offs_c < C
                                dzc = tl.load(dz_base + offs_m[:, None] + offs_c[None, :] * stride_oc,
                                              mask=mask_m[:, None] & mask_c[None, :], other=0.0)
                                vT = tl.load(v_base + offs_n[None, :] + offs_c[:, None] * stride_xc,
                                             mask=mask_n[None, :] & mask_c[:, None], other=0.0)
                                dp = tl.dot(dzc, vT, dp, input_precision=PREC, out_dtype=ACC)
                        if CONTRASTIVE:
                            dp = dp * gate[:, None]
                            if GATE_GRAD_TO_P:
                                vphi = tl.load(VPHI + ((b * T + src) * HW + offs_n[:, None]) * CK + offs_d[None, :],
                                               mask=mask_nd, other=0.0).to(DT)
                                dp = tl.dot(dphi, tl.trans(vphi), dp, input_precision=PREC, out_dtype=ACC)
                        ds = p * (dp - delta[:, None])
                        dq = tl.dot(ds.to(DT), k.to(DT), dq, input_precision=PREC, out_dtype=ACC)
        tl.store(DQ + qd_ptrs, dq * scale, mask=mask_md)


# ---------------------------------------------------------------------------------------------
# Launchers (called inside the registered ops; arguments are already validated and laid out)
# ---------------------------------------------------------------------------------------------
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


def _launch_forward(x, q, vphi, tw, scale, time_dim, contrastive, allow_tf32):
    B, C, T, HW = x.shape
    ck = q.shape[-1]
    nb = time_dim - 1
    half = time_dim // 2
    acc = _acc_dtype(x.dtype)
    out = x.new_empty((B, C, time_dim * T, HW))
    frames = out.view(B, C, T, time_dim, HW)
    frames[:, :, :, half].copy_(x)  # the centre frames are the input itself
    for t in range(T):  # zero-padded neighbours: reconstruction 0 (only the first/last frames)
        for s in range(time_dim):
            if s != half and not 0 <= t + s - half < T:
                frames[:, :, t, s].zero_()
    # Saved for the backward; the zero-padded pairs keep the reference's values (lse 0, gate 0.5,
    # phi 0), which make every one of their gradient terms vanish.
    lse = x.new_zeros((B, T, nb, HW), dtype=acc)
    if contrastive:
        gate = x.new_full((B, T, nb, HW), 0.5, dtype=acc)
        phi = x.new_zeros((B, T, nb, HW, ck), dtype=acc)
    else:
        gate = x.new_empty((0,), dtype=acc)
        phi = x.new_empty((0,), dtype=acc)
    pairs = _pair_table(T, time_dim, x.device)
    n_pairs = pairs.shape[0]
    if n_pairs == 0:  # T = 1: every neighbour is padding
        return out, lse, gate, phi
    block_c = _value_block(C)

    def grid(meta):
        return (triton.cdiv(HW, meta["BLOCK_M"]) * B * n_pairs, triton.cdiv(C, block_c))

    _apm_fwd_kernel[grid](
        x, q.to(_qk_dtype(x.dtype)), vphi if contrastive else q, tw if contrastive else q, out, lse, gate, phi, pairs,
        scale,
        T, HW, C, ck, n_pairs,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        TIME_DIM=time_dim, CKP=_key_dim_padded(ck), CONTRASTIVE=contrastive,
        ROW_MAX=not _fixed_offset_ok(scale, x.dtype), PREC=_dot_precision(x.dtype, allow_tf32),
        BLOCK_C=block_c,
    )
    return out, lse, gate, phi


def _launch_backward(dout, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive,
                     detach_gate_inputs, allow_tf32):
    B, C, T, HW = x.shape
    ck = q.shape[-1]
    nb = time_dim - 1
    acc = _acc_dtype(x.dtype)
    dout = dout.contiguous()
    ckp = _key_dim_padded(ck)
    prec = _dot_precision(x.dtype, allow_tf32)
    block_c = _value_block(C)
    one_c = triton.cdiv(C, block_c) == 1
    qk = q.to(_qk_dtype(x.dtype))
    strides = (x.stride(0), x.stride(1), x.stride(2), dout.stride(0), dout.stride(1), dout.stride(2))

    # R = rowsum(dz * z) per (pair, row). With z = a y: dL/dlogit = (1 - a) R and
    # delta = rowsum(dy * y) = R, exactly and without dividing by a (which may underflow).
    rowdot = x.new_empty((B, T, nb, HW), dtype=acc)
    block_m = 16 if _INTERPRETED else 64
    _apm_bwd_rowdot_kernel[(triton.cdiv(HW, block_m) * B * T * nb,)](
        dout, out, rowdot, T, HW, C, dout.stride(0), dout.stride(1), dout.stride(2),
        TIME_DIM=time_dim, BLOCK_M=block_m, BLOCK_C=block_c,
    )
    gate_grad_to_p = contrastive and not detach_gate_inputs
    if contrastive:
        dlogit = (1.0 - gate) * rowdot  # [B, T, NB, HW]
        dphi = dlogit.unsqueeze(-1) * tw.unsqueeze(2)  # dL/dphi(y), [B, T, NB, HW, Ck]
        dtw = (dlogit.unsqueeze(-1) * phi).sum(2)
        # Undetached gate: y also receives dphi W_phi, which adds dphi . phi to delta.
        delta = rowdot + (dphi * phi).sum(-1) if gate_grad_to_p else rowdot
        dvphi = torch.empty_like(vphi)
    else:
        dphi = dvphi = dtw = None
        delta = rowdot

    dx = torch.empty_like(x)
    if not one_c:  # otherwise the dk kernel computes dx from the same tiles
        _apm_bwd_dx_kernel[lambda meta: (triton.cdiv(HW, meta["BLOCK_N"]) * B * T, triton.cdiv(C, block_c))](
            dout, x, qk, lse, gate if contrastive else lse, dx,
            scale, T, HW, C, ck, *strides,
            TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, PREC=prec, BLOCK_C=block_c,
        )
    dk = torch.empty_like(q)
    _apm_bwd_dk_kernel[lambda meta: (triton.cdiv(HW, meta["BLOCK_N"]) * B * T,)](
        dout, x, qk, vphi if contrastive else q, lse, gate if contrastive else lse, delta,
        dphi if contrastive else q, dk, dvphi if contrastive else dk, dx,
        scale, T, HW, C, ck, *strides,
        TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=gate_grad_to_p,
        PREC=prec, ONE_C=one_c, WITH_DX=one_c, BLOCK_C=block_c,
    )
    dq = torch.empty_like(q)
    _apm_bwd_dq_kernel[lambda meta: (triton.cdiv(HW, meta["BLOCK_M"]) * B * T,)](
        dout, x, qk, vphi if contrastive else q, lse, gate if contrastive else lse, delta,
        dphi if contrastive else q, dq,
        scale, T, HW, C, ck, *strides,
        TIME_DIM=time_dim, CKP=ckp, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=gate_grad_to_p,
        PREC=prec, ONE_C=one_c, BLOCK_C=block_c,
    )
    if not contrastive:  # two distinct empties: op outputs must not alias each other
        dvphi, dtw = x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc)
    return dx, dq + dk, dvphi, dtw


# ---------------------------------------------------------------------------------------------
# FLOP formulas of the registered ops (what the kernels compute; the projections run as torch
# GEMMs outside the ops and are counted by the FLOP counter on their own)
# ---------------------------------------------------------------------------------------------
def triton_forward_flops(B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool) -> int:
    """Algorithmic FLOPs of ``ap3d::apm_triton_forward`` (multiply-add = 2, valid pairs only)."""
    pairs = B * valid_pairs(T, time_dim)
    flops = 2 * pairs * HW * HW * (ck + C)  # S = q k^T, y = P V
    if contrastive:
        flops += 2 * pairs * HW * HW * ck + 2 * pairs * HW * ck  # phi(y) = P vphi, gate logit
    return flops


def triton_backward_flops(
    B: int, C: int, T: int, HW: int, ck: int, time_dim: int, contrastive: bool, detach_gate_inputs: bool = True
) -> int:
    """Algorithmic FLOPs of ``ap3d::apm_triton_backward``: dV, dP, dQ, dK (+ dvphi, and the gate's
    path into P when undetached), not counting recomputation, as FlashAttention's counts do."""
    pairs = B * valid_pairs(T, time_dim)
    flops = 2 * pairs * HW * HW * (2 * C + 2 * ck)
    if contrastive:
        flops += 2 * pairs * HW * HW * ck * (1 if detach_gate_inputs else 2)
    return flops


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------
if triton is not None:
    from torch.library import custom_op, register_fake

    @custom_op("ap3d::apm_triton_forward", mutates_args=())
    def apm_triton_forward(
        x: torch.Tensor,
        q: torch.Tensor,
        vphi: Optional[torch.Tensor],
        tw: Optional[torch.Tensor],
        scale: float,
        time_dim: int,
        contrastive: bool,
        detach_gate_inputs: bool,
        allow_tf32: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused APM core. x: [B, C, T, HW] contiguous; q: [B, T, HW, Ck] unit rows; vphi, tw:
        [B, T, HW, Ck] (x' W_phi^T and (x' W_theta^T) * w), accumulation dtype.

        Returns (out [B, C, N*T, HW], lse [B, T, N-1, HW], gate [B, T, N-1, HW] or empty,
        phi [B, T, N-1, HW, Ck] or empty); the last three are saved for the backward."""
        return _launch_forward(x, q, vphi, tw, scale, time_dim, contrastive, allow_tf32)

    @register_fake("ap3d::apm_triton_forward")
    def _apm_triton_forward_fake(x, q, vphi, tw, scale, time_dim, contrastive, detach_gate_inputs, allow_tf32):
        B, C, T, HW = x.shape
        ck = q.shape[-1]
        acc = _acc_dtype(x.dtype)
        nb = time_dim - 1
        out = x.new_empty((B, C, time_dim * T, HW))
        lse = x.new_empty((B, T, nb, HW), dtype=acc)
        if contrastive:
            return out, lse, x.new_empty((B, T, nb, HW), dtype=acc), x.new_empty((B, T, nb, HW, ck), dtype=acc)
        return out, lse, x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc)

    @custom_op("ap3d::apm_triton_backward", mutates_args=())
    def apm_triton_backward(
        dout: torch.Tensor,
        x: torch.Tensor,
        q: torch.Tensor,
        vphi: Optional[torch.Tensor],
        tw: Optional[torch.Tensor],
        out: torch.Tensor,
        lse: torch.Tensor,
        gate: torch.Tensor,
        phi: torch.Tensor,
        scale: float,
        time_dim: int,
        contrastive: bool,
        detach_gate_inputs: bool,
        allow_tf32: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients (dx, dq, dvphi, dtw) of apm_triton_forward's first output; dvphi and dtw are
        empty when contrastive=False."""
        return _launch_backward(dout, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive,
                                detach_gate_inputs, allow_tf32)

    @register_fake("ap3d::apm_triton_backward")
    def _apm_triton_backward_fake(dout, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive,
                                  detach_gate_inputs, allow_tf32):
        if contrastive:
            return torch.empty_like(x), torch.empty_like(q), torch.empty_like(vphi), torch.empty_like(tw)
        empty = x.new_empty((0,), dtype=_acc_dtype(x.dtype))
        return torch.empty_like(x), torch.empty_like(q), empty, empty.clone()

    def _setup_context(ctx, inputs, output):
        x, q, vphi, tw, scale, time_dim, contrastive, detach_gate_inputs, allow_tf32 = inputs
        out, lse, gate, phi = output
        ctx.save_for_backward(x, q, vphi, tw, out, lse, gate, phi)
        ctx.args = (scale, time_dim, contrastive, detach_gate_inputs, allow_tf32)
        ctx.mark_non_differentiable(lse, gate, phi)

    def _backward(ctx, dout, _dlse, _dgate, _dphi):
        x, q, vphi, tw, out, lse, gate, phi = ctx.saved_tensors
        scale, time_dim, contrastive, detach_gate_inputs, allow_tf32 = ctx.args
        dx, dq, dvphi, dtw = apm_triton_backward(
            dout, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive, detach_gate_inputs, allow_tf32
        )
        if not contrastive:
            dvphi = dtw = None
        return dx, dq, dvphi, dtw, None, None, None, None, None

    torch.library.register_autograd("ap3d::apm_triton_forward", _backward, setup_context=_setup_context)

    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.ap3d.apm_triton_forward)
    def _forward_flop_formula(x_shape, q_shape, vphi_shape, tw_shape, scale, time_dim, contrastive, *args,
                              out_shape=None, **kwargs) -> int:
        B, C, T, HW = x_shape
        return triton_forward_flops(B, C, T, HW, q_shape[-1], time_dim, contrastive)

    @register_flop_formula(torch.ops.ap3d.apm_triton_backward)
    def _backward_flop_formula(dout_shape, x_shape, q_shape, vphi_shape, tw_shape, out_shape_, lse_shape, gate_shape,
                               phi_shape, scale, time_dim, contrastive, detach_gate_inputs, *args,
                               out_shape=None, **kwargs) -> int:
        B, C, T, HW = x_shape
        return triton_backward_flops(B, C, T, HW, q_shape[-1], time_dim, contrastive, detach_gate_inputs)


# ---------------------------------------------------------------------------------------------
# Backend entry point (see ap3d_kernels.functional for the contract)
# ---------------------------------------------------------------------------------------------
def apm(
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
    """APM with the fused Triton kernels; arguments already validated by ``ap3d_kernels.apm``."""
    ok, reason = is_available()
    if not ok:
        raise RuntimeError(reason)
    B, C, T, H, W = x.shape
    HW = H * W
    acc = _acc_dtype(x.dtype)
    xv = x.reshape(B, C, T, HW).contiguous()
    flat = xv.view(B, C, T * HW)

    def project(weight, inputs):
        # 1x1x1 convs as W @ x on x's own layout (no transposed copy of x), then the small
        # [B, k, T, HW] result is laid out [B, T, HW, k] for the kernels.
        return torch.matmul(weight, inputs).view(B, -1, T, HW).permute(0, 2, 3, 1).to(acc)

    q = F.normalize(project(g_weight, flat), p=2, dim=-1).contiguous()
    if contrastive:
        ck = g_weight.shape[0]
        gate_in = flat.detach() if detach_gate_inputs else flat
        theta, vphi = project(torch.cat([theta_weight, phi_weight]), gate_in).split(ck, dim=-1)
        vphi = vphi.contiguous()
        tw = (theta * att_weight.to(acc)).contiguous()
    else:
        vphi = tw = None
    out = torch.ops.ap3d.apm_triton_forward(
        xv, q, vphi, tw, float(scale), int(time_dim), bool(contrastive), bool(detach_gate_inputs), _tf32_allowed()
    )[0]
    return out.view(B, C, time_dim * T, H, W)
