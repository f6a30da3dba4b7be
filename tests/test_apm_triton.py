"""What is specific to the Triton APM backend (``ap3d_kernels/backends/triton/``).

The contract every backend meets (parity with the reference on odd shapes, T = 1, 2, 5,
time_dim 3/5, every gate mode, dtypes, gradcheck, opcheck, compile, FLOPs, double backward, bad
input) is in ``test_apm_conformance.py``, which runs these kernels too. Here: triton stays an
optional, lazily imported dependency; the fixed-offset softmax's fallback for large scales; and
the GPU-only cases at the paper's shapes. Without a GPU, tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported, so the kernels run on CPU tensors through the
interpreter (exact fp32, slow: shapes are small). Cubin compilation for sm_80/sm_90 is
``test_apm_triton_compile.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from apm_cases import GRAD_NAMES, assert_close_rel

import ap3d_kernels
from ap3d_kernels import apm

apm_triton = pytest.importorskip("ap3d_kernels.backends.triton")
if not apm_triton.is_available()[0]:
    pytest.skip(apm_triton.is_available()[1], allow_module_level=True)

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(B, C, T, H, W, ck, *, dtype=torch.float32, seed=0, weight_scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=gen)
    weights = [torch.randn(ck, C, generator=gen) * weight_scale for _ in range(3)]
    weights.append(torch.randn(ck, generator=gen))
    return x.to(DEVICE, dtype), [w.to(DEVICE, dtype) for w in weights]


def run(backend, x, weights, grad_out=None, **kwargs):
    """Output and, if grad_out is given, gradients of <out, grad_out> w.r.t. x and the weights."""
    x = x.detach().clone().requires_grad_(grad_out is not None)
    weights = [None if w is None else w.detach().clone().requires_grad_(grad_out is not None) for w in weights]
    out = apm(x, *weights, backend=backend, **kwargs)
    if grad_out is None:
        return out.detach(), []
    grads = torch.autograd.grad(out, [x] + [w for w in weights if w is not None], grad_out)
    return out.detach(), list(grads)


# --------------------------------------------------------------------------------------------
# Availability and dispatch
# --------------------------------------------------------------------------------------------
def test_the_triton_backend_is_imported_only_on_demand_and_reads_triton_interpret_then():
    """Importing ap3d_kernels leaves the Triton backend unloaded (torch.utils.flop_counter, which
    registering the CPU backend's FLOP formulas needs, may import triton itself), so setting
    TRITON_INTERPRET=1 afterwards, before the backend is first used, still selects the interpreter."""
    code = "\n".join([
        "import os, sys, torch, ap3d_kernels",
        "assert 'ap3d_kernels.backends.triton' not in sys.modules",
        "os.environ['TRITON_INTERPRET'] = '1'",
        "assert 'triton' in ap3d_kernels.available_backends('cpu')",
        "from ap3d_kernels.backends import triton as backend",
        "assert backend.interpreting()",
    ])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_without_triton_the_backend_reports_itself_unavailable():
    code = "\n".join([
        "import sys; sys.modules['triton'] = None  # makes 'import triton' raise ImportError",
        "import torch, ap3d_kernels",
        "from ap3d_kernels.backends import triton as apm_triton",
        "ok, reason = apm_triton.is_available()",
        "assert not ok and 'pip install triton' in reason, reason",
        "assert 'triton' not in ap3d_kernels.available_backends('cpu')",
        "try:",
        "    ap3d_kernels.apm(torch.randn(1, 16, 2, 2, 2), torch.randn(1, 16), contrastive=False, backend='triton')",
        "except RuntimeError as exc:",
        "    assert 'triton' in str(exc), exc",
        "else:",
        "    raise AssertionError('backend=triton ran without triton')",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_backend_is_available_and_supports_this_device():
    ok, reason = apm_triton.is_available()
    assert ok, reason
    assert apm_triton.supports_device(DEVICE)
    assert "triton" in ap3d_kernels.available_backends(DEVICE)
    assert not apm_triton.supports_device(torch.device("meta"))
    assert apm_triton.supports_device(torch.device("cpu")) == apm_triton.interpreting()


@pytest.mark.gpu
@needs_gpu
def test_auto_picks_triton_for_cuda_tensors():
    from ap3d_kernels.functional import resolve_backend

    assert resolve_backend("auto", torch.device("cuda")).args == (apm_triton.forward_op,)
    assert ap3d_kernels.available_backends("cuda")[0] == "triton"


# --------------------------------------------------------------------------------------------
# The fixed-offset softmax (exp(S - scale)) and its exact-max fallback for large scales
# --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("error::RuntimeWarning")  # the interpreter warns on any overflow
def test_large_scale_with_only_dissimilar_keys_stays_finite():
    """scale = 100 with every similarity at -scale: exp(S - scale) = exp(-200) underflows in fp32,
    so the kernel must use the exact row max; softmax is then uniform (the neighbour's mean)."""
    C, H, W = 32, 5, 3
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, C, 2, H, W, generator=gen).abs()
    x[:, :, 1] = -x[:, :, 1]  # g(x) > 0 on frame 0 and < 0 on frame 1: q_0 . q_1 = -1 everywhere
    x = x.to(DEVICE)
    g = torch.full((1, C), 0.1, device=DEVICE)
    grad_out = torch.randn(1, C, 6, H, W, generator=gen).to(DEVICE)
    out, grads = run("triton", x, [g, None, None, None], grad_out, scale=100.0, contrastive=False)
    ref, ref_grads = run("reference", x, [g, None, None, None], grad_out, scale=100.0, contrastive=False)
    assert torch.isfinite(out).all() and all(torch.isfinite(d).all() for d in grads)
    neighbour_mean = x[:, :, 1].mean(dim=(-1, -2), keepdim=True).expand(1, C, H, W)
    torch.testing.assert_close(out.view(1, C, 2, 3, H, W)[:, :, 0, 2], neighbour_mean, rtol=1e-5, atol=1e-6)
    assert_close_rel(out, ref, 1e-5, "out")
    assert_close_rel(grads[0], ref_grads[0], 1e-4, "grad of x")
    # With Ck = 1, q = sign(g(x)) is locally constant: the exact gradient of g is 0.
    assert grads[1].abs().max() <= 1e-4 * ref_grads[0].abs().max()


# --------------------------------------------------------------------------------------------
# GPU: the paper's shapes, fp16/bf16, TF32, determinism
# --------------------------------------------------------------------------------------------
PAPER_SHAPES = [
    pytest.param(2, 128, 4, 32, 16, 8, id="stage2-AP-P3D-C"),
    pytest.param(2, 256, 4, 16, 8, 16, id="stage3-AP-P3D-C"),
    pytest.param(1, 1024, 4, 16, 8, 64, id="stage3-AP-I3D-C1024"),
    pytest.param(1, 2048, 2, 9, 7, 128, id="C2048-odd-HW"),
]


def rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype, rtol_out, rtol_grad", [(torch.float32, 1e-4, 1e-3), (torch.float16, 1e-2, 3e-2), (torch.bfloat16, 3e-2, 6e-2)])
@pytest.mark.parametrize("B, C, T, H, W, ck", PAPER_SHAPES)
def test_gpu_paper_shapes_match_the_fp64_reference(B, C, T, H, W, ck, dtype, rtol_out, rtol_grad):
    """Every result within rtol of the fp64 reference, or (FlashAttention's criterion for 16-bit
    kernels) at most twice the error of the reference itself computed in the same dtype. The
    second case is the gate weights' gradients in fp16/bf16 at large C: sums over every position
    of terms that nearly cancel, where the PyTorch reference in bf16 is off by over 100% at
    C = 2048 (the fused CPU kernel by about 40%)."""
    x, weights = make_inputs(B, C, T, H, W, ck, seed=C)
    xd, wd = x.to(dtype), [w.to(dtype) for w in weights]
    grad_out = torch.randn(B, C, 3 * T, H, W, device=DEVICE).to(dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out, grads = run("triton", xd, wd, grad_out)
        same_dtype, same_dtype_grads = run("reference", xd, wd, grad_out)
        exact, exact_grads = run("reference", xd.double(), [w.double() for w in wd], grad_out.double())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    for name, a, s, e, rtol in [("out", out, same_dtype, exact, rtol_out)] + [
        (f"grad of {n}", d, sd, ed, rtol_grad) for n, d, sd, ed in zip(GRAD_NAMES, grads, same_dtype_grads, exact_grads)
    ]:
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err, ref_err = rel_err(a, e), rel_err(s, e)
        assert err <= max(rtol, 2 * ref_err), f"{name}: error {err:.3g} > max({rtol:.1g}, 2 x reference's {ref_err:.3g})"


@pytest.mark.gpu
@needs_gpu
def test_gpu_tf32_when_allowed_stays_close():
    x, weights = make_inputs(2, 128, 4, 32, 16, 8)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out, _ = run("triton", x, weights)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    ref, _ = run("reference", x.double(), [w.double() for w in weights])
    assert_close_rel(out, ref, 5e-3, "out")


@pytest.mark.gpu
@needs_gpu
def test_gpu_backward_is_deterministic():
    x, weights = make_inputs(2, 256, 4, 16, 8, 16)
    grad_out = torch.randn(2, 256, 12, 16, 8, device=DEVICE)
    _, first = run("triton", x, weights, grad_out)
    _, second = run("triton", x, weights, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.gpu
@needs_gpu
def test_gpu_forward_and_backward_never_synchronise_the_device():
    """A host-device sync inside the op would stall the CPU until the GPU drains, so the launch
    overhead of every later op would stop overlapping with GPU work."""
    x, weights = make_inputs(2, 128, 4, 32, 16, 8)
    grad_out = torch.randn(2, 128, 12, 32, 16, device=DEVICE)
    run("triton", x, weights, grad_out)  # compiles, caches the pair table
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run("triton", x, weights, grad_out)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# --------------------------------------------------------------------------------------------
# Autotuning configs chosen by the environment
# --------------------------------------------------------------------------------------------
def test_autotuning_configs_follow_the_environment(monkeypatch):
    from ap3d_kernels.backends.triton.configs import GPU_CONFIG_CHOICES, selected_choices

    choices = GPU_CONFIG_CHOICES["bwd_kv"]
    monkeypatch.delenv("AP3D_TRITON_CONFIG", raising=False)
    monkeypatch.delenv("AP3D_TRITON_AUTOTUNE", raising=False)
    assert selected_choices(choices) == choices  # default: autotune over all of them
    monkeypatch.setenv("AP3D_TRITON_AUTOTUNE", "0")
    assert selected_choices(choices) == choices[:1]
    monkeypatch.setenv("AP3D_TRITON_CONFIG", "2")  # pinning one config wins
    assert selected_choices(choices) == [choices[2]]
    for bad in ("6", "-1", "fast"):
        monkeypatch.setenv("AP3D_TRITON_CONFIG", bad)
        with pytest.raises(ValueError, match=rf"AP3D_TRITON_CONFIG must be a config index 0\.\.5, got '{bad}'"):
            selected_choices(choices)
    monkeypatch.delenv("AP3D_TRITON_CONFIG")
    monkeypatch.setenv("AP3D_TRITON_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="AP3D_TRITON_AUTOTUNE must be 0 or 1"):
        selected_choices(choices)
    # scripts/gpu_check.sh compiles config i of every kernel in process i: the lists must be as long.
    assert len({len(c) for c in GPU_CONFIG_CHOICES.values()}) == 1


def test_tuned_configs_reports_every_autotuned_kernel():
    from ap3d_kernels.backends.triton.kernels import tuned_configs

    report = tuned_configs()
    assert set(report) == {"fwd", "bwd_dx", "bwd_dk", "bwd_dq"}
    assert all(isinstance(v, dict) for v in report.values())
