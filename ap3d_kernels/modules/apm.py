"""``APM``: the Appearance-Preserving Module as an ``nn.Module``."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import BACKENDS, preload_backends, run_apm
from ..validation import check_bool, check_positive_int, check_scale, check_time_dim

__all__ = ["APM"]


class APM(nn.Module):
    """Register each neighbour frame to its centre frame (Gu et al., ECCV 2020, Sec. 3.2).

    Maps ``[B, C, T, H, W]`` to ``[B, C, time_dim * T, H, W]``: for every frame ``t`` the
    reconstructed neighbours and the untouched centre, ``[z(t-1), x_t, z(t+1)]`` for
    ``time_dim=3``. Follow it with a 3D conv of temporal kernel and stride ``time_dim``.

    The mappings are stored as bias-free ``1x1x1`` ``nn.Conv3d`` modules under the authors'
    release names (``semantic_mapping``, ``x_mapping``, ``n_mapping``, ``contrastive_att_net.0``)
    so their checkpoints load unchanged; only the weights are used, handed to the fused
    ``ap3d_kernels.apm`` op, which reports its own FLOPs to ``torch.utils.flop_counter``.

    Args:
        channels: ``C``. reduction: ``Ck = C // reduction`` (16 in the paper).
        scale: similarity scale ``s`` (4 in the paper; ``temperature`` in the release).
        time_dim: odd temporal window ``N >= 3``.
        contrastive: apply the contrastive-attention gate (creates ``x_mapping``, ``n_mapping``
            and ``contrastive_att_net``).
        detach_gate_inputs: the gate sees detached inputs, as in the release.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``; may be changed later
            by assigning ``module.backend``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        scale: float = 4.0,
        time_dim: int = 3,
        contrastive: bool = True,
        detach_gate_inputs: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        channels = check_positive_int("channels", channels)
        reduction = check_positive_int("reduction", reduction)
        if channels // reduction < 1:
            raise ValueError(
                f"APM: channels // reduction must be >= 1, got channels={channels}, reduction={reduction}"
            )
        self.channels = channels
        self.reduction = reduction
        self.inter_channels = channels // reduction
        self.scale = check_scale(scale)
        self.time_dim = check_time_dim(time_dim)
        self.contrastive = check_bool("contrastive", contrastive)
        self.detach_gate_inputs = check_bool("detach_gate_inputs", detach_gate_inputs)
        self.backend = backend

        ck = self.inter_channels
        self.semantic_mapping = nn.Conv3d(channels, ck, kernel_size=1, bias=False)
        if self.contrastive:
            self.x_mapping = nn.Conv3d(channels, ck, kernel_size=1, bias=False)
            self.n_mapping = nn.Conv3d(channels, ck, kernel_size=1, bias=False)
            self.contrastive_att_net = nn.Sequential(nn.Conv3d(ck, 1, kernel_size=1, bias=False), nn.Sigmoid())
        else:
            self.x_mapping = self.n_mapping = self.contrastive_att_net = None

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if not isinstance(value, str) or value not in ("auto", *BACKENDS):
            raise ValueError(f"APM: backend must be one of {['auto', *BACKENDS]}, got {value!r}")
        # Import the backend now, in eager code: a compiled forward then never traces an import,
        # and a FlopCounterMode entered before the first forward knows the backend's formulas.
        preload_backends(*(() if value == "auto" else (value,)))
        self._backend = value

    def reset_parameters(self) -> None:
        """PyTorch's default conv initialisation, which is what the release uses for APM."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # run_apm validates x and the weights once, naming this module in its messages.
        weight = self.semantic_mapping.weight
        ck, c = self.inter_channels, self.channels
        if self.contrastive:
            theta = self.x_mapping.weight.reshape(ck, c)
            phi = self.n_mapping.weight.reshape(ck, c)
            att = self.contrastive_att_net[0].weight.reshape(ck)
        else:
            theta = phi = att = None
        return run_apm(
            x,
            weight.reshape(ck, c),
            theta,
            phi,
            att,
            scale=self.scale,
            time_dim=self.time_dim,
            contrastive=self.contrastive,
            detach_gate_inputs=self.detach_gate_inputs,
            backend=self.backend,
            caller="APM",
        )

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inter_channels={self.inter_channels}, scale={self.scale}, "
            f"time_dim={self.time_dim}, contrastive={self.contrastive}, "
            f"detach_gate_inputs={self.detach_gate_inputs}, backend={self.backend!r}"
        )
