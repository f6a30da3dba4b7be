"""One conformance suite for every fused APM backend, with the pure-PyTorch reference as the oracle.

Specification (the contract of ``ap3d_kernels.backends``): each backend registers the core
operators ``<ns>::apm_fwd`` / ``apm_bwd`` with the shared schemas; through ``ap3d_kernels.apm``
it computes what ``apm_reference`` computes, forward and backward, with the same detach
semantics, on any shape, clip length, window and dtype; it saves the same O(HW) statistics
(with the same values for zero-padded pairs) and never an HW x HW tensor; it is a well-formed
PyTorch operator (opcheck, ``torch.compile(fullgraph=True)``, FLOP counter); it refuses double
backward with a clear message; and bad input fails before any kernel runs.

Every test runs once per backend: ``cpu`` (the C++ kernels) and ``triton`` (on CUDA tensors when
there is a GPU, else through the Triton interpreter on CPU tensors, where it is slow: shapes
here stay small).
"""
from __future__ import annotations

import math

import pytest
import torch
from apm_cases import (
    GATE_IDS,
    GATE_MODES,
    GRAD_NAMES,
    assert_close_rel,
    backend_device,
    backend_module,
    fused_backends,
    leaves,
    make_inputs,
    run,
)

import ap3d_kernels
from ap3d_kernels import apm, apm_backward_flops, apm_forward_flops, apm_reference
from ap3d_kernels.backends import BACKWARD_SCHEMA, FORWARD_SCHEMA, prologue
from ap3d_kernels.flops import core_backward_flops, core_forward_flops


@pytest.fixture(params=fused_backends())
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems run single-threaded: a thread wake-up would cost more than the work, and
    under pytest-xdist the workers already occupy the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def inputs_for(backend, *shape, **kw):
    return make_inputs(*shape, device=backend_device(backend), **kw)


def grad_out_for(out, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)


# ----------------------------------------------------------------------------------------------
# The operator contract
# ----------------------------------------------------------------------------------------------
def test_operators_have_the_contract_schemas(backend):
    mod = backend_module(backend)
    ns = mod.forward_op.default.namespace
    assert str(mod.forward_op.default._schema) == f"{ns}::apm_fwd{FORWARD_SCHEMA}"
    assert str(mod.backward_op.default._schema) == f"{ns}::apm_bwd{BACKWARD_SCHEMA}"


@pytest.mark.parametrize("T,time_dim", [(3, 3), (2, 5)])
def test_saved_statistics_are_the_contract_values_including_padded_pairs(backend, T, time_dim):
    """lse, gate and phi of every (centre, neighbour) row; a zero-padded neighbour's rows hold
    the reference's values for them: lse = log(HW), gate = 0.5, phi = 0."""
    x, g, th, ph, att = inputs_for(backend, 1, 32, T, 5, 3, dtype=torch.float64, requires_grad=False)
    q, vphi, tw = prologue(x, g, th, ph, att, contrastive=True, detach_gate_inputs=True)
    out, lse, gate, phi = backend_module(backend).forward_op(x, q, vphi, tw, 4.0, time_dim, True, True)
    HW, half = 15, time_dim // 2
    offsets = [o for o in range(-half, half + 1) if o != 0]
    for t in range(T):
        for j, o in enumerate(offsets):
            if 0 <= t + o < T:
                scores = 4.0 * q[0, t] @ q[0, t + o].T
                expect_lse = torch.logsumexp(scores, dim=-1)
                expect_phi = torch.softmax(scores, dim=-1) @ vphi[0, t + o]
            else:
                expect_lse = torch.full((HW,), math.log(HW), dtype=torch.float64, device=q.device)
                expect_phi = torch.zeros(HW, q.shape[-1], dtype=torch.float64, device=q.device)
            expect_gate = torch.sigmoid((tw[0, t] * expect_phi).sum(-1))
            torch.testing.assert_close(lse[0, t, j].cpu(), expect_lse.cpu(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(phi[0, t, j].cpu(), expect_phi.cpu(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(gate[0, t, j].cpu(), expect_gate.cpu(), rtol=1e-12, atol=1e-12)


def test_output_interleaves_reconstructions_around_an_exact_centre_copy(backend):
    x, g, th, ph, att = inputs_for(backend, 2, 32, 3, 5, 3, requires_grad=False)
    out = apm(x, g, th, ph, att, backend=backend, time_dim=5)
    frames = out.view(2, 32, 3, 5, 5, 3)  # [B, C, T, slot, H, W]
    assert torch.equal(frames[:, :, :, 2], x)  # the centre is the input, bit for bit
    for t, slots in ((0, (0, 1)), (1, (0,)), (1, (4,)), (2, (3, 4))):  # neighbours outside the clip
        for s in slots:
            assert torch.count_nonzero(frames[:, :, t, s]) == 0, (t, s)


# ----------------------------------------------------------------------------------------------
# Against the reference: odd shapes, T = 1, 2, 5, time_dim 3 / 5, every gate mode (float64)
# ----------------------------------------------------------------------------------------------
CASES = [
    # (B, C, T, H, W, ck, time_dim, contrastive, detach)
    (2, 32, 3, 5, 3, 2, 3, True, True),  # the release's defaults, HW = 15: masked tiles
    (1, 48, 2, 7, 5, 3, 5, True, False),  # window wider than the clip; C tail; HW = 35: several tiles
    (2, 32, 5, 5, 3, 2, 3, False, True),  # registration only, T = 5
    (1, 32, 1, 5, 3, 2, 3, True, True),  # T = 1: every neighbour is zero padding
    (1, 32, 5, 7, 5, 5, 5, True, True),  # T = 5, time_dim 5; Ck = 5 (padded to the dot minimum)
    (1, 32, 2, 5, 3, 2, 3, True, False),  # T = 2, the fully coupled gate
]


@pytest.mark.parametrize("B,C,T,H,W,ck,time_dim,contrastive,detach", CASES)
def test_forward_and_gradients_equal_the_reference_in_float64(backend, B, C, T, H, W, ck, time_dim, contrastive,
                                                               detach):
    inputs = inputs_for(backend, B, C, T, H, W, ck=ck, dtype=torch.float64, contrastive=contrastive, seed=T + C)
    kw = dict(scale=4.0, time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=detach)
    grad_out = grad_out_for(apm_reference(*inputs, **kw))
    out, grads = run(inputs, backend, grad_out=grad_out, **kw)
    ref_out, ref_grads = run(inputs, "reference", grad_out=grad_out, **kw)
    assert out.shape == (B, C, time_dim * T, H, W) and out.dtype == torch.float64
    assert_close_rel(out, ref_out, 1e-12, "output")
    assert len(grads) == len(ref_grads)
    for name, d, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(d, r, 1e-10, f"grad {name}")


def test_detached_gate_inputs_change_only_the_gradients(backend):
    inputs = inputs_for(backend, 1, 32, 2, 5, 3, seed=11)
    grad_out = grad_out_for(apm_reference(*inputs))
    out_d, grads_d = run(inputs, backend, grad_out=grad_out, detach_gate_inputs=True)
    out_u, grads_u = run(inputs, backend, grad_out=grad_out, detach_gate_inputs=False)
    torch.testing.assert_close(out_d, out_u)  # equal up to the rounding of the projections' GEMMs
    assert (grads_d[0] - grads_u[0]).abs().max() > 1e-4  # x: the gate's path into x differs
    torch.testing.assert_close(grads_d[2], grads_u[2])  # theta's own gradient does not


# ----------------------------------------------------------------------------------------------
# Dtypes: float32, and 16-bit inputs against the float64 reference on the same rounded values
# ----------------------------------------------------------------------------------------------
# One rounding of each 16-bit result plus the projections, run in the input dtype as a 1x1x1
# conv would be: a few units of the dtype's epsilon (2^-8 for bfloat16, 2^-11 for float16).
DTYPES = {
    "float32": (torch.float32, 1e-5, 1e-4),
    "float16": (torch.float16, 8 * 2**-11, 8 * 2**-11),
    "bfloat16": (torch.bfloat16, 8 * 2**-8, 8 * 2**-8),
}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_float32_and_16_bit_inputs_track_the_float64_reference(backend, dtype_name):
    dtype, rtol_out, rtol_grad = DTYPES[dtype_name]
    if backend == "triton" and dtype == torch.bfloat16 and backend_module("triton").interpreting():
        pytest.skip("bf16 tl.dot is wrong in the Triton interpreter (kernel-notes.md); the gpu tests cover it")
    low = inputs_for(backend, 2, 32, 3, 7, 5, dtype=dtype, seed=3)
    high = [t.detach().double().requires_grad_() for t in low]
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    grad_out = grad_out_for(apm_reference(*high, **kw), seed=4).to(dtype)
    out, grads = run(low, backend, grad_out=grad_out, **kw)
    ref_out, ref_grads = run(high, "reference", grad_out=grad_out.double(), **kw)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_close_rel(out, ref_out, rtol_out, "output")
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(g, r, rtol_grad, f"grad {name}")


@pytest.mark.parametrize("layout", ["channels_last_3d", "permuted", "strided_slice"])
def test_non_contiguous_and_channels_last_inputs_give_the_reference_result(backend, layout):
    base, g, th, ph, att = inputs_for(backend, 2, 32, 3, 5, 3, requires_grad=False, seed=9)
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
    out = apm(x, g, th, ph, att, backend=backend, **kw)
    ref = apm_reference(ref_x, g, th, ph, att, **kw)
    assert_close_rel(out, ref, 1e-5, "output")
    grad_out = torch.randn_like(ref).to(memory_format=torch.channels_last_3d)  # a non-contiguous grad too
    out.backward(grad_out)
    ref.backward(grad_out)
    assert_close_rel(x.grad, ref_x.grad, 1e-4, "grad x")


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_channels_last_3d_inputs_keep_their_layout_and_match_the_reference(backend, dtype_name):
    """channels_last_3d in, channels_last_3d out (and grad_x), in every dtype, on an odd shape."""
    dtype, rtol_out, rtol_grad = DTYPES[dtype_name]
    if backend == "triton" and dtype == torch.bfloat16 and backend_module("triton").interpreting():
        pytest.skip("bf16 tl.dot is wrong in the Triton interpreter (kernel-notes.md); the gpu tests cover it")
    base = inputs_for(backend, 2, 32, 3, 5, 3, dtype=dtype, seed=12, requires_grad=False)
    x = base[0].to(memory_format=torch.channels_last_3d).requires_grad_()
    weights = [t.requires_grad_() for t in base[1:]]
    high = [t.detach().double().contiguous().requires_grad_() for t in (x, *weights)]
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    ref_out = apm_reference(*high, **kw)
    grad_out = grad_out_for(ref_out, seed=13).to(dtype).to(memory_format=torch.channels_last_3d)
    out, grads = run([x, *weights], backend, grad_out=grad_out, **kw)
    ref_grads = torch.autograd.grad(ref_out, high, grad_out.double())
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()
    assert_close_rel(out, ref_out, rtol_out, "output")
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(g, r, rtol_grad, f"grad {name}")
    # The operator's own grad_x is channels_last_3d too, so autograd adds it to the prologue's
    # gradient of x (which follows x's layout) without a conversion.
    mod = backend_module(backend)
    q, vphi, tw = prologue(x.detach(), *[w.detach() for w in weights], contrastive=True, detach_gate_inputs=False)
    saved = mod.forward_op(x.detach(), q, vphi, tw, 4.0, 3, True, False)
    grad_x = mod.backward_op(grad_out, x.detach(), q, vphi, tw, *saved, 4.0, 3, True, False)[0]
    assert grad_x.is_contiguous(memory_format=torch.channels_last_3d) and not grad_x.is_contiguous()


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the Triton interpreter warns on any overflow
def test_large_scale_keeps_every_row_finite_and_exact(backend):
    # exp(scale * (s - 1)) underflows in float32 for dissimilar keys at scale 60: each kernel
    # must subtract the row's true maximum (CPU: always; Triton: its ROW_MAX pass).
    inputs = inputs_for(backend, 1, 32, 3, 5, 3, seed=5)
    high = [t.detach().double() for t in inputs]
    kw = dict(scale=60.0, time_dim=3, contrastive=True, detach_gate_inputs=True)
    out = apm(*inputs, backend=backend, **kw)
    assert_close_rel(out, apm_reference(*high, **kw), 1e-4, "output at scale 60")
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


# ----------------------------------------------------------------------------------------------
# Exactness of the gradients: gradcheck in float64
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("contrastive,time_dim", [(True, 3), (False, 5)], ids=["gate", "no-gate-N5"])
def test_gradcheck_float64(backend, contrastive, time_dim):
    """gradcheck needs true derivatives: the gate attached (detaching is deliberate gradient
    surgery, compared with the reference's autograd above)."""
    inputs = leaves(inputs_for(backend, 1, 32, 3, 5, 3, dtype=torch.float64, contrastive=contrastive, seed=6))
    kw = dict(scale=2.5, time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=False)

    def fn(*args):
        full = list(args) + [None] * (5 - len(args))
        return apm(*full, backend=backend, **kw)

    assert torch.autograd.gradcheck(fn, tuple(inputs), fast_mode=True, atol=1e-7, rtol=1e-5)


def test_gradcheck_float64_of_the_gate_weights_with_detached_inputs(backend):
    # With the release's detach, theta, phi and w still get true derivatives.
    x, g, th, ph, att = inputs_for(backend, 1, 32, 2, 5, 3, dtype=torch.float64, seed=7)
    x, g = x.detach(), g.detach()
    fn = lambda th_, ph_, att_: apm(x, g, th_, ph_, att_, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (th, ph, att), fast_mode=True, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Memory: per-row statistics are saved, never the attention matrix
# ----------------------------------------------------------------------------------------------
def test_autograd_saves_per_row_statistics_not_the_attention_matrix(backend):
    B, C, T, H, W, N = 1, 32, 3, 8, 8, 3
    HW, ck = H * W, C // 16
    inputs = inputs_for(backend, B, C, T, H, W, seed=11)
    storages = {}  # what autograd keeps alive, each memory block counted once (x is saved by several ops)

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = apm(*inputs, backend=backend, time_dim=N)
    # x, out, the weights, the prologue's [B, T, HW, k] maps (q, vphi, tw and the projections)
    # and the per-row lse / gate / phi; one pair's attention matrix alone (HW^2) is larger than
    # a frame's per-row statistics.
    per_row = B * T * (N - 1) * HW * (2 + ck)
    maps = B * T * HW * ck * 8
    weights = sum(t.numel() for t in inputs[1:])
    assert sum(storages.values()) <= inputs[0].numel() + out.numel() + weights + per_row + maps
    assert max(storages.values()) <= out.numel()
    assert HW * HW > per_row // (B * T)


# ----------------------------------------------------------------------------------------------
# PyTorch operator contract: opcheck, compile, FLOP counter, double backward
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
def test_opcheck_forward_operator(backend, contrastive, detach):
    x, g, th, ph, att = inputs_for(backend, 1, 32, 2, 5, 3, contrastive=contrastive, seed=13)
    q, vphi, tw = (None if t is None else t.detach().requires_grad_()
                   for t in prologue(x, g, th, ph, att, contrastive=contrastive, detach_gate_inputs=detach))
    op = backend_module(backend).forward_op.default
    torch.library.opcheck(op, (x, q, vphi, tw, 4.0, 3, contrastive, detach))


def test_opcheck_backward_operator(backend):
    x, g, th, ph, att = inputs_for(backend, 1, 32, 2, 5, 3, requires_grad=False, seed=14)
    mod = backend_module(backend)
    q, vphi, tw = prologue(x, g, th, ph, att, contrastive=True, detach_gate_inputs=False)
    out, lse, gate, phi = mod.forward_op(x, q, vphi, tw, 4.0, 3, True, False)
    args = (torch.randn_like(out), x, q, vphi, tw, out, lse, gate, phi, 4.0, 3, True, False)
    torch.library.opcheck(mod.backward_op.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph_keeps_both_operators_in_the_graphs(backend):
    """fullgraph=True fails on any graph break; the captured forward and backward graphs hold the
    backend's two operators (the compiler sees the graph, then runs it eagerly)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    inputs = inputs_for(backend, 1, 32, 2, 5, 3, seed=15)
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: apm(*a, backend=backend, **kw),
                             backend=aot_autograd(fw_compiler=capture, bw_compiler=capture), fullgraph=True)
    grad_out = grad_out_for(apm_reference(*inputs, **kw))
    out, grads = run(inputs, "reference", grad_out=grad_out, **kw)
    compiled_out = compiled(*inputs)
    compiled_grads = torch.autograd.grad(compiled_out, inputs, grad_out)
    assert_close_rel(compiled_out, out, 1e-5, "compiled output")
    for name, d, r in zip(GRAD_NAMES, compiled_grads, grads):
        assert_close_rel(d, r, 1e-4, f"compiled grad {name}")
    ns = backend_module(backend).forward_op.default.namespace
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert {f"{ns}.apm_fwd.default", f"{ns}.apm_bwd.default"} <= targets


@pytest.mark.parametrize("contrastive,detach", GATE_MODES, ids=GATE_IDS)
def test_flop_counter_counts_the_formulas_of_ap3d_kernels_flops(backend, contrastive, detach):
    from torch.utils.flop_counter import FlopCounterMode

    B, C, T, H, W, N = 1, 32, 3, 5, 3, 5
    inputs = inputs_for(backend, B, C, T, H, W, contrastive=contrastive)
    with FlopCounterMode(display=False) as counter:
        apm(*inputs, backend=backend, time_dim=N, contrastive=contrastive, detach_gate_inputs=detach).sum().backward()
    args = (B, C, T, H * W, C // 16, N, contrastive)
    mod = backend_module(backend)
    counts = counter.get_flop_counts()["Global"]
    assert counts[mod.forward_op] == core_forward_flops(*args) > 0
    assert counts[mod.backward_op] == core_backward_flops(*args, detach) > 0
    # The prologue's projections are counted by the counter's own GEMM formulas.
    assert counter.get_total_flops() == apm_forward_flops(*args) + apm_backward_flops(*args, detach)


@pytest.mark.parametrize("loss", ["linear", "square"])
def test_double_backward_is_refused_with_a_clear_error(backend, loss):
    """create_graph=True still gives correct first-order gradients (also when the output
    gradient itself depends on x); differentiating them again raises instead of being wrong."""
    inputs = inputs_for(backend, 1, 32, 2, 5, 3, dtype=torch.float64, seed=16)
    x = inputs[0]
    kw = dict(detach_gate_inputs=False)
    objective = (lambda z: z.sum()) if loss == "linear" else (lambda z: z.square().sum())
    (gx,) = torch.autograd.grad(objective(apm(*inputs, backend=backend, **kw)), x, create_graph=True)
    (ref_gx,) = torch.autograd.grad(objective(apm_reference(*inputs, **kw)), x)
    assert_close_rel(gx, ref_gx, 1e-10, "first-order grad x")
    with pytest.raises(RuntimeError, match=rf"double backward is not supported by the fused APM '{backend}' "
                                           r"backend.*use backend='reference'"):
        torch.autograd.grad(gx.square().sum(), x, retain_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(gx.square().sum(), inputs[1])


# ----------------------------------------------------------------------------------------------
# Bad input: an error naming the argument, raised before any kernel runs
# ----------------------------------------------------------------------------------------------
BAD_INPUTS = {
    "x-4d": (lambda a: [a[0][:, :, 0], *a[1:]], {}, ValueError, r"x must have rank 5, shape \[B, C, T, H, W\]"),
    "x-integer": (lambda a: [a[0].long(), *a[1:]], {}, TypeError, "x must have a floating dtype"),
    "x-empty": (lambda a: [a[0][:, :, :0], *a[1:]], {}, ValueError, "no empty dimension"),
    "x-wrong-channels": (lambda a: [a[0][:, :16], *a[1:]], {}, ValueError, "x must have 32 channels"),
    "theta-missing": (lambda a: [a[0], a[1], None, *a[3:]], {}, ValueError, "theta_weight is required"),
    "att-wrong-shape": (lambda a: [*a[:4], a[4][:1]], {}, ValueError, "att_weight must have shape"),
    "scale-nan": (lambda a: a, {"scale": float("nan")}, ValueError, "scale must be a finite positive"),
    "scale-negative": (lambda a: a, {"scale": -1.0}, ValueError, "scale must be a finite positive"),
    "time-dim-even": (lambda a: a, {"time_dim": 4}, ValueError, "time_dim must be an odd integer"),
    "x-on-meta": (lambda a: [t.to("meta") for t in a], {}, ValueError, "cannot run on tensors on meta"),
    "weight-on-other-device": (lambda a: [a[0].to("meta"), *a[1:]], {}, ValueError, "all tensors must share"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_python_error_before_the_kernel(backend, case, monkeypatch):
    transform, kwargs, exc, message = BAD_INPUTS[case]

    def kernel_must_not_run(*a, **k):
        raise AssertionError("the kernel was reached with invalid arguments")

    monkeypatch.setattr(backend_module(backend), "forward_op", kernel_must_not_run)
    args = transform(inputs_for(backend, 1, 32, 3, 4, 4, requires_grad=False))
    with pytest.raises(exc, match=message):
        apm(*args, backend=backend, **kwargs)


def test_auto_picks_the_fused_backend_of_the_device(backend):
    device = backend_device(backend)
    if ap3d_kernels.available_backends(device)[0] != backend:
        pytest.skip(f"'auto' prefers another backend on {device}")
    assert ap3d_kernels.functional.resolve_backend("auto", device).args == (backend_module(backend).forward_op,)
