"""What is specific to the fused CPU backend (``csrc/``, ``ap3d_kernels/backends/cpu.py``).

The contract every backend meets (parity with the reference on odd shapes, dtypes, gradcheck,
opcheck, compile, FLOPs, double backward, bad input) is in ``test_apm_conformance.py``. Here:
the paper's shapes at full speed, the claim that float32 accumulation beats the reference run in
half precision, run-to-run and thread-count determinism, the instruction set report, and the
behaviour without the extension. The CMake build is ``test_cmake_build.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from apm_cases import GATE_IDS, GATE_MODES, GRAD_NAMES, assert_close_rel, make_inputs, run

from ap3d_kernels import apm_reference
from ap3d_kernels.backends import cpu as cpu_backend
from ap3d_kernels.backends import prologue

pytestmark = pytest.mark.skipif(
    not cpu_backend.is_available()[0], reason=f"fused CPU kernels not built: {cpu_backend.is_available()[1]}"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_SHAPES = {"stage2": (128, 32, 16), "stage3": (256, 16, 8)}


@pytest.mark.parametrize(
    "stage,time_dim,contrastive,detach",
    [("stage2", 3, True, True), ("stage3", 5, True, False), ("stage2", 5, False, True), ("stage3", 3, True, True)],
    ids=["stage2-N3-gate-detached", "stage3-N5-gate-attached", "stage2-N5-no-gate", "stage3-N3-gate-detached"],
)
def test_float32_matches_reference_at_paper_shapes(stage, time_dim, contrastive, detach):
    C, H, W = PAPER_SHAPES[stage]
    inputs = make_inputs(2, C, 4, H, W, contrastive=contrastive, seed=1)
    kw = dict(scale=4.0, time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=detach)
    grad_out = torch.randn(2, C, time_dim * 4, H, W, generator=torch.Generator().manual_seed(2))
    out, grads = run(inputs, "cpu", grad_out=grad_out, **kw)
    ref_out, ref_grads = run(inputs, "reference", grad_out=grad_out, **kw)
    # float32 accumulation over HW = 128..512 keys and C channels: errors of ~1e-6 relative.
    assert_close_rel(out, ref_out, 1e-5, "output")
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(g, r, 1e-4, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_inputs_are_more_accurate_than_the_reference_in_that_dtype(dtype):
    """float32 accumulation inside the kernel: closer to the float64 result on the same rounded
    inputs than the reference computed in the input dtype, at the stage-3 shape."""
    C, H, W = PAPER_SHAPES["stage3"]
    low = make_inputs(2, C, 4, H, W, dtype=dtype, seed=3, requires_grad=False)
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    exact = apm_reference(*[t.double() for t in low], **kw)
    fused = run(low, "cpu", **kw)[0]
    low_ref = apm_reference(*low, **kw)
    assert (fused.double() - exact).abs().max() < (low_ref.double() - exact).abs().max()


@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
def test_core_is_bitwise_deterministic_for_any_thread_count(contrastive, detach):
    """One writer per gradient and no per-thread partial sums: the same bits on 1 or 2 threads
    (the work is handed out dynamically, so which thread does what varies from run to run)."""
    x, g, th, ph, att = make_inputs(2, 64, 4, 9, 7, contrastive=contrastive, requires_grad=False, seed=8)
    q, vphi, tw = prologue(x, g, th, ph, att, contrastive=contrastive, detach_gate_inputs=detach)
    grad_out = torch.randn(2, 64, 12, 9, 7, generator=torch.Generator().manual_seed(9))
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            saved = cpu_backend.forward_op(x, q, vphi, tw, 4.0, 3, contrastive, detach)
            grads = cpu_backend.backward_op(grad_out, x, q, vphi, tw, *saved, 4.0, 3, contrastive, detach)
            results.append((*saved, *grads))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def _peak_and_allocations(fn):
    """Peak bytes of live CPU allocations during fn() (above the level before it), and the sizes
    of all allocations, from the profiler's memory events (the kernels allocate through ATen)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, {nbytes for _, nbytes in events if nbytes > 0}


def test_bf16_channels_last_3d_runs_without_hidden_full_size_copies():
    """bf16 channels_last_3d forward + backward: no float32 copy of x or of the output, no
    NCDHW copy, so its peak memory is well below the float32 NCDHW run's (it would exceed it
    with a float32 copy of x, as it did before the kernels read both layouts and dtypes in place)."""
    B, C, T, H, W = 4, 128, 4, 16, 16

    def fwd_bwd(dtype, fmt):
        x = torch.randn(B, C, T, H, W).to(dtype).contiguous(memory_format=fmt).requires_grad_()
        weights = [t.to(dtype).requires_grad_() for t in make_inputs(1, C, 1, 1, 1, requires_grad=False)[1:]]
        grad_out = torch.randn(B, C, 3 * T, H, W).to(dtype).contiguous(memory_format=fmt)
        run([x, *weights], "cpu")  # warm-up
        return _peak_and_allocations(lambda: run([x, *weights], "cpu", grad_out=grad_out))

    peak_bf16, sizes_bf16 = fwd_bwd(torch.bfloat16, torch.channels_last_3d)
    peak_fp32, _ = fwd_bwd(torch.float32, torch.contiguous_format)
    x_numel = B * C * T * H * W
    assert 4 * x_numel not in sizes_bf16 and 4 * 3 * x_numel not in sizes_bf16  # float32 copies of x / out
    assert peak_bf16 < 0.8 * peak_fp32, (peak_bf16, peak_fp32)


def test_isa_reports_the_vector_instruction_set_in_use():
    isa = cpu_backend.isa()
    assert isa in (
        "x86-64-v4 (AVX-512), bf16 GEMMs for bfloat16 inputs",
        "x86-64-v4 (AVX-512)",
        "x86-64-v3 (AVX2+FMA)",
        "x86-64 baseline (SSE2)",
        "portable (compiler auto-vectorisation for the build target)",
    )
    if isa.startswith("x86-64-v4") and os.path.exists("/proc/cpuinfo"):
        # bfloat16 inputs take the bf16-GEMM path exactly where the CPU has native bf16 dot products
        flags = open("/proc/cpuinfo").read()
        assert ("bf16 GEMMs" in isa) == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_direct_operator_calls_are_checked_in_cpp():
    x, g, th, ph, att = make_inputs(1, 32, 2, 5, 3, requires_grad=False)
    q, vphi, tw = prologue(x, g, th, ph, att, contrastive=True, detach_gate_inputs=True)
    with pytest.raises(RuntimeError, match=r"q must have shape \[B, T, H\*W, Ck\]"):
        cpu_backend.forward_op(x, q[:, :1], vphi, tw, 4.0, 3, True, True)
    with pytest.raises(RuntimeError, match="q must have the accumulation dtype"):
        cpu_backend.forward_op(x, q.double(), vphi, tw, 4.0, 3, True, True)
    with pytest.raises(RuntimeError, match="contrastive=True needs vphi"):
        cpu_backend.forward_op(x, q, None, tw, 4.0, 3, True, True)
    with pytest.raises(RuntimeError, match="time_dim must be odd"):
        cpu_backend.forward_op(x, q, vphi, tw, 4.0, 4, True, True)


def test_missing_extension_cpu_backend_errors_with_build_instructions_and_auto_falls_back():
    script = textwrap.dedent(
        """
        import warnings, torch
        from ap3d_kernels import apm, apm_reference
        x, g = torch.randn(1, 32, 2, 3, 3), torch.randn(2, 32)
        try:
            apm(x, g, contrastive=False, backend="cpu")
        except RuntimeError as e:
            assert "pip install --no-build-isolation -e ." in str(e) and "cmake" in str(e), e
        else:
            raise AssertionError("backend='cpu' did not raise without the extension")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out1 = apm(x, g, contrastive=False)
            out2 = apm(x, g, contrastive=False)
        fallback = [w for w in caught if "falls back" in str(w.message)]
        assert len(fallback) == 1, [str(w.message) for w in caught]
        assert torch.equal(out1, apm_reference(x, g, None, None, None, contrastive=False))
        print("OK")
        """
    )
    env = dict(os.environ, AP3D_KERNELS_LIBRARY=os.path.join(REPO, "no-such-dir", "libap3d_kernels.so"))
    res = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
