"""The pure-PyTorch reference APM is the oracle for every fused kernel, so it is itself checked
against a second, deliberately naive formulation written straight from the paper's equations
(explicit loops over frames and positions), and against the registration property it exists for.
"""
import math

import pytest
import torch

import ap3d_kernels
from ap3d_kernels import apm, apm_reference


def naive_apm(x, g, theta, phi, att, *, scale, time_dim, contrastive, detach_gate_inputs):
    """Eq. (1)-(4) of the paper, one output position at a time; padded neighbours are zeros."""
    B, C, T, H, W = x.shape
    half = time_dim // 2
    positions = [(h, w) for h in range(H) for w in range(W)]
    zeros = x.new_zeros(C, H, W)
    frames = []
    for b in range(B):
        clip = []
        for t in range(T):
            centre = x[b, :, t]
            for o in range(-half, half + 1):
                if o == 0:
                    clip.append(centre)
                    continue
                neighbour = x[b, :, t + o] if 0 <= t + o < T else zeros
                keys = []
                for h, w in positions:
                    k = g @ neighbour[:, h, w]
                    keys.append(k / torch.clamp(k.norm(), min=1e-12))
                recon = []
                for h, w in positions:
                    q = g @ centre[:, h, w]
                    q = q / torch.clamp(q.norm(), min=1e-12)
                    weights = torch.softmax(torch.stack([scale * (q @ k) for k in keys]), dim=0)
                    y = sum(p * neighbour[:, hh, ww] for p, (hh, ww) in zip(weights, positions))
                    if contrastive:
                        c_in = centre[:, h, w].detach() if detach_gate_inputs else centre[:, h, w]
                        y_in = y.detach() if detach_gate_inputs else y
                        y = torch.sigmoid(att @ ((theta @ c_in) * (phi @ y_in))) * y
                    recon.append(y)
                clip.append(torch.stack(recon, dim=1).reshape(C, H, W))
        frames.append(torch.stack(clip, dim=1))
    return torch.stack(frames)


def make_inputs(B, C, T, H, W, ck, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=gen, dtype=dtype)
    weights = [torch.randn(ck, C, generator=gen, dtype=dtype) / math.sqrt(C) for _ in range(3)]
    att = torch.randn(ck, generator=gen, dtype=dtype)
    return [x, *weights, att]


CASES = [
    # (B, C, T, H, W, ck, time_dim, contrastive, detach)
    (1, 5, 3, 3, 2, 2, 3, True, True),
    (2, 4, 2, 2, 3, 3, 3, True, False),
    (1, 6, 4, 2, 2, 2, 5, True, True),
    (1, 4, 3, 3, 1, 2, 3, False, True),
    (1, 3, 1, 2, 2, 1, 3, True, False),  # a single frame: both neighbours are zero padding
]


@pytest.mark.parametrize("B,C,T,H,W,ck,time_dim,contrastive,detach", CASES)
def test_reference_matches_naive_formulation_forward_and_backward(B, C, T, H, W, ck, time_dim, contrastive, detach):
    leaves = [t.requires_grad_() for t in make_inputs(B, C, T, H, W, ck)]
    kwargs = dict(scale=4.0, time_dim=time_dim, contrastive=contrastive, detach_gate_inputs=detach)
    ours = apm_reference(*leaves, **kwargs)
    naive = naive_apm(*leaves, **kwargs)
    assert ours.shape == (B, C, time_dim * T, H, W)
    torch.testing.assert_close(ours, naive, rtol=1e-10, atol=1e-12)

    probe = torch.randn_like(ours)
    grads_ours = torch.autograd.grad((ours * probe).sum(), leaves, allow_unused=True)
    grads_naive = torch.autograd.grad((naive * probe).sum(), leaves, allow_unused=True)
    for name, a, b in zip(["x", "g", "theta", "phi", "att"], grads_ours, grads_naive):
        if not contrastive and name in ("theta", "phi", "att"):
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")


def test_output_interleaves_centre_copies_and_zero_padded_neighbours():
    x, g, th, ph, att = make_inputs(2, 8, 3, 4, 3, 2, dtype=torch.float32)
    out = apm_reference(x, g, th, ph, att, time_dim=5)
    frames = out.reshape(2, 8, 3, 5, 4, 3)  # [B, C, T, N, H, W]
    torch.testing.assert_close(frames[:, :, :, 2], x)  # centre slot is the untouched input
    # Neighbours outside the clip are zero padding, and their reconstruction is exactly zero.
    for t, slot in [(0, 0), (0, 1), (1, 0), (2, 3), (2, 4), (1, 4)]:
        assert torch.count_nonzero(frames[:, :, t, slot]) == 0, (t, slot)
    assert torch.count_nonzero(frames[:, :, 1, 1]) > 0


def test_gradient_detach_semantics_of_the_gate():
    """With detached gate inputs, x receives no gradient through theta(x) or phi(y)."""
    x, g, th, ph, att = make_inputs(1, 6, 3, 3, 2, 2)
    gate_only = {}
    for detach in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, g, th, ph, att)]
        out = apm_reference(*leaves, detach_gate_inputs=detach)
        out.sum().backward()
        gate_only[detach] = [t.grad.clone() for t in leaves]
    # The gate weights learn in both settings...
    for i in (2, 3, 4):
        assert gate_only[True][i].abs().sum() > 0
        torch.testing.assert_close(gate_only[True][i], gate_only[False][i])
    # ...but only the non-detached graph sends the gate's gradient on to x and g.
    assert not torch.allclose(gate_only[True][0], gate_only[False][0])
    assert not torch.allclose(gate_only[True][1], gate_only[False][1])


def test_registration_realigns_a_shifted_neighbour_to_the_centre():
    """The property APM exists for: a spatially shifted copy of the centre frame, with distinctive
    features and a large scale, is reconstructed as the centre frame itself."""
    C, H, W = 24, 4, 5
    gen = torch.Generator().manual_seed(3)
    centre = torch.linalg.qr(torch.randn(C, C, generator=gen))[0][:, : H * W].reshape(C, H, W)  # orthonormal codes
    shifted = torch.roll(centre, shifts=(1, -2), dims=(1, 2))  # the person moved in the box
    x = torch.stack([centre, shifted], dim=1).unsqueeze(0)  # [1, C, 2, H, W]
    g = torch.eye(C)
    out = apm(x, g, scale=60.0, contrastive=False, backend="reference")
    frames = out.reshape(1, C, 2, 3, H, W)
    torch.testing.assert_close(frames[0, :, 0, 2], centre, atol=1e-4, rtol=0)  # t=0 reconstructs frame 1 -> centre
    torch.testing.assert_close(frames[0, :, 1, 0], shifted, atol=1e-4, rtol=0)  # t=1 reconstructs frame 0 -> shifted
    # A plain 3D conv would instead see the misaligned neighbour at the same positions.
    assert (shifted - centre).abs().max() > 0.1


def test_weights_of_another_float_dtype_are_cast_to_the_input_dtype():
    x, g, th, ph, att = make_inputs(1, 8, 2, 3, 3, 2, dtype=torch.float32)
    out = apm(x, g.double(), th.double(), ph.double(), att.double(), backend="reference")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, apm_reference(x, g, th, ph, att))


def test_contrastive_false_ignores_the_gate_weights():
    x, g, th, ph, att = make_inputs(1, 8, 3, 3, 2, 2, dtype=torch.float32)
    without = apm(x, g, contrastive=False, backend="reference")
    ignored = apm(x, g, th, ph, att, contrastive=False, backend="reference")
    torch.testing.assert_close(without, ignored)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the argument, what it got and what it expects.
# ---------------------------------------------------------------------------------------------
def _good():
    return make_inputs(1, 32, 3, 4, 3, 2, dtype=torch.float32)


BAD_INPUTS = [
    ("x of rank 4", lambda a: [a[0][:, :, 0], *a[1:]], {}, ValueError, ["x", "[B, C, T, H, W]", "(1, 32, 4, 3)"]),
    ("integer x", lambda a: [a[0].long(), *a[1:]], {}, TypeError, ["x", "floating", "torch.int64"]),
    ("x not a tensor", lambda a: [a[0].tolist(), *a[1:]], {}, TypeError, ["x", "list"]),
    ("g channel mismatch", lambda a: [a[0], a[1][:, :16], *a[2:]], {}, ValueError, ["x must have 16 channels", "g_weight of shape [Ck=2, C=16]", "got 32"]),
    ("g as a conv weight", lambda a: [a[0], a[1][:, :, None, None, None], *a[2:]], {}, ValueError, ["g_weight", "[Ck, C=32]"]),
    ("theta shape", lambda a: [a[0], a[1], a[2][:1], *a[3:]], {}, ValueError, ["theta_weight", "[Ck=2, C=32]", "(1, 32)"]),
    ("phi missing", lambda a: [a[0], a[1], a[2], None, a[4]], {}, ValueError, ["phi_weight", "required", "contrastive=True"]),
    ("att shape", lambda a: [*a[:4], a[4][:1]], {}, ValueError, ["att_weight", "[Ck=2]", "(1,)"]),
    ("integer att", lambda a: [*a[:4], a[4].int()], {}, TypeError, ["att_weight", "torch.int32"]),
    ("even time_dim", lambda a: a, {"time_dim": 4}, ValueError, ["time_dim", "odd", "4"]),
    ("time_dim 1", lambda a: a, {"time_dim": 1}, ValueError, ["time_dim", ">= 3", "1"]),
    ("float time_dim", lambda a: a, {"time_dim": 3.0}, TypeError, ["time_dim", "3.0"]),
    ("nan scale", lambda a: a, {"scale": float("nan")}, ValueError, ["scale", "finite", "nan"]),
    ("negative scale", lambda a: a, {"scale": -1.0}, ValueError, ["scale", "positive", "-1.0"]),
    ("unknown backend", lambda a: a, {"backend": "cuda"}, ValueError, ["backend", "'cuda'", "reference"]),
    ("empty x", lambda a: [a[0][:, :, :0], *a[1:]], {}, ValueError, ["x", "empty", "(1, 32, 0, 4, 3)"]),
]


@pytest.mark.parametrize("what,mutate,kwargs,error,fragments", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(what, mutate, kwargs, error, fragments):
    args = mutate(_good())
    with pytest.raises(error) as info:
        apm(*args, **{"backend": "reference", **kwargs})
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


def test_mixed_devices_are_rejected_naming_the_weight():
    x, g, th, ph, att = _good()
    meta_phi = torch.empty(2, 32, device="meta")
    with pytest.raises(ValueError, match=r"phi_weight is on meta but x is on cpu"):
        apm(x, g, th, meta_phi, att, backend="reference")


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------
def test_reference_is_always_available_and_listed_last():
    backends = ap3d_kernels.available_backends("cpu")
    assert backends[-1] == "reference"


def test_auto_falls_back_to_the_reference_with_a_single_warning(monkeypatch):
    from ap3d_kernels import functional

    monkeypatch.setitem(functional.BACKENDS, "cpu", "ap3d_kernels._no_such_backend")
    monkeypatch.setattr(functional, "_modules", {})
    monkeypatch.setattr(functional, "_warned", set())
    x, g, th, ph, att = _good()
    with pytest.warns(RuntimeWarning, match="falls back to the pure-PyTorch reference"):
        out = apm(x, g, th, ph, att)
    torch.testing.assert_close(out, apm_reference(x, g, th, ph, att))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apm(x, g, th, ph, att)  # second call: no warning


def test_explicit_unavailable_backend_raises_with_its_reason(monkeypatch):
    from ap3d_kernels import functional

    monkeypatch.setitem(functional.BACKENDS, "cpu", "ap3d_kernels._no_such_backend")
    monkeypatch.setattr(functional, "_modules", {})
    x, g, th, ph, att = _good()
    with pytest.raises(RuntimeError, match="backend 'cpu' could not be imported"):
        apm(x, g, th, ph, att, backend="cpu")


def test_apm_computes_in_the_input_dtype_inside_an_autocast_region():
    """Under torch.autocast the APM inputs keep their dtype: x of bf16 gives bf16, for every backend."""
    x, g, th, ph, att = make_inputs(1, 32, 3, 4, 3, 2, dtype=torch.float32)
    # Triton is left out: in interpreter mode its bf16 tl.dot is known to be wrong (kernel-notes.md).
    for backend in [b for b in ap3d_kernels.available_backends("cpu") if b != "triton"]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = apm(x.bfloat16(), g, th, ph, att, backend=backend)
        assert out.dtype == torch.bfloat16, backend
        expected = apm_reference(x.bfloat16().float(), g, th, ph, att)
        torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2, msg=backend)
