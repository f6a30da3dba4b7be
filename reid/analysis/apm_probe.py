"""Look inside a network's APMs: capture their inputs (forward hooks) and recompute the
registration weights ``P`` that the fused kernels never materialise.

``P`` follows ``ap3d_kernels``' documented semantics (README, "Semantics"; protocol.md): with
``q = L2-normalise(g x)`` over channels, for a centre frame ``t`` and a neighbour ``t'``,
``P = softmax(s * q_t q_t'^T)`` over the neighbour's positions, and the reconstruction is
``y = P x_t'``. A test checks ``P x_t'`` against ``ap3d_kernels.apm_reference``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ap3d_kernels import APM

__all__ = ["ApmCall", "capture_apm", "apm_stage", "neighbour_offsets", "semantic_queries", "registration_weights"]


def apm_stage(name: str) -> Optional[int]:
    """ResNet stage (1..4) of a module named like ``layer2.0.conv2.APM``; None if it has none."""
    m = re.search(r"(?:^|\.)layer(\d)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def neighbour_offsets(time_dim: int) -> list[int]:
    """Temporal offsets of a centre frame's neighbours in APM's output order: ``[-1, 1]`` for 3."""
    half = time_dim // 2
    return [o for o in range(-half, half + 1) if o != 0]


@dataclass
class ApmCall:
    """One forward call of one APM: its input ``x`` ``[B, C, T, h, w]`` (and output if kept)."""

    name: str
    stage: Optional[int]
    module: APM
    input: torch.Tensor
    output: Optional[torch.Tensor] = None


class capture_apm:
    """``with capture_apm(model) as calls: model(clips)`` -> ``calls``: an ``ApmCall`` per APM call,
    in execution order. Tensors are detached; ``keep_output`` also keeps APM's outputs."""

    def __init__(self, model: nn.Module, keep_output: bool = False):
        self.modules = [(n, m) for n, m in model.named_modules() if isinstance(m, APM)]
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no APM module (an AP-network such as ap3d_resnet18 expected)")
        self.keep_output = keep_output
        self.calls: list[ApmCall] = []
        self._handles = []

    def __enter__(self) -> list[ApmCall]:
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self.calls

    def _hook(self, name: str):
        def hook(module, args, output):
            self.calls.append(ApmCall(name, apm_stage(name), module, args[0].detach(),
                                      output.detach() if self.keep_output else None))
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def semantic_queries(x: torch.Tensor, g_weight: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, h, w]`` features, ``g_weight`` (the APM's ``semantic_mapping.weight``, any shape
    ``[Ck, C, ...]``) -> unit query vectors ``q = normalise(g x)``, ``[B, T, h*w, Ck]``."""
    B, C, T, h, w = x.shape
    g = g_weight.reshape(g_weight.shape[0], C).to(x.dtype)
    values = x.reshape(B, C, T, h * w).permute(0, 2, 3, 1)
    return F.normalize(values @ g.t(), p=2, dim=-1)


def registration_weights(queries: torch.Tensor, offset: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """APM's ``P`` for every centre frame whose neighbour at ``offset`` exists in the clip.

    Args:
        queries: ``[B, T, HW, Ck]`` from ``semantic_queries``.
        offset: neighbour offset (e.g. -1 or 1).
        scale: APM's ``s``.

    Returns:
        ``(P, centres)``: ``P`` ``[B, n, HW, HW]`` (row: centre position, column: neighbour position,
        rows sum to 1) for the ``n`` centre frames ``centres`` (``[n]`` frame indices). Centres whose
        neighbour falls in APM's zero padding are left out: they have no neighbour to register.
    """
    T = queries.shape[1]
    centres = torch.arange(max(0, -offset), min(T, T - offset))
    q_c = queries[:, centres]
    q_n = queries[:, centres + offset]
    return torch.softmax(scale * (q_c @ q_n.transpose(-1, -2)), dim=-1), centres
