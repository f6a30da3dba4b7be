"""The Triton APM backend against the pure-PyTorch reference.

Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported, so these run
the very same kernels on CPU tensors through the interpreter (exact fp32, slow: shapes are
small). On a machine with CUDA they run compiled on CUDA tensors, plus the ``gpu`` cases at the
paper's shapes in fp16/bf16.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ap3d_kernels
from ap3d_kernels import apm

apm_triton = pytest.importorskip("ap3d_kernels.apm_triton")
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
    leaves = [x] + [w for w in weights if w is not None]
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), list(grads)


def weights_for(weights, contrastive):
    return weights if contrastive else [weights[0], None, None, None]


def assert_close_rel(actual, expected, rtol, name):
    err = (actual.float() - expected.float()).abs().max().item()
    ref = expected.float().abs().max().item()
    assert err <= rtol * max(ref, 1e-6), f"{name}: max abs error {err:.3e} exceeds {rtol:.0e} x max|ref| {ref:.3e}"


GRAD_NAMES = ["x", "g_weight", "theta_weight", "phi_weight", "att_weight"]


# --------------------------------------------------------------------------------------------
# Availability and dispatch
# --------------------------------------------------------------------------------------------
def test_importing_the_package_does_not_import_triton():
    code = "import sys, ap3d_kernels; ap3d_kernels.apm; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_without_triton_the_backend_reports_itself_unavailable():
    code = "\n".join([
        "import sys; sys.modules['triton'] = None  # makes 'import triton' raise ImportError",
        "import torch, ap3d_kernels",
        "from ap3d_kernels import apm_triton",
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

    assert resolve_backend("auto", torch.device("cuda")) is apm_triton.apm
    assert ap3d_kernels.available_backends("cuda")[0] == "triton"


def test_triton_backend_rejects_tensors_on_an_unsupported_device():
    x = torch.randn(1, 32, 2, 3, 3, device="meta")
    g = torch.randn(2, 32, device="meta")
    with pytest.raises(ValueError, match="meta"):
        apm(x, g, contrastive=False, backend="triton")


# --------------------------------------------------------------------------------------------
# Forward against the reference (fp32)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "B, C, T, H, W, ck, time_dim, contrastive",
    [
        (2, 32, 3, 5, 3, 2, 3, True),  # HW = 15: one masked key/query tile
        (1, 48, 4, 8, 4, 3, 5, True),  # HW = 32: two tiles; C = 48: a masked channel tail
        (1, 32, 2, 7, 5, 2, 3, False),  # HW = 35: three tiles with a tail, no gate
        (1, 32, 1, 5, 3, 2, 3, True),  # T = 1: every neighbour is zero padding
        (1, 32, 3, 4, 4, 5, 3, True),  # Ck = 5: key dim padded to 16 in the kernel
    ],
)
def test_forward_matches_reference(B, C, T, H, W, ck, time_dim, contrastive):
    x, weights = make_inputs(B, C, T, H, W, ck)
    weights = weights_for(weights, contrastive)
    out, _ = run("triton", x, weights, time_dim=time_dim, contrastive=contrastive)
    ref, _ = run("reference", x, weights, time_dim=time_dim, contrastive=contrastive)
    assert out.shape == (B, C, time_dim * T, H, W) and out.dtype == x.dtype
    assert_close_rel(out, ref, 1e-5, "out")


def test_centre_frames_are_the_untouched_input_and_padded_neighbours_are_zero():
    x, weights = make_inputs(1, 32, 2, 5, 3, 2)
    out, _ = run("triton", x, weights, time_dim=5)
    frames = out.view(1, 32, 2, 5, 5, 3)  # [B, C, T, slot, H, W]
    torch.testing.assert_close(frames[:, :, :, 2], x, rtol=0, atol=0)
    # t = 0 has no frames before it; t = 1 has none after it; T = 2 leaves one real neighbour each.
    for t, slots in ((0, (0, 1, 4)), (1, (0, 3, 4))):
        for s in slots:
            assert torch.count_nonzero(frames[:, :, t, s]) == 0, (t, s)


def test_non_contiguous_input_gives_the_same_result():
    x, weights = make_inputs(1, 32, 3, 3, 5, 2)
    strided = x.transpose(3, 4).contiguous().transpose(3, 4)  # same values, other strides
    assert not strided.is_contiguous()
    out, _ = run("triton", strided, weights)
    ref, _ = run("reference", x, weights)
    assert_close_rel(out, ref, 1e-5, "out")


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
# Backward against the reference (fp32): the release's detach semantics are what is compared
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "B, C, T, H, W, ck, time_dim, contrastive, detach",
    [
        (1, 32, 3, 5, 3, 2, 3, True, True),  # the release's defaults
        (1, 48, 4, 8, 4, 3, 5, True, False),  # gate gradient also flows into P and x; C tail
        (2, 32, 2, 5, 3, 2, 3, False, True),  # registration only
        (1, 32, 4, 5, 3, 2, 5, True, True),  # time_dim 5 with T = 4: partly padded windows
        (1, 32, 3, 7, 5, 3, 3, True, True),  # HW = 35: several query and key tiles
        (2, 32, 1, 5, 3, 2, 3, True, True),  # T = 1: only the centre frame carries gradient
    ],
)
def test_forward_and_backward_match_reference(B, C, T, H, W, ck, time_dim, contrastive, detach):
    x, weights = make_inputs(B, C, T, H, W, ck, seed=B + C + T)
    weights = weights_for(weights, contrastive)
    grad_out = torch.randn(B, C, time_dim * T, H, W, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    kwargs = dict(time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=detach)
    out, grads = run("triton", x, weights, grad_out, **kwargs)
    ref, ref_grads = run("reference", x, weights, grad_out, **kwargs)
    assert_close_rel(out, ref, 1e-5, "out")
    assert len(grads) == len(ref_grads)
    for name, d, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(d, r, 1e-4, f"grad of {name}")


def test_detached_gate_inputs_change_only_the_gradients():
    x, weights = make_inputs(1, 32, 2, 5, 3, 2, seed=11)
    grad_out = torch.randn(1, 32, 6, 5, 3, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out_d, grads_d = run("triton", x, weights, grad_out, detach_gate_inputs=True)
    out_u, grads_u = run("triton", x, weights, grad_out, detach_gate_inputs=False)
    torch.testing.assert_close(out_d, out_u, rtol=0, atol=0)
    assert (grads_d[0] - grads_u[0]).abs().max() > 1e-4  # x: the gate's path into x differs
    torch.testing.assert_close(grads_d[2], grads_u[2])  # theta's own gradient does not


def test_gradcheck_fp64_with_the_gate_gradient_flowing_everywhere():
    """gradcheck needs true derivatives, i.e. detach_gate_inputs=False (detaching is deliberate
    gradient surgery, checked against the reference above)."""
    x, weights = make_inputs(1, 32, 2, 5, 3, 2, dtype=torch.float64, seed=5)
    inputs = [t.requires_grad_() for t in [x, *weights]]

    def fn(x, g, theta, phi, att):
        return apm(x, g, theta, phi, att, backend="triton", detach_gate_inputs=False)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True, atol=1e-6, rtol=1e-4)


def test_gradcheck_fp64_without_the_gate_at_time_dim_5():
    x, weights = make_inputs(1, 32, 3, 5, 3, 2, dtype=torch.float64, seed=6)
    inputs = [x.requires_grad_(), weights[0].requires_grad_()]

    def fn(x, g):
        return apm(x, g, contrastive=False, time_dim=5, scale=2.5, backend="triton")

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Half precision (fp16 works in the interpreter; bf16 dots are wrong there, so GPU only)
# --------------------------------------------------------------------------------------------
def test_fp16_forward_and_backward_track_the_fp32_reference():
    x, weights = make_inputs(1, 32, 3, 5, 3, 2, seed=2)
    x16, w16 = x.half(), [w.half() for w in weights]
    grad_out = torch.randn(1, 32, 9, 5, 3, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    out, grads = run("triton", x16, w16, grad_out.half())
    ref, ref_grads = run("reference", x16.float(), [w.float() for w in w16], grad_out.half().float())
    assert out.dtype == torch.float16 and all(d.dtype == torch.float16 for d in grads)
    assert_close_rel(out, ref, 1e-2, "out")
    for name, d, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(d, r, 3e-2, f"grad of {name}")


# --------------------------------------------------------------------------------------------
# torch.library integration
# --------------------------------------------------------------------------------------------
def _op_inputs(B=1, C=32, T=2, HW=15, ck=2, dtype=torch.float32):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, C, T, HW, generator=gen)
    q = torch.nn.functional.normalize(torch.randn(B, T, HW, ck, generator=gen), dim=-1)
    vphi = torch.randn(B, T, HW, ck, generator=gen)
    tw = torch.randn(B, T, HW, ck, generator=gen)
    return [t.to(DEVICE, dtype).requires_grad_() for t in (x, q, vphi, tw)]


def test_opcheck_forward_op():
    x, q, vphi, tw = _op_inputs()
    torch.library.opcheck(torch.ops.ap3d.apm_triton_forward.default, (x, q, vphi, tw, 4.0, 3, True, True, False))
    torch.library.opcheck(
        torch.ops.ap3d.apm_triton_forward.default, (x, q, None, None, 4.0, 3, False, True, False)
    )


def test_opcheck_backward_op():
    x, q, vphi, tw = (t.detach() for t in _op_inputs())
    out, lse, gate, phi = torch.ops.ap3d.apm_triton_forward(x, q, vphi, tw, 4.0, 3, True, False, False)
    dout = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.ap3d.apm_triton_backward.default,
        (dout, x, q, vphi, tw, out, lse, gate, phi, 4.0, 3, True, False, False),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


def test_torch_compile_keeps_both_ops_in_the_graph_without_breaks():
    """fullgraph=True fails on any graph break; the captured forward and backward graphs must
    contain the ops (aot_eager-style capture: the compiler sees the graph, then runs it eagerly)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    x, weights = make_inputs(1, 32, 2, 5, 3, 2)

    def layer(x, g, theta, phi, att):  # what an AP3D block calls (backend resolved outside)
        return apm_triton.apm(x, g, theta, phi, att, scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=True)

    compiled = torch.compile(layer, backend=aot_autograd(fw_compiler=capture, bw_compiler=capture), fullgraph=True)
    grad_out = torch.randn(1, 32, 6, 5, 3, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    xs = x.clone().requires_grad_()
    out = compiled(xs, *weights)
    (dx,) = torch.autograd.grad(out, xs, grad_out)
    ref, ref_grads = run("reference", x, weights, grad_out)
    assert_close_rel(out.detach(), ref, 1e-5, "out")
    assert_close_rel(dx, ref_grads[0], 1e-4, "grad of x")
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert "ap3d.apm_triton_forward.default" in targets
    assert "ap3d.apm_triton_backward.default" in targets


def test_flop_counter_uses_the_registered_formulas():
    from torch.utils.flop_counter import FlopCounterMode

    B, C, T, H, W, ck = 1, 32, 3, 5, 3, 2
    x, weights = make_inputs(B, C, T, H, W, ck)
    x.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        apm(x, *weights, backend="triton").sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.ap3d.apm_triton_forward] == apm_triton.triton_forward_flops(B, C, T, H * W, ck, 3, True)
    assert counts[torch.ops.ap3d.apm_triton_backward] == apm_triton.triton_backward_flops(B, C, T, H * W, ck, 3, True)
    # T = 3, time_dim = 3: 4 real (centre, neighbour) pairs; HW = 15:
    assert apm_triton.triton_forward_flops(B, C, T, H * W, ck, 3, False) == 2 * 4 * 15 * 15 * (ck + C)


# --------------------------------------------------------------------------------------------
# GPU: the paper's shapes, fp16/bf16, TF32, determinism
# --------------------------------------------------------------------------------------------
PAPER_SHAPES = [
    pytest.param(2, 128, 4, 32, 16, 8, id="stage2-AP-P3D-C"),
    pytest.param(2, 256, 4, 16, 8, 16, id="stage3-AP-P3D-C"),
    pytest.param(1, 1024, 4, 16, 8, 64, id="stage3-AP-I3D-C1024"),
    pytest.param(1, 2048, 2, 9, 7, 128, id="C2048-odd-HW"),
]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype, rtol_out, rtol_grad", [(torch.float32, 1e-4, 1e-3), (torch.float16, 1e-2, 3e-2), (torch.bfloat16, 3e-2, 6e-2)])
@pytest.mark.parametrize("B, C, T, H, W, ck", PAPER_SHAPES)
def test_gpu_paper_shapes_match_the_fp32_reference(B, C, T, H, W, ck, dtype, rtol_out, rtol_grad):
    x, weights = make_inputs(B, C, T, H, W, ck, seed=C)
    xd, wd = x.to(dtype), [w.to(dtype) for w in weights]
    grad_out = torch.randn(B, C, 3 * T, H, W, device=DEVICE).to(dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out, grads = run("triton", xd, wd, grad_out)
        ref, ref_grads = run("reference", xd.float(), [w.float() for w in wd], grad_out.float())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert_close_rel(out, ref, rtol_out, "out")
    for name, d, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(d, r, rtol_grad, f"grad of {name}")


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
