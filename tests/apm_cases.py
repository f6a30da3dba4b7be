"""Helpers shared by the APM kernel tests (conformance suite and backend-specific files)."""
from __future__ import annotations

import importlib

import pytest
import torch

from ap3d_kernels import apm, apm_reference

# (contrastive, detach_gate_inputs): no gate, the release's detached gate, the fully coupled gate.
GATE_MODES = [(False, True), (True, True), (True, False)]
GATE_IDS = ["no-gate", "gate-detached", "gate-attached"]
GRAD_NAMES = ["x", "g_weight", "theta_weight", "phi_weight", "att_weight"]


def backend_module(name: str):
    """The backend module of ``ap3d_kernels.backends`` (imported on demand: triton is slow to import)."""
    return importlib.import_module(f"ap3d_kernels.backends.{name}")


def backend_device(name: str) -> torch.device:
    """Where a backend's tests put their tensors: CUDA for triton when there is a GPU, else CPU."""
    return torch.device("cuda" if name == "triton" and torch.cuda.is_available() else "cpu")


def fused_backends() -> list:
    """pytest params for every fused backend, skipped (with the reason) where it cannot run here."""
    params = []
    for name in ("cpu", "triton"):
        marks = [pytest.mark.triton] if name == "triton" else []
        try:
            ok, reason = backend_module(name).is_available()
        except ImportError as exc:  # pragma: no cover - a backend's own import failed
            ok, reason = False, str(exc)
        if not ok:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def make_inputs(B, C, T, H, W, *, ck=None, dtype=torch.float32, contrastive=True, seed=0, requires_grad=True,
                device="cpu"):
    """x and the four weights, scaled like trained layers (unit-ish features, 1/sqrt(C) weights);
    theta, phi and att are None when ``contrastive`` is false."""
    gen = torch.Generator().manual_seed(seed)
    ck = ck or max(C // 16, 1)

    def rnd(*shape, std=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    x = rnd(B, C, T, H, W)
    g = rnd(ck, C, std=C**-0.5)
    if not contrastive:
        return [x, g, None, None, None]
    return [x, g, rnd(ck, C, std=C**-0.5), rnd(ck, C, std=C**-0.5), rnd(ck)]


def leaves(inputs):
    return [t for t in inputs if t is not None]


def run(inputs, backend, *, grad_out=None, **kw):
    """Output and gradients of every given input for ``sum(out * grad_out)`` (None without grad_out)."""
    if backend == "reference":
        out = apm_reference(*inputs, **kw)
    else:
        out = apm(*inputs, backend=backend, **kw)
    if grad_out is None:
        return out, None
    return out, torch.autograd.grad(out, leaves(inputs), grad_out)


def assert_close_rel(actual, expected, rtol, what):
    """max |actual - expected| <= rtol * max |expected|: a tolerance relative to the tensor's scale,
    the right measure for sums whose individual terms may cancel."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - expected).abs().max().item()
    ref = expected.abs().max().item()
    assert err <= rtol * ref + 1e-30, f"{what}: max error {err:.3g} > {rtol:.1g} * max|expected| ({ref:.3g})"
