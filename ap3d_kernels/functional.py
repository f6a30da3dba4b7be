"""``ap3d_kernels.apm``: one entry point, several backends.

The entry point validates the arguments once (:mod:`ap3d_kernels.validation`), picks the backend,
and runs either the pure-PyTorch reference or, for a fused backend, the shared prologue followed
by the backend's core operator (the contract: :mod:`ap3d_kernels.backends`).

Backend modules are imported once and cached. The CPU backend is imported with this module (it
only loads a small shared library), so a ``torch.compile``'d call never traces an import and a
``FlopCounterMode`` created before the first call already knows its FLOP formulas. The Triton
backend is imported on demand (importing triton is slow, and ``TRITON_INTERPRET`` must be set
before it is imported): :func:`preload_backends`, which ``ap3d_kernels.APM`` calls when it is
constructed, imports it when it may be used. Each backend module exposes ``is_available() ->
(bool, reason)``, ``supports_device(device) -> bool`` and ``forward_op``.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Callable, Optional

import torch

from .backends import fused_apm
from .reference import apm_reference
from .validation import check_apm_args

__all__ = ["apm", "run_apm", "available_backends", "preload_backends", "resolve_backend", "BACKENDS"]

# name -> module path; "reference" is built in.
BACKENDS: dict[str, Optional[str]] = {
    "reference": None,
    "cpu": "ap3d_kernels.backends.cpu",
    "triton": "ap3d_kernels.backends.triton",
}
# What "auto" tries first for a device type; the reference is always the last resort.
_AUTO_PREFERENCE = {"cpu": "cpu", "cuda": "triton"}
_warned: set[str] = set()
_modules: dict[str, object] = {}
# Device types on which torch.autocast exists (it raises for others, such as "meta").
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _load(name: str):
    # Cached so that a call under torch.compile reads a dict instead of tracing an import
    # (Dynamo cannot trace importlib, which would break the graph at every APM).
    module = _modules.get(name)
    if module is None:
        try:
            module = importlib.import_module(BACKENDS[name])
        except ImportError as exc:  # the backend's own dependencies are missing
            module = _Unavailable(f"backend {name!r} could not be imported: {exc}")
        _modules[name] = module
    return module


def preload_backends(*names: str) -> None:
    """Import now the named backend modules, or with no names those ``"auto"`` may pick here.

    Call it from eager code (``ap3d_kernels.APM`` does, when constructed): a ``torch.compile``'d
    call then only reads the cache, whereas tracing the first import would break the graph, and
    a ``FlopCounterMode`` entered afterwards sees the backend's FLOP formulas.
    """
    if not names:
        names = ("cpu", "triton") if torch.cuda.is_available() else ("cpu",)
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
        if BACKENDS[name] is not None:
            _load(name)


class _Unavailable:
    def __init__(self, reason: str):
        self.reason = reason

    def is_available(self):
        return False, self.reason

    def supports_device(self, device):
        return False


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on tensors of ``device`` in this process, fastest first."""
    device = torch.device(device)
    names = []
    for name in BACKENDS:
        if name == "reference":
            continue
        mod = _load(name)
        if mod.is_available()[0] and mod.supports_device(device):
            names.append(name)
    preferred = _AUTO_PREFERENCE.get(device.type)
    names.sort(key=lambda n: n != preferred)
    return names + ["reference"]


def resolve_backend(backend: str, device: torch.device) -> Callable:
    """The callable for ``backend`` on ``device``; raises a clear error if it cannot run."""
    if not isinstance(backend, str) or backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {backend!r}")
    if backend == "reference":
        return apm_reference
    if backend == "auto":
        preferred = _AUTO_PREFERENCE.get(device.type)
        if preferred is None:
            return apm_reference
        mod = _load(preferred)
        ok, reason = mod.is_available()
        if ok and mod.supports_device(device):
            return _fused(mod)
        if preferred not in _warned:
            _warned.add(preferred)
            warnings.warn(
                f"ap3d_kernels: the fused {preferred!r} backend is unavailable ({reason}); "
                f"backend='auto' falls back to the pure-PyTorch reference (slow, memory-hungry).",
                RuntimeWarning,
                stacklevel=3,
            )
        return apm_reference
    mod = _load(backend)
    ok, reason = mod.is_available()
    if not ok:
        raise RuntimeError(reason)
    if not mod.supports_device(device):
        raise ValueError(f"backend {backend!r} cannot run on tensors on {device} (x is on {device})")
    return _fused(mod)


def _fused(mod) -> Callable:
    return functools.partial(fused_apm, mod.forward_op)


def apm(
    x: torch.Tensor,
    g_weight: torch.Tensor,
    theta_weight: Optional[torch.Tensor] = None,
    phi_weight: Optional[torch.Tensor] = None,
    att_weight: Optional[torch.Tensor] = None,
    *,
    scale: float = 4.0,
    time_dim: int = 3,
    contrastive: bool = True,
    detach_gate_inputs: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Appearance-Preserving Module: register each neighbour frame to its centre frame.

    Args:
        x: ``[B, C, T, H, W]`` floating tensor.
        g_weight: ``[Ck, C]`` semantic mapping; ``theta_weight``/``phi_weight``: ``[Ck, C]`` and
            ``att_weight``: ``[Ck]`` for the contrastive-attention gate (``None`` allowed when
            ``contrastive=False``). Weights of another floating dtype are cast to ``x.dtype``.
        scale: similarity scale ``s`` (> 0). time_dim: odd window ``N >= 3``.
        contrastive: apply the gate. detach_gate_inputs: gate sees detached inputs (release default).
        backend: ``"auto"`` (fused kernel for the device if built, else the reference),
            ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``[B, C, N*T, H, W]`` with frames ``[z(t-N//2) .. x_t .. z(t+N//2)]`` for each ``t``.
    """
    return run_apm(
        x, g_weight, theta_weight, phi_weight, att_weight, scale=scale, time_dim=time_dim, contrastive=contrastive,
        detach_gate_inputs=detach_gate_inputs, backend=backend,
    )


def run_apm(
    x, g_weight, theta_weight, phi_weight, att_weight, *, scale, time_dim, contrastive, detach_gate_inputs, backend,
    caller: Optional[str] = None,
) -> torch.Tensor:
    """:func:`apm` for callers that name themselves in its error messages (``ap3d_kernels.APM``):
    the one place where the arguments are validated and the backend is chosen."""
    scale, time_dim = check_apm_args(
        x, g_weight, theta_weight, phi_weight, att_weight, scale=scale, time_dim=time_dim, contrastive=contrastive,
        caller=caller,
    )
    fn = resolve_backend(backend, x.device)

    def cast(w):
        return None if w is None else w.to(x.dtype)

    if not contrastive:
        theta_weight = phi_weight = att_weight = None
    args = (x, cast(g_weight), cast(theta_weight), cast(phi_weight), cast(att_weight))
    kwargs = dict(scale=scale, time_dim=time_dim, contrastive=bool(contrastive), detach_gate_inputs=bool(detach_gate_inputs))
    if x.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(x.device.type):
        # APM computes in x's dtype (fused kernels accumulate in fp32 themselves); letting autocast
        # recast its inner products would mix dtypes inside the op.
        with torch.autocast(x.device.type, enabled=False):
            return fn(*args, **kwargs)
    return fn(*args, **kwargs)


# The CPU backend is cheap to import (see the module docstring); the import records, rather than
# raises, a missing extension.
preload_backends("cpu")
