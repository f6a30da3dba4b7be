"""Did the temporal parts learn? Norms of the temporal weights of a trained network.

Every temporal block starts as its 2D conv (the release's initialisation): P3D-B/C and AP3D's
temporal convs are zero, I3D's non-centre taps are zero. A network whose temporal weights are
still near zero after training is C2D in disguise, whatever its name; these numbers say so.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

__all__ = ["temporal_weight_norms", "zero_temporal_weights"]


def _is_temporal_conv(key: str) -> bool:
    return key.endswith("temporal_conv3d.weight")


def _is_inflated_conv(key: str, w: torch.Tensor) -> bool:
    return key.endswith("conv3d.weight") and w.dim() == 5 and w.shape[2] > 1 and "spatial" not in key


def zero_temporal_weights(state: Mapping[str, torch.Tensor]) -> tuple[dict, int]:
    """A copy of ``state`` with every temporal weight (as :func:`temporal_weight_norms` defines
    them) set to zero, and how many tensors that touched. The network then computes what C2D
    computes with the same spatial weights: its temporal parts are switched off."""
    out, touched = dict(state), 0
    for key, w in state.items():
        if _is_temporal_conv(key):
            out[key] = torch.zeros_like(w)
            touched += 1
        elif _is_inflated_conv(key, w):
            centre = w.shape[2] // 2
            kept = torch.zeros_like(w)
            kept[:, :, centre] = w[:, :, centre]
            out[key] = kept
            touched += 1
    return out, touched


def temporal_weight_norms(state: Mapping[str, torch.Tensor]) -> dict:
    """Frobenius norms of a video network's temporal weights, per block and in total.

    - ``temporal_conv3d.weight`` (P3D, AP-P3D/AP3D): the whole temporal kernel, against the
      block's ``spatial_conv3d.weight``;
    - ``conv3d.weight`` with temporal extent > 1 (I3D, AP-I3D): the non-centre taps, against the
      centre tap (the inflated 2D kernel).
    ``relative`` = temporal norm / spatial norm over all blocks; 0 means nothing temporal was learned.
    Networks without temporal blocks (C2D) give ``num_blocks = 0`` and zeros.
    """
    blocks = {}
    for key, w in state.items():
        if _is_temporal_conv(key):
            block = key[: -len(".temporal_conv3d.weight")]
            spatial = state.get(block + ".spatial_conv3d.weight")
            blocks[block] = (float(w.float().norm()), float(spatial.float().norm()) if spatial is not None else math.nan)
        elif _is_inflated_conv(key, w):
            block = key[: -len(".conv3d.weight")]
            centre = w.shape[2] // 2
            taps = torch.cat([w[:, :, :centre], w[:, :, centre + 1:]], dim=2).float()
            blocks[block] = (float(taps.norm()), float(w[:, :, centre].float().norm()))
    total_t = math.sqrt(sum(t * t for t, _ in blocks.values()))
    total_s = math.sqrt(sum(s * s for _, s in blocks.values() if not math.isnan(s)))
    return {
        "num_blocks": len(blocks),
        "temporal_norm": total_t,
        "spatial_norm": total_s,
        "relative": total_t / total_s if total_s > 0 else 0.0,
        "blocks": {b: {"temporal": t, "spatial": s, "relative": t / s if s > 0 else None}
                   for b, (t, s) in sorted(blocks.items())},
    }
