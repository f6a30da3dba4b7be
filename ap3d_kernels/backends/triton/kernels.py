"""The Triton kernels of the APM core (the launchers are in ``launchers.py``, the operators in ``ops.py``).

Forward: one program per (row block, real pair, channel block). It computes the similarities,
the softmax with the fixed offset ``exp(S - scale)`` (q and k are unit vectors, so S lies in
[-scale, scale]; for scales where ``exp(-2 scale)`` would lose precision in the dtype ``P`` is
cast to, a cheap extra pass over the keys finds the exact row maximum first), ``P @ x`` and
``P @ vphi`` tile by tile, then the gate, straight into the interleaved output. Because ``phi =
P @ vphi`` is accumulated beside ``P @ V``, the gate is known at the end of the key loop of every
program, so the value dimension C can be split across programs (C up to 2048 and beyond).

Backward (FlashAttention-2 style, deterministic, no atomics): a pre-pass computes ``R =
rowsum(dz * z)`` per pair row, and from it the gate's gradients and ``delta``; kernels
recompute ``P`` tile by tile from the saved log-sum-exp: one per key block for the key
gradient, ``P^T dphi`` (the gradient of ``vphi``) and, when C fits one channel block, dx as well
(FlashAttention-2's fused dK/dV), else a separate dx kernel split over channel chunks; and one
per query block for the query gradient.

Numerics: accumulation is fp32 (fp64 for fp64 inputs, so ``gradcheck`` is meaningful); for
fp16/bf16 inputs q and k enter ``tl.dot`` as fp16 (3 more mantissa bits than bf16). fp32
``tl.dot`` uses IEEE precision unless the caller allows TF32.

Interpreter mode: ``@triton.jit`` decides between compiled and interpreted kernels when the
kernel is defined, i.e. when this module is imported; with ``TRITON_INTERPRET=1`` set before
triton is imported, the same kernels run on CPU tensors (slowly, one fixed config, no
autotuning).

Autotuning: the configs and the environment knobs that pick among them are in ``configs.py``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .configs import GPU_CONFIG_CHOICES, INTERPRETED, triton_configs

__all__ = [
    "INTERPRETED",
    "apm_fwd_kernel",
    "apm_fwd_fill_kernel",
    "apm_bwd_rowdot_kernel",
    "apm_bwd_dx_kernel",
    "apm_bwd_dk_kernel",
    "apm_bwd_dq_kernel",
    "tuned_configs",
]


_FWD_CONFIGS = triton_configs(("BLOCK_M", "BLOCK_N"), GPU_CONFIG_CHOICES["fwd"], INTERPRETED)
_BWD_KV_CONFIGS = triton_configs(("BLOCK_M", "BLOCK_N"), GPU_CONFIG_CHOICES["bwd_kv"], INTERPRETED)
_BWD_Q_CONFIGS = triton_configs(("BLOCK_M", "BLOCK_N"), GPU_CONFIG_CHOICES["bwd_q"], INTERPRETED)
_KEY = ["HW", "C", "CK"]


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY)
@triton.jit
def apm_fwd_kernel(
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
def _centre_frame_rows(T, HW, BLOCK_M: tl.constexpr):
    """Axis 0 of a grid of (clip, centre frame, row block), row block fastest: (b, t, rows, mask)."""
    n_m = tl.cdiv(HW, BLOCK_M)
    pid_m = tl.program_id(0) % n_m
    bt = tl.program_id(0) // n_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    return (bt // T).to(tl.int64), bt % T, offs_m, offs_m < HW


@triton.jit
def apm_fwd_fill_kernel(
    X, OUT, LSE, GATE, PHI,
    T, HW, C, CK,
    stride_xb, stride_xc, stride_xt,
    stride_ob, stride_oc, stride_ot,
    TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """What the attention kernel leaves out, for one centre frame's BLOCK_M positions: the
    centre slot (x itself) and each zero-padded neighbour slot (t + offset outside the clip):
    zeros, with the reference's statistics (uniform softmax over zero keys: lse = log HW, gate
    0.5, phi 0). One launch instead of a copy, fills and a zeroing per padded slot."""
    HALF: tl.constexpr = TIME_DIM // 2
    NB: tl.constexpr = TIME_DIM - 1
    b, t, offs_m, mask_m = _centre_frame_rows(T, HW, BLOCK_M)
    ACC = LSE.dtype.element_ty
    x_base = X + b * stride_xb + t * stride_xt
    centre = OUT + b * stride_ob + (t * TIME_DIM + HALF) * stride_ot
    for start_c in range(0, C, BLOCK_C):
        offs_c = start_c + tl.arange(0, BLOCK_C)
        mask = mask_m[None, :] & (offs_c < C)[:, None]
        v = tl.load(x_base + offs_c[:, None] * stride_xc + offs_m[None, :], mask=mask, other=0.0)
        tl.store(centre + offs_c[:, None] * stride_oc + offs_m[None, :], v, mask=mask)
    for nb in tl.static_range(NB):
        slot = nb + (nb >= HALF)
        src = t + slot - HALF
        if (src < 0) | (src >= T):
            o = OUT + b * stride_ob + (t * TIME_DIM + slot) * stride_ot
            zeros = tl.zeros([BLOCK_C, BLOCK_M], dtype=OUT.dtype.element_ty)
            for start_c in range(0, C, BLOCK_C):
                offs_c = start_c + tl.arange(0, BLOCK_C)
                mask = mask_m[None, :] & (offs_c < C)[:, None]
                tl.store(o + offs_c[:, None] * stride_oc + offs_m[None, :], zeros, mask=mask)
            row = ((b * T + t) * NB + nb) * HW + offs_m  # index into [B, T, NB, HW]
            tl.store(LSE + row, tl.log(tl.zeros([BLOCK_M], dtype=ACC) + HW), mask=mask_m)
            if CONTRASTIVE:
                tl.store(GATE + row, tl.zeros([BLOCK_M], dtype=ACC) + 0.5, mask=mask_m)
                offs_d = tl.arange(0, CKP)
                tl.store(PHI + row[:, None] * CK + offs_d[None, :], tl.zeros([BLOCK_M, CKP], dtype=ACC),
                         mask=mask_m[:, None] & (offs_d < CK)[None, :])


@triton.jit
def apm_bwd_rowdot_kernel(
    DOUT, OUT, GATE, PHI, TW, DELTA, DPHI, DTW,
    T, HW, C, CK,
    stride_b, stride_c, stride_t,
    TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr, GATE_GRAD_TO_P: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The backward's pre-pass for one centre frame's BLOCK_M rows, over its N-1 neighbour slots:
    R = sum_c dz * z (FlashAttention's delta) and, with the gate, dlogit = (1 - a) R, dphi =
    dlogit * tw (per slot) and dtw = sum over slots of dlogit * phi; delta = R, plus dphi . phi
    when the gate's input is not detached. One launch instead of a kernel and six elementwise ops."""
    HALF: tl.constexpr = TIME_DIM // 2
    NB: tl.constexpr = TIME_DIM - 1
    b, t, offs_m, mask_m = _centre_frame_rows(T, HW, BLOCK_M)
    ACC = DELTA.dtype.element_ty
    offs_d = tl.arange(0, CKP)
    mask_md = mask_m[:, None] & (offs_d < CK)[None, :]
    if CONTRASTIVE:
        tw = tl.load(TW + ((b * T + t) * HW + offs_m[:, None]) * CK + offs_d[None, :], mask=mask_md, other=0.0)
        dtw = tl.zeros([BLOCK_M, CKP], dtype=ACC)
    for nb in tl.static_range(NB):
        slot = nb + (nb >= HALF)
        base = b * stride_b + (t * TIME_DIM + slot) * stride_t
        r = tl.zeros([BLOCK_M], dtype=ACC)
        for start_c in range(0, C, BLOCK_C):
            offs_c = start_c + tl.arange(0, BLOCK_C)
            mask = mask_m[None, :] & (offs_c < C)[:, None]
            ptrs = base + offs_c[:, None] * stride_c + offs_m[None, :]
            dz = tl.load(DOUT + ptrs, mask=mask, other=0.0).to(ACC)
            z = tl.load(OUT + ptrs, mask=mask, other=0.0).to(ACC)
            r += tl.sum(dz * z, 0)
        row = ((b * T + t) * NB + nb) * HW + offs_m  # index into [B, T, NB, HW]
        delta = r
        if CONTRASTIVE:
            dlogit = (1.0 - tl.load(GATE + row, mask=mask_m, other=0.0)) * r
            phi = tl.load(PHI + row[:, None] * CK + offs_d[None, :], mask=mask_md, other=0.0)
            dphi = dlogit[:, None] * tw
            tl.store(DPHI + row[:, None] * CK + offs_d[None, :], dphi, mask=mask_md)
            dtw += dlogit[:, None] * phi
            if GATE_GRAD_TO_P:
                delta = r + tl.sum(dphi * phi, 1)
        tl.store(DELTA + row, delta, mask=mask_m)
    if CONTRASTIVE:
        tl.store(DTW + ((b * T + t) * HW + offs_m[:, None]) * CK + offs_d[None, :], dtw, mask=mask_md)


@triton.autotune(configs=_BWD_KV_CONFIGS, key=_KEY)
@triton.jit
def apm_bwd_dx_kernel(
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
def apm_bwd_dk_kernel(
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
def apm_bwd_dq_kernel(
    DOUT, X, Q, VPHI, LSE, GATE, DELTA, DPHI, DQK,
    scale,
    T, HW, C, CK,
    stride_xb, stride_xc, stride_xt,
    stride_ob, stride_oc, stride_ot,
    TIME_DIM: tl.constexpr, CKP: tl.constexpr, CONTRASTIVE: tl.constexpr, GATE_GRAD_TO_P: tl.constexpr,
    PREC: tl.constexpr, ONE_C: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Centre frame t, BLOCK_M positions: dq = scale * sum over its neighbours and key blocks
    of dS k, with dS = P (dP - delta) recomputed tile by tile. DQK holds the key gradient of
    the same rows on entry (q and k are one tensor), and the sum on exit: no separate add."""
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
    dk = tl.load(DQK + qd_ptrs, mask=mask_md, other=0.0)
    tl.store(DQK + qd_ptrs, dk + dq * scale, mask=mask_md)


def tuned_configs() -> dict[str, dict[str, str]]:
    """The config each autotuned kernel chose so far, per autotuning key (for benchmark reports)."""
    kernels = {"fwd": apm_fwd_kernel, "bwd_dx": apm_bwd_dx_kernel, "bwd_dk": apm_bwd_dk_kernel,
               "bwd_dq": apm_bwd_dq_kernel}
    return {name: {str(key): str(config) for key, config in getattr(kernel, "cache", {}).items()}
            for name, kernel in kernels.items()}
