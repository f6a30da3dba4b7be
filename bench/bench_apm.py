#!/usr/bin/env python3
"""Benchmark of the Appearance-Preserving Module: reference vs SDPA vs the fused backends.

    python bench/bench_apm.py --device cpu      # B=8 clips of T=4 frames, float32 and bfloat16
    python bench/bench_apm.py --device cuda     # B=32, float32 and bfloat16

For each implementation (the pure-PyTorch reference, an SDPA formulation, every fused backend
that ``ap3d_kernels.available_backends(device)`` reports, and FlexAttention as a peer for the
attention core) it measures, at the paper's stage-2 (C=128, 32x16) and stage-3 (C=256, 16x8)
shapes with the full contrastive gate:

- forward time (under ``torch.no_grad``) and forward+backward time: the fastest of ``--repeats``
  runs after ``--warmup`` runs, with device synchronisation around each run (the minimum, because
  on a machine shared with other processes interference only ever adds time; the median is kept
  in the JSON as ``*_median_ms``);
- peak extra memory of one forward and of one forward+backward: the highest total of live
  allocations above what existed before the call (inputs excluded, output and saved tensors
  included). CUDA: ``torch.cuda.max_memory_allocated``. CPU: every allocation and free of the
  CPU allocator is recorded with ``torch.profiler`` (``profile_memory=True``) and the running
  sum is maximised; the fused kernels take their scratch from the same allocator, so it counts;
- ``flex-attention (core)``: ``torch.compile``'d ``flex_attention`` computing only
  ``softmax(s q_t q_t'^T) x_t'`` for every neighbour offset, on the normalised maps prepared
  outside the timed region (no projections, no gate, no interleaved output); forward and
  backward on CUDA, forward only on CPU (where flex_attention has no backward). It is the
  attention peer to beat;
- the fused forward's GFLOP/s (FLOPs from ``ap3d_kernels.flops``) against this machine's
  measured dense GEMM rate (a large ``torch.mm``), and on CUDA against the GPU's datasheet peak,
  with the achieved memory bandwidth (compulsory traffic: inputs read once, outputs written once).

Then a sweep of HW from 128 to 2048 (C=128, B=2) records forward+backward time and peak memory,
and fits the growth exponent of memory in HW (1 = linear, 2 = quadratic).
Results: printed, and written to bench/results/apm_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import describe_machine, machine_facts, sync, time_runs, write_results  # noqa: E402

from ap3d_kernels import apm, apm_backward_flops, apm_forward_flops, apm_reference, available_backends  # noqa: E402
from ap3d_kernels.reference import neighbour_offsets  # noqa: E402

STAGES = {"stage2": (128, 32, 16), "stage3": (256, 16, 8)}
SWEEP = [(16, 8), (16, 16), (32, 16), (32, 32), (64, 32)]  # HW = 128 .. 2048
# Datasheet dense peaks (TFLOP/s fp32, TFLOP/s bf16 tensor core, TB/s memory) by device name.
GPU_PEAKS = {
    "H200": (67.0, 989.0, 4.8),
    "H100": (67.0, 989.0, 3.35),
    "A100": (19.5, 312.0, 2.0),
    "L40S": (91.6, 362.0, 0.864),
    "A10": (31.2, 125.0, 0.6),
}


# ------------------------------------------------------------------------------------------------
# The SDPA formulation: APM written with F.scaled_dot_product_attention on the normalised maps.
# The value dim (C) differs from the key dim (C/16): on CPU that forces the math path.
# ------------------------------------------------------------------------------------------------
def apm_sdpa(x, g, theta, phi, att, *, scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=True):
    B, C, T, H, W = x.shape
    half = time_dim // 2
    values = x.reshape(B, C, T, H * W).permute(0, 2, 3, 1)  # [B, T, HW, C]
    q = F.normalize(values @ g.t(), dim=-1)
    pad = (0, 0, 0, 0, half, half)
    k_all, v_all = F.pad(q, pad), F.pad(values, pad)
    if contrastive:
        centre = values.detach() if detach_gate_inputs else values
        th = centre @ theta.t()
    frames = []
    for o in neighbour_offsets(time_dim):
        k = k_all[:, half + o : half + o + T]
        v = v_all[:, half + o : half + o + T]
        y = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, T, HW, C]
        if contrastive:
            y_in = y.detach() if detach_gate_inputs else y
            y = y * torch.sigmoid((th * (y_in @ phi.t())) @ att).unsqueeze(-1)
        frames.append(y)
    frames.insert(half, values)
    return torch.stack(frames, dim=2).permute(0, 4, 1, 2, 3).reshape(B, C, T * time_dim, H, W)


class FlexCore:
    """APM's attention core alone with FlexAttention (see the module docstring). ``prepare``
    builds the normalised maps once and returns the timed forward call and, on CUDA (on CPU
    flex_attention has no backward), the timed forward+backward call."""

    core_only = True

    def __init__(self, device):
        from torch.nn.attention.flex_attention import flex_attention

        self.flex = torch.compile(flex_attention)
        self.with_backward = device.type == "cuda"

    def prepare(self, inputs, *, scale=4.0, time_dim=3):
        x, g = inputs[:2]
        B, C, T, H, W = x.shape
        half = time_dim // 2
        values = x.reshape(B, C, T, H * W).permute(0, 2, 3, 1).contiguous()  # [B, T(heads), HW, C]
        q = F.normalize(values @ g.t(), dim=-1)
        if x.device.type == "cuda" and q.shape[-1] < 16:
            # The CUDA flex kernels need a head dim >= 16 (stage 2 has Ck = 8): zero lanes leave
            # every score unchanged (the fused kernels pad the same way).
            q = F.pad(q, (0, 16 - q.shape[-1]))
        q = q.contiguous()
        pad = (0, 0, 0, 0, half, half)
        k_all, v_all = F.pad(q, pad), F.pad(values, pad)
        pairs = [(k_all[:, half + o : half + o + T].contiguous(), v_all[:, half + o : half + o + T].contiguous())
                 for o in neighbour_offsets(time_dim)]

        def core():
            with torch.no_grad():
                return [self.flex(q, k, v, scale=scale) for k, v in pairs]

        if not self.with_backward:
            return core, None
        leaves = [t.detach().requires_grad_() for t in (q, *[t for pair in pairs for t in pair])]
        grad_out = torch.randn_like(values)

        def core_forward_backward():
            qg, kv = leaves[0], leaves[1:]
            outs = [self.flex(qg, kv[2 * i], kv[2 * i + 1], scale=scale) for i in range(len(pairs))]
            torch.autograd.backward(outs, [grad_out] * len(outs))
            for t in leaves:
                t.grad = None

        return core, core_forward_backward


def flex_core_flops(B, C, T, HW, ck, n_pairs):
    """FLOPs of the attention core alone per pass: forward S = QK^T and PV; backward recomputes S
    and forms dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q."""
    fwd = n_pairs * B * T * 2 * HW * HW * (ck + C)
    bwd = n_pairs * B * T * 2 * HW * HW * (2 * C + 3 * ck)
    return fwd, bwd


def sdpa_backend_name(device, dtype, C, HW):
    """Which SDPA backend PyTorch picks for APM's shapes (q/k head dim C/16, v head dim C)."""
    ck = C // 16
    q = torch.randn(1, 1, HW, ck, device=device, dtype=dtype)
    v = torch.randn(1, 1, HW, C, device=device, dtype=dtype)
    try:
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(q, q, v, None, 0.0, False, scale=4.0)
        return SDPBackend(choice).name.lower()
    except Exception as exc:  # private API: report rather than fail
        return f"unknown ({type(exc).__name__})"


# ------------------------------------------------------------------------------------------------
# Measurement helpers
# ------------------------------------------------------------------------------------------------
def peak_extra_bytes(fn, device):
    """Peak of live allocations during fn() above the level before it (bytes)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def gemm_rate(device, dtype, n):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t, _ = time_runs(lambda: torch.mm(a, b), device, warmup=2, repeats=7)
    return 2 * n**3 / t


def make_inputs(B, C, T, H, W, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ck = C // 16

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen) * std).to(device=device, dtype=dtype)

    return rnd(B, C, T, H, W), rnd(ck, C, std=C**-0.5), rnd(ck, C, std=C**-0.5), rnd(ck, C, std=C**-0.5), rnd(ck)


def implementations(device, flex=True):
    impls = {"reference": apm_reference, "sdpa": apm_sdpa}
    for name in available_backends(device):
        if name != "reference":
            impls[f"fused-{name}"] = lambda *a, _b=name, **k: apm(*a, backend=_b, **k)
    if flex:
        impls["flex-attention (core)"] = FlexCore(device)
    return impls


def measure(fn, inputs, device, warmup, repeats, with_memory=True):
    if getattr(fn, "core_only", False):
        core, core_fb = fn.prepare(inputs)
        core()  # compile
        fwd, fwd_med = time_runs(core, device, warmup, repeats)
        row = {"fwd_ms": fwd * 1e3, "fwd_median_ms": fwd_med * 1e3, "fwd_bwd_ms": None, "fwd_bwd_median_ms": None,
               "fwd_bwd_peak_mib": None}
        if core_fb is not None:
            core_fb()  # compile the backward
            fb, fb_med = time_runs(core_fb, device, warmup, repeats)
            row.update(fwd_bwd_ms=fb * 1e3, fwd_bwd_median_ms=fb_med * 1e3)
        if with_memory:
            row["fwd_peak_mib"] = peak_extra_bytes(core, device) / 2**20
            if core_fb is not None:
                row["fwd_bwd_peak_mib"] = peak_extra_bytes(core_fb, device) / 2**20
        return row
    x, *weights = inputs
    leaves = [t.detach().requires_grad_() for t in (x, *weights)]
    grad_out = None

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    def forward_backward():
        nonlocal grad_out
        out = fn(*leaves)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)
        for t in leaves:
            t.grad = None

    forward_backward()  # allocate grad_out and warm every code path
    fwd, fwd_med = time_runs(forward, device, warmup, repeats)
    fb, fb_med = time_runs(forward_backward, device, warmup, repeats)
    row = {"fwd_ms": fwd * 1e3, "fwd_median_ms": fwd_med * 1e3, "fwd_bwd_ms": fb * 1e3, "fwd_bwd_median_ms": fb_med * 1e3}
    if with_memory:
        row["fwd_peak_mib"] = peak_extra_bytes(forward, device) / 2**20
        row["fwd_bwd_peak_mib"] = peak_extra_bytes(forward_backward, device) / 2**20
    return row


def gpu_peaks(device):
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            return name, peaks
    return name, None


# ------------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)  # no prefix matching
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None, help="clips per batch (default: 8 on cpu, 32 on cuda)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of dtypes (default: float32,bfloat16)")
    p.add_argument("--no-flex", action="store_true", help="leave out the FlexAttention row (compiles once per shape)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sweep-batch", type=int, default=2)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    args.batch = args.batch or (8 if args.device.type == "cpu" else 32)
    args.dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    return args


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def run_facts(args, impls) -> dict:
    """Machine facts, the run's settings, the kernel ISA (CPU) or the card's peaks (CUDA), GEMM rates."""
    device = args.device
    meta = {
        **machine_facts(device),  # date, commit, CPU model + ISA flags, threads, versions, load average
        "batch": args.batch,
        "frames": args.frames,
        "time_dim": 3,
        "impls": list(impls),
        "timing": f"fastest of {args.repeats} runs after {args.warmup} warm-up runs",
    }
    if device.type == "cpu":
        try:
            from ap3d_kernels.backends import cpu as cpu_backend

            meta["cpu_kernel_isa"] = cpu_backend.isa()
        except RuntimeError as exc:
            meta["cpu_kernel_isa"] = f"unavailable: {exc}"
    else:
        meta["gpu"], peaks = gpu_peaks(device)
        meta["gpu_peaks"] = dict(zip(["fp32_tflops", "bf16_tflops", "tb_per_s"], peaks)) if peaks else None
    meta["gemm_size"] = 2048 if device.type == "cpu" else 8192
    # Measured again at the end; the higher rate is kept (interference only lowers it).
    meta["gemm_gflops"] = {dtype_name(dt): gemm_rate(device, dt, meta["gemm_size"]) / 1e9 for dt in args.dtypes}
    return meta


def try_measure(fn, inputs, device, warmup, repeats, failures: list, where: dict, label: str):
    """measure(), or None with the error printed and kept in ``failures``: one implementation
    that cannot run (a shape a kernel does not support, a compile error) must not lose the others."""
    try:
        return measure(fn, inputs, device, warmup, repeats)
    except Exception as exc:  # noqa: BLE001
        print(f"{label} FAILED: {type(exc).__name__}: {exc}", flush=True)
        failures.append({**where, "error": f"{type(exc).__name__}: {exc}"})
        return None


def stage_rows(args, impls, meta, failures, stem) -> list:
    """Every implementation at the paper's stage-2/3 shapes, in every dtype; results written after each row."""
    device, B, T = args.device, args.batch, args.frames
    rows = []
    for dtype in args.dtypes:
        dname = dtype_name(dtype)
        for stage, (C, H, W) in STAGES.items():
            inputs = make_inputs(B, C, T, H, W, device, dtype)
            fflops = apm_forward_flops(B, C, T, H * W, C // 16, 3, True)
            bflops = apm_backward_flops(B, C, T, H * W, C // 16, 3, True)
            sdpa_choice = sdpa_backend_name(device, dtype, C, H * W)
            for name, fn in impls.items():
                r = try_measure(fn, inputs, device, args.warmup, args.repeats, failures,
                                {"stage": stage, "dtype": dname, "impl": name}, f"{dname:8s} {stage} {name:26s}")
                if r is None:
                    continue
                r.update(stage=stage, dtype=dname, impl=name, C=C, H=H, W=W, B=B, T=T)
                add_rates(r, fn, meta, dtype, fflops, bflops, device)
                if name == "sdpa":
                    r["sdpa_backend"] = sdpa_choice
                rows.append(r)
                ref = next((x for x in rows if x["impl"] == "reference" and x["stage"] == stage and x["dtype"] == dname), None)
                r["fwd_speedup"] = ref["fwd_ms"] / r["fwd_ms"] if ref else None
                r["fwd_bwd_speedup"] = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"] if ref and r["fwd_bwd_ms"] else None
                print(f"{dname:8s} {stage} {name:26s} fwd {r['fwd_ms']:8.2f} ms ({r['fwd_gflops']:7.1f} GFLOP/s, "
                      f"{100 * r['fwd_frac_of_gemm']:5.1f}% GEMM)  fwd+bwd {_fmt(r['fwd_bwd_ms'], '8.2f')} ms "
                      f"(x{_fmt(r['fwd_bwd_speedup'], '.2f')} vs ref)  peak fwd {r['fwd_peak_mib']:8.1f} MiB, "
                      f"fwd+bwd {_fmt(r['fwd_bwd_peak_mib'], '8.1f')} MiB", flush=True)
                # Written after every row: a run stopped at its time limit keeps what it measured.
                write_results(stem, {"meta": meta, "rows": rows, "sweep": [], "failures": failures},
                              render_markdown(meta, rows, []))
    return rows


def hw_sweep(args, impls, meta, failures) -> list:
    """Forward+backward time and peak memory over HW = 128 .. 2048 (C=128), and memory's growth exponent."""
    dtype, T, sweep = args.dtypes[0], args.frames, []
    for H, W in SWEEP:
        inputs = make_inputs(args.sweep_batch, 128, T, H, W, args.device, dtype, seed=1)
        for name, fn in impls.items():
            if getattr(fn, "core_only", False):
                continue
            r = try_measure(fn, inputs, args.device, 1, 3, failures, {"sweep_hw": H * W, "impl": name},
                            f"sweep HW={H * W:5d} {name:14s}")
            if r is None:
                continue
            r.update(impl=name, HW=H * W, H=H, W=W, C=128, B=args.sweep_batch, T=T, dtype=dtype_name(dtype))
            sweep.append(r)
            print(f"sweep HW={H * W:5d} {name:14s} fwd+bwd {r['fwd_bwd_ms']:9.2f} ms  peak fwd "
                  f"{r['fwd_peak_mib']:8.1f} MiB  fwd+bwd {r['fwd_bwd_peak_mib']:8.1f} MiB", flush=True)
    meta["memory_growth_exponent"] = {}
    for name in dict.fromkeys(r["impl"] for r in sweep):
        pts = [(r["HW"], r["fwd_bwd_peak_mib"]) for r in sweep if r["impl"] == name]
        (h0, m0), (h1, m1) = pts[0], pts[-1]
        meta["memory_growth_exponent"][name] = math.log(m1 / m0) / math.log(h1 / h0)
    return sweep


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    impls = implementations(device, flex=not args.no_flex)
    meta = run_facts(args, impls)
    print(f"# APM benchmark on {device} ({meta.get('gpu', meta['cpu'])}), torch {torch.__version__}, "
          f"{meta['threads']} threads, load {meta['load_avg_start'][0]:.2f}")
    for dt, r in meta["gemm_gflops"].items():
        print(f"# {dt} GEMM (torch.mm {meta['gemm_size']}x{meta['gemm_size']}): {r:.1f} GFLOP/s")

    failures = []
    stem = os.path.join(args.out_dir, f"apm_{device.type}")
    rows = stage_rows(args, impls, meta, failures, stem)
    sweep = [] if args.no_sweep else hw_sweep(args, impls, meta, failures)

    for dt in args.dtypes:
        key = dtype_name(dt)
        meta["gemm_gflops"][key] = max(meta["gemm_gflops"][key], gemm_rate(device, dt, meta["gemm_size"]) / 1e9)
    for r in rows:
        r["fwd_frac_of_gemm"] = r["fwd_gflops"] / meta["gemm_gflops"][r["dtype"]]
    meta["load_avg_end"] = list(os.getloadavg())
    if device.type == "cuda" and "triton" in available_backends(device):
        from ap3d_kernels.backends.triton.configs import autotune_enabled
        from ap3d_kernels.backends.triton.kernels import tuned_configs

        meta["triton_autotune"] = autotune_enabled()
        meta["triton_configs_chosen"] = tuned_configs()
    md = render_markdown(meta, rows, sweep)
    paths = write_results(stem, {"meta": meta, "rows": rows, "sweep": sweep, "failures": failures}, md)
    print()
    print(md)
    print(f"written: {', '.join(paths)}")


def add_rates(r, fn, meta, dtype, fflops, bflops, device):
    """GFLOP/s, the share of the measured GEMM rate and, on CUDA, of the card's datasheet peaks."""
    B, C, T, H, W = (r[k] for k in ("B", "C", "T", "H", "W"))
    if getattr(fn, "core_only", False):  # the attention core alone, every offset incl. padding
        fflops, bflops = flex_core_flops(B, C, T, H * W, C // 16, 2)
    r["fwd_gflops"] = fflops / (r["fwd_ms"] * 1e-3) / 1e9
    r["fwd_bwd_gflops"] = (fflops + bflops) / (r["fwd_bwd_ms"] * 1e-3) / 1e9 if r["fwd_bwd_ms"] else None
    r["fwd_frac_of_gemm"] = r["fwd_gflops"] / meta["gemm_gflops"][dtype_name(dtype)]
    if device.type == "cuda":
        # Compulsory traffic of the whole APM forward: read x once, write the 3T-frame output.
        x_bytes = B * C * T * H * W * torch.tensor([], dtype=dtype).element_size()
        r["fwd_gb_per_s"] = (x_bytes * 4) / (r["fwd_ms"] * 1e-3) / 1e9
        if meta.get("gpu_peaks"):
            peak = meta["gpu_peaks"]["fp32_tflops" if dtype == torch.float32 else "bf16_tflops"]
            r["fwd_frac_of_peak_flops"] = r["fwd_gflops"] / 1e3 / peak
            r["fwd_bwd_frac_of_peak_flops"] = (r["fwd_bwd_gflops"] / 1e3 / peak) if r["fwd_bwd_gflops"] else None
            r["fwd_frac_of_peak_bw"] = r["fwd_gb_per_s"] / 1e3 / meta["gpu_peaks"]["tb_per_s"]


def _fmt(value, spec, suffix=""):
    """A number for the tables, or "n/a" (forward-only rows have no backward figures)."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def render_markdown(meta, rows, sweep):
    lines = [
        f"# APM benchmark: {meta['device']} ({meta.get('gpu', meta['cpu'])})",
        "",
        describe_machine(meta) + ".",
        "",
        f"B={meta['batch']} clips x T={meta['frames']} frames, time_dim 3, contrastive gate on; {meta['timing']}.",
        "",
        "GEMM rate (large torch.mm): "
        + ", ".join(f"{dt} {r:.1f} GFLOP/s" for dt, r in meta["gemm_gflops"].items())
        + (f". CPU kernel ISA: {meta['cpu_kernel_isa']}." if "cpu_kernel_isa" in meta else "."),
        "",
        "The flex-attention row times the attention core alone (no projections, gate or interleaved output; "
        "no backward on CPU) and counts only its FLOPs; every other row is the whole APM.",
        "",
        "| dtype | shape | impl | fwd ms | fwd+bwd ms | fwd+bwd speed-up | fwd GFLOP/s | fwd % of GEMM "
        "| peak fwd MiB | peak fwd+bwd MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = f"{r['stage']} C={r['C']} {r['H']}x{r['W']}"
        impl = r["impl"] + (f" ({r['sdpa_backend']})" if "sdpa_backend" in r else "")
        lines.append(
            f"| {r['dtype']} | {shape} | {impl} | {r['fwd_ms']:.1f} | {_fmt(r['fwd_bwd_ms'], '.1f')} | "
            f"{_fmt(r['fwd_bwd_speedup'], '.2f', 'x')} | {r['fwd_gflops']:.1f} | {100 * r['fwd_frac_of_gemm']:.0f}% | "
            f"{r['fwd_peak_mib']:.1f} | {_fmt(r['fwd_bwd_peak_mib'], '.1f')} |"
        )
    if any("fwd_gb_per_s" in r for r in rows):
        lines += ["", "Against the card's datasheet peaks (FLOP/s: fp32 for float32, tensor-core bf16/fp16 otherwise; "
                  "bytes: the forward's compulsory traffic, x read once and the 3T-frame output written once):", "",
                  "| dtype | shape | impl | fwd TFLOP/s | % of peak | fwd+bwd TFLOP/s | % of peak | fwd GB/s | % of peak BW |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        for r in rows:
            fb = r.get("fwd_bwd_gflops")
            lines.append(
                f"| {r['dtype']} | {r['stage']} | {r['impl']} | {r['fwd_gflops'] / 1e3:.2f} | "
                f"{pct(r.get('fwd_frac_of_peak_flops'))} | {_fmt(fb and fb / 1e3, '.2f')} | "
                f"{pct(r.get('fwd_bwd_frac_of_peak_flops'))} | {r['fwd_gb_per_s']:.0f} | {pct(r.get('fwd_frac_of_peak_bw'))} |"
            )
    if meta.get("triton_configs_chosen"):
        lines += ["", f"Triton configs chosen by autotuning (autotune {'on' if meta['triton_autotune'] else 'off'}):", ""]
        for kernel, chosen in meta["triton_configs_chosen"].items():
            for key, config in chosen.items():
                lines.append(f"- {kernel} {key}: {config}")
    if sweep:
        impls = list(dict.fromkeys(r["impl"] for r in sweep))
        lines += [
            "",
            f"HW sweep (C=128, B={sweep[0]['B']}, {sweep[0]['dtype']}): peak extra memory of forward+backward "
            "in MiB, and forward+backward time in ms",
            "",
            "| HW | " + " | ".join(f"{i} MiB" for i in impls) + " | " + " | ".join(f"{i} ms" for i in impls) + " |",
            "|---:|" + "---:|" * (2 * len(impls)),
        ]
        for hw in sorted({r["HW"] for r in sweep}):
            by = {r["impl"]: r for r in sweep if r["HW"] == hw}
            lines.append(
                f"| {hw} | " + " | ".join(f"{by[i]['fwd_bwd_peak_mib']:.1f}" for i in impls) + " | "
                + " | ".join(f"{by[i]['fwd_bwd_ms']:.1f}" for i in impls) + " |"
            )
        lines += ["", "Memory growth exponent in HW (log-log slope, 128 -> 2048; 1 = linear, 2 = quadratic): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in meta["memory_growth_exponent"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
