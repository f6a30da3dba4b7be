"""The fused CPU backend of ``ap3d_kernels.apm`` (``csrc/``, ``ap3d_kernels/apm_cpu.py``).

Specification: for every input it computes what ``apm_reference`` computes, forward and
backward, with the same detach semantics; it is a well-formed PyTorch operator (opcheck,
torch.compile without graph breaks, FLOP counter); bad input fails in Python with a message
naming the argument; and the backward keeps no HW x HW tensor alive.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ap3d_kernels
from ap3d_kernels import apm, apm_backward_flops, apm_forward_flops, apm_reference
from ap3d_kernels import apm_cpu

pytestmark = pytest.mark.skipif(
    not apm_cpu.is_available()[0], reason=f"fused CPU kernels not built: {apm_cpu.is_available()[1]}"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (contrastive, detach_gate_inputs): no gate, the release's detached gate, the fully coupled gate.
GATE_MODES = [(False, True), (True, True), (True, False)]
GATE_IDS = ["no-gate", "gate-detached", "gate-attached"]


@pytest.fixture
def one_thread():
    """Tiny problems run single-threaded: a thread wake-up would cost more than the work, and
    under pytest-xdist the workers already occupy the cores. Paper-shape tests use all threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_inputs(B, C, T, H, W, *, dtype=torch.float32, contrastive=True, seed=0, requires_grad=True):
    """x and the four weights, scaled like trained layers (unit-ish features, 1/sqrt(C) weights)."""
    gen = torch.Generator().manual_seed(seed)
    ck = max(C // 16, 1)

    def rnd(*shape, std=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)
        return t.requires_grad_(requires_grad)

    x = rnd(B, C, T, H, W)
    g = rnd(ck, C, std=C**-0.5)
    if not contrastive:
        return x, g, None, None, None
    return x, g, rnd(ck, C, std=C**-0.5), rnd(ck, C, std=C**-0.5), rnd(ck, std=1.0)


def leaves(inputs):
    return [t for t in inputs if t is not None]


def run(inputs, backend, *, grad_out=None, **kw):
    """Output and gradients of every given input for ``sum(out * grad_out)``."""
    out = apm(*inputs, backend=backend, **kw) if backend != "reference" else apm_reference(*inputs, **kw)
    if grad_out is None:
        return out, None
    grads = torch.autograd.grad(out, leaves(inputs), grad_out)
    return out, grads


def assert_close_rel(actual, expected, rtol, what):
    """max |actual - expected| <= rtol * max |expected|: a tolerance relative to the tensor's scale,
    the right measure for sums whose individual terms may cancel."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - expected).abs().max().item()
    ref = expected.abs().max().item()
    assert err <= rtol * ref + 1e-30, f"{what}: max error {err:.3g} > {rtol:.1g} * max|expected| ({ref:.3g})"


# ----------------------------------------------------------------------------------------------
# Exactness: gradcheck in float64 on small odd shapes
# ----------------------------------------------------------------------------------------------
SMALL_ODD = [(5, 3), (7, 4)]


@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("hw", SMALL_ODD, ids=["5x3", "7x4"])
@pytest.mark.usefixtures("one_thread")
def test_gradcheck_float64(hw, T, contrastive, detach):
    """Analytical = numerical derivative for every input whose gradient is the true derivative.

    With detached gate inputs the gradients of x and g deliberately leave out the paths through
    the gate's inputs (the release's semantics), so only theta, phi and w are true derivatives
    there; x and g are checked against the reference's autograd in the next test.
    """
    x, g, th, ph, att = make_inputs(2, 32, T, *hw, dtype=torch.float64, contrastive=contrastive, seed=T)
    kw = dict(scale=4.0, time_dim=3, contrastive=contrastive, detach_gate_inputs=detach)
    if contrastive and detach:
        x, g = x.detach(), g.detach()
        fn, args = (lambda th_, ph_, att_: apm(x, g, th_, ph_, att_, backend="cpu", **kw)), (th, ph, att)
    else:
        fn, args = (lambda *a: apm(*a, backend="cpu", **kw)), tuple(leaves([x, g, th, ph, att]))
        if not contrastive:
            fn = lambda x_, g_: apm(x_, g_, None, None, None, backend="cpu", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=True, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("time_dim", [3, 5])
@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
@pytest.mark.parametrize("hw", SMALL_ODD, ids=["5x3", "7x4"])
@pytest.mark.usefixtures("one_thread")
def test_float64_gradients_equal_reference_autograd_including_detach(hw, contrastive, detach, time_dim):
    inputs = make_inputs(2, 32, 5, *hw, dtype=torch.float64, contrastive=contrastive, seed=21)
    kw = dict(scale=4.0, time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=detach)
    grad_out = torch.randn(2, 32, 5 * time_dim, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out, grads = run(inputs, "cpu", grad_out=grad_out, **kw)
    ref_out, ref_grads = run(inputs, "reference", grad_out=grad_out, **kw)
    assert_close_rel(out, ref_out, 1e-12, "output")
    for name, g, r in zip(["x", "g", "theta", "phi", "att"], grads, ref_grads):
        assert_close_rel(g, r, 1e-10, f"grad {name}")


@pytest.mark.usefixtures("one_thread")
def test_gradcheck_float64_full_jacobian_with_gate():
    # The complete numerical Jacobian (not fast mode's random projection) at one tiny shape.
    inputs = make_inputs(1, 32, 3, 2, 1, dtype=torch.float64, seed=7)
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    assert torch.autograd.gradcheck(lambda *a: apm(*a, backend="cpu", **kw), tuple(inputs), atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Against the reference at the paper's shapes
# ----------------------------------------------------------------------------------------------
PAPER_SHAPES = {"stage2": (128, 32, 16), "stage3": (256, 16, 8)}


@pytest.mark.parametrize("time_dim", [3, 5])
@pytest.mark.parametrize("stage", ["stage2", "stage3"])
@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
def test_float32_matches_reference_at_paper_shapes(stage, time_dim, contrastive, detach):
    C, H, W = PAPER_SHAPES[stage]
    inputs = make_inputs(2, C, 4, H, W, contrastive=contrastive, seed=1)
    kw = dict(scale=4.0, time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=detach)
    grad_out = torch.randn(2, C, time_dim * 4, H, W, generator=torch.Generator().manual_seed(2))
    out, grads = run(inputs, "cpu", grad_out=grad_out, **kw)
    ref_out, ref_grads = run(inputs, "reference", grad_out=grad_out, **kw)
    # float32 accumulation over HW = 128..512 keys and C channels: errors of ~1e-6 relative.
    assert_close_rel(out, ref_out, 1e-5, "output")
    for name, g, r in zip(["x", "g", "theta", "phi", "att"], grads, ref_grads):
        assert_close_rel(g, r, 1e-4, f"grad {name}")


@pytest.mark.parametrize(
    "dtype,rtol",
    # One rounding of the result (unit roundoff 2^-8 for bfloat16, 2^-11 for float16) plus the
    # rounding of the saved output the backward reads: a few units of the dtype's eps.
    [(torch.bfloat16, 4 * 2**-8), (torch.float16, 4 * 2**-11)],
    ids=["bfloat16", "float16"],
)
@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_half_precision_inputs_accumulate_in_float32(stage, dtype, rtol):
    C, H, W = PAPER_SHAPES[stage]
    low = make_inputs(2, C, 4, H, W, dtype=dtype, seed=3)
    # The oracle: the reference in float64 on exactly the same (rounded) values.
    high = [t.detach().double().requires_grad_() for t in low]
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    grad_out = torch.randn(2, C, 12, H, W, generator=torch.Generator().manual_seed(4)).to(dtype)
    out, grads = run(low, "cpu", grad_out=grad_out, **kw)
    ref_out, ref_grads = run(high, "reference", grad_out=grad_out.double(), **kw)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_close_rel(out, ref_out, rtol, "output")
    for name, g, r in zip(["x", "g", "theta", "phi", "att"], grads, ref_grads):
        assert_close_rel(g, r, rtol, f"grad {name}")
    # float32 accumulation makes the fused kernel more accurate than the reference run in `dtype`.
    low_ref_out = apm_reference(*[t.detach() for t in low], **kw)
    assert (out.double() - ref_out).abs().max() <= (low_ref_out.double() - ref_out).abs().max()


@pytest.mark.usefixtures("one_thread")
def test_large_scale_does_not_overflow_or_lose_rows():
    # With scale 60, exp(scale * (s - 1)) underflows in float32 for dissimilar keys: the kernel
    # subtracts the exact row maximum, so every row keeps its mass.
    inputs = make_inputs(2, 32, 3, 6, 5, seed=5)
    high = [t.detach().double() for t in inputs]
    kw = dict(scale=60.0, time_dim=3, contrastive=True, detach_gate_inputs=True)
    out = apm(*inputs, backend="cpu", **kw)
    assert_close_rel(out, apm_reference(*high, **kw), 1e-4, "output at scale 60")
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


# ----------------------------------------------------------------------------------------------
# Layout semantics
# ----------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_output_interleaves_reconstructions_around_an_exact_centre_copy():
    x, g, th, ph, att = make_inputs(2, 32, 3, 5, 3, requires_grad=False)
    out = apm(x, g, th, ph, att, backend="cpu", time_dim=3)
    assert out.shape == (2, 32, 9, 5, 3)
    assert torch.equal(out[:, :, 1::3], x)  # centre frames are the input, bit for bit
    # Zero-padded neighbours (before frame 0, after frame T-1) reconstruct exactly zero.
    assert torch.count_nonzero(out[:, :, 0]) == 0 and torch.count_nonzero(out[:, :, 8]) == 0


@pytest.mark.parametrize(
    "layout",
    ["channels_last_3d", "permuted", "strided_slice"],
)
@pytest.mark.usefixtures("one_thread")
def test_non_contiguous_and_channels_last_inputs_give_the_reference_result(layout):
    base, g, th, ph, att = make_inputs(2, 32, 4, 6, 5, requires_grad=False, seed=9)
    if layout == "channels_last_3d":
        x = base.to(memory_format=torch.channels_last_3d)
    elif layout == "permuted":
        x = base.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    else:
        wide = base.new_zeros(*base.shape[:-1], 2 * base.shape[-1])
        wide[..., ::2] = base
        x = wide[..., ::2]
    assert not x.is_contiguous()
    x.requires_grad_()
    ref_x = base.clone().requires_grad_()
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    out = apm(x, g, th, ph, att, backend="cpu", **kw)
    ref = apm_reference(ref_x, g, th, ph, att, **kw)
    assert_close_rel(out, ref, 1e-5, "output")
    grad_out = torch.randn_like(ref).to(memory_format=torch.channels_last_3d)  # non-contiguous grad too
    out.backward(grad_out)
    ref.backward(grad_out)
    assert_close_rel(x.grad, ref_x.grad, 1e-4, "grad x")


def test_auto_picks_the_fused_kernel_for_cpu_tensors(monkeypatch):
    assert ap3d_kernels.available_backends("cpu")[0] == "cpu"
    calls = []
    real = apm_cpu.apm_forward
    monkeypatch.setattr(apm_cpu, "apm_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, g, th, ph, att = make_inputs(1, 32, 2, 3, 3, requires_grad=False)
    apm(x, g, th, ph, att)
    assert calls == [1]


# ----------------------------------------------------------------------------------------------
# Memory: nothing of size HW x HW survives the forward
# ----------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_backward_saves_per_row_statistics_not_the_attention_matrix():
    B, C, T, H, W, N = 2, 32, 4, 16, 16, 3
    HW, ck = H * W, C // 16
    inputs = make_inputs(B, C, T, H, W, seed=11)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = apm(*inputs, backend="cpu", time_dim=N)
    weights = sum(t.numel() for t in inputs[1:])
    per_row = B * T * (N - 1) * HW * (2 + ck)  # lse, gate and phi(y) of every row
    assert sum(saved) <= inputs[0].numel() + out.numel() + weights + per_row
    # One pair's attention matrix alone would be larger than all per-row statistics.
    assert HW * HW > per_row / (B * T * (N - 1)) and max(saved) <= out.numel()


# ----------------------------------------------------------------------------------------------
# PyTorch operator contract
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
@pytest.mark.usefixtures("one_thread")
def test_opcheck_forward_operator(contrastive, detach):
    x, g, th, ph, att = make_inputs(2, 32, 3, 5, 3, contrastive=contrastive, seed=13)
    args = (x, g, th, ph, att, 4.0, 3, contrastive, detach)
    torch.library.opcheck(torch.ops.ap3d_cpu.apm_fwd.default, args)


@pytest.mark.usefixtures("one_thread")
def test_opcheck_backward_operator():
    x, g, th, ph, att = make_inputs(2, 32, 3, 5, 3, requires_grad=False, seed=14)
    out, lse, gate, phi_y = torch.ops.ap3d_cpu.apm_fwd(x, g, th, ph, att, 4.0, 3, True, False)
    args = (torch.randn_like(out), x, g, th, ph, att, out, lse, gate, phi_y, 4.0, 3, True, False)
    torch.library.opcheck(torch.ops.ap3d_cpu.apm_bwd.default, args)


@pytest.mark.usefixtures("one_thread")
def test_torch_compile_of_the_operator_is_one_graph_forward_and_backward():
    inputs = make_inputs(2, 32, 3, 5, 3, seed=15)
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: apm_cpu.apm(*a, **kw).square().sum(), fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    ref_grads = torch.autograd.grad(apm_reference(*inputs, **kw).square().sum(), inputs)
    for name, g, r in zip(["x", "g", "theta", "phi", "att"], grads, ref_grads):
        assert_close_rel(g, r, 1e-4, f"compiled grad {name}")


@pytest.mark.usefixtures("one_thread")
def test_torch_compile_of_an_ap3d_block_has_no_graph_break():
    """The whole path, nn.Module -> ap3d_kernels.apm dispatch -> operator, traces as one graph:
    backend resolution must not make untraceable calls (such as importlib) once loaded."""
    from ap3d_kernels.modules import APP3DC

    torch.manual_seed(0)
    block = APP3DC(32, 32, backend="cpu")
    torch.nn.init.normal_(block.temporal_conv3d.weight, std=0.05)  # zero-init would hide APM's gradient
    x = torch.randn(2, 32, 4, 6, 4, requires_grad=True)
    eager = block(x)
    (eager_grad,) = torch.autograd.grad(eager.square().sum(), x)
    torch._dynamo.reset()
    # fullgraph=True turns any graph break into an error; aot_eager traces the backward with the
    # fake kernels and the registered autograd formula without code generation (fast).
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert_close_rel(out, eager, 1e-6, "compiled output")
    assert_close_rel(grad, eager_grad, 1e-5, "compiled grad x")


@pytest.mark.parametrize("contrastive", [True, False], ids=["gate", "no-gate"])
@pytest.mark.usefixtures("one_thread")
def test_flop_counter_counts_forward_and_backward(contrastive):
    from torch.utils.flop_counter import FlopCounterMode

    B, C, T, H, W, N = 2, 64, 4, 6, 5, 5
    inputs = make_inputs(B, C, T, H, W, contrastive=contrastive)
    with FlopCounterMode(display=False) as counter:
        out = apm(*inputs, backend="cpu", time_dim=N, contrastive=contrastive)
        out.sum().backward()
    args = (B, C, T, H * W, C // 16, N, contrastive)
    assert counter.get_total_flops() == apm_forward_flops(*args) + apm_backward_flops(*args) > 0


# ----------------------------------------------------------------------------------------------
# Bad input: a Python error naming the argument, raised before any C++ runs
# ----------------------------------------------------------------------------------------------
def _good():
    return make_inputs(1, 32, 3, 4, 4, requires_grad=False)


BAD_INPUTS = {
    "x-4d": (lambda a: (a[0][0],) + a[1:], {}, ValueError, r"x must have shape \[B, C, T, H, W\]"),
    "x-integer": (lambda a: (a[0].long(),) + a[1:], {}, TypeError, "x must have a floating dtype"),
    "x-empty": (lambda a: (a[0][:, :, :0],) + a[1:], {}, ValueError, "no empty dimension"),
    "g-wrong-channels": (lambda a: (a[0], a[1][:, :16]) + a[2:], {}, ValueError, "g_weight must have shape"),
    "theta-missing": (lambda a: (a[0], a[1], None) + a[3:], {}, ValueError, "theta_weight is required"),
    "att-wrong-shape": (lambda a: a[:4] + (a[4][:1],), {}, ValueError, "att_weight must have shape"),
    "scale-nan": (lambda a: a, {"scale": float("nan")}, ValueError, "scale must be a finite positive"),
    "scale-inf": (lambda a: a, {"scale": float("inf")}, ValueError, "scale must be a finite positive"),
    "scale-negative": (lambda a: a, {"scale": -1.0}, ValueError, "scale must be a finite positive"),
    "time-dim-even": (lambda a: a, {"time_dim": 4}, ValueError, "time_dim must be an odd integer"),
    "x-on-meta": (lambda a: (a[0].to("meta"),) + tuple(w.to("meta") for w in a[1:]), {}, ValueError,
                  "cannot run on tensors on meta"),
    "weight-on-other-device": (lambda a: (a[0].to("meta"),) + a[1:], {}, ValueError, "all tensors must share"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_a_python_error_before_the_kernel(case, monkeypatch):
    transform, kwargs, exc, message = BAD_INPUTS[case]

    def kernel_must_not_run(*a, **k):
        raise AssertionError("the C++ kernel was reached with invalid arguments")

    monkeypatch.setattr(apm_cpu, "apm_forward", kernel_must_not_run)
    with pytest.raises(exc, match=message):
        apm(*transform(_good()), backend="cpu", **kwargs)


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
                         timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
