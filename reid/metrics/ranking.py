"""Retrieval metrics for person re-ID: CMC, mAP and mINP with the junk rule.

Definitions (Market-1501 / MARS evaluation, as in torchreid and fast-reid):

* For each query the gallery is sorted by ascending distance (stable sort, so ties keep the
  gallery order and results are reproducible).
* Junk: gallery entries with the query's identity AND the query's camera are removed before
  ranking (a same-camera match is trivial). Other entries, distractors included, stay.
* A query with no valid match left is skipped and counted in ``num_skipped``.
* CMC rank-k: 1 if a true match is among the first k valid entries. When fewer than k valid
  entries exist, the curve keeps its last value (all of them are within the top k).
* AP: mean over the true matches of precision at each match's rank.
* INP (Ye et al., TPAMI 2021): ``num_matches / (rank of the hardest match)``; mINP its mean.

Distances and sorting are done one chunk of queries at a time, so a MARS-sized problem
(about 2k queries x 11k gallery tracklets) never holds more than ``chunk_size x num_gallery``
entries at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["RankingResult", "evaluate_ranking", "cosine_distance", "feature_distance", "rank_gallery"]


@dataclass
class RankingResult:
    """CMC curve (``cmc[k-1]`` is rank-k accuracy), mAP, mINP, all as fractions in [0, 1]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_queries: int
    num_valid_queries: int
    num_skipped: int
    skipped_query_indices: list = field(default_factory=list)

    def rank(self, k: int) -> float:
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank k must be in 1..{len(self.cmc)}, got {k}")
        return float(self.cmc[k - 1])

    def as_dict(self, ranks: Sequence[int] = (1, 5, 10, 20)) -> dict:
        out = {f"rank{k}": self.rank(k) for k in ranks if k <= len(self.cmc)}
        out.update(
            mAP=float(self.mAP),
            mINP=float(self.mINP),
            num_queries=int(self.num_queries),
            num_valid_queries=int(self.num_valid_queries),
            num_skipped_queries=int(self.num_skipped),
        )
        return out


def cosine_distance(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``1 - cos(q_i, g_j)``; inputs need not be normalised."""
    q = torch.nn.functional.normalize(q.float(), dim=1)
    g = torch.nn.functional.normalize(g.float(), dim=1)
    return (1.0 - q @ g.t()).clamp_(min=0.0)


def feature_distance(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``1 - q_i . g_j`` of already L2-normalised features: what :func:`evaluate_ranking` ranks by."""
    return 1.0 - q @ g.t()


def rank_gallery(dist: torch.Tensor) -> torch.Tensor:
    """Gallery indices of each row by ascending distance, ties in gallery order (the evaluator's ranking)."""
    return torch.sort(dist, dim=1, stable=True).indices


def _as_long(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.long().cpu()


def evaluate_ranking(
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    distmat: Optional[torch.Tensor] = None,
    q_feats: Optional[torch.Tensor] = None,
    g_feats: Optional[torch.Tensor] = None,
    max_rank: int = 20,
    chunk_size: int = 256,
) -> RankingResult:
    """Compute CMC/mAP/mINP from either a [Q, G] ``distmat`` or features (cosine distance).

    Exactly one of ``distmat`` or the pair ``q_feats``/``g_feats`` must be given. With
    features, distances are computed chunk by chunk and the full matrix never exists.
    """
    q_pids, g_pids = _as_long(q_pids, "q_pids"), _as_long(g_pids, "g_pids")
    q_camids, g_camids = _as_long(q_camids, "q_camids"), _as_long(g_camids, "g_camids")
    if (distmat is None) == (q_feats is None or g_feats is None):
        raise ValueError("give either distmat or both q_feats and g_feats (exactly one of the two)")
    num_q, num_g = len(q_pids), len(g_pids)
    if len(q_camids) != num_q or len(g_camids) != num_g:
        raise ValueError(
            f"camid lengths ({len(q_camids)}, {len(g_camids)}) must match pid lengths ({num_q}, {num_g})"
        )
    if num_q == 0 or num_g == 0:
        raise ValueError(f"need at least one query and one gallery item, got {num_q} and {num_g}")
    if distmat is not None:
        distmat = torch.as_tensor(distmat)
        if tuple(distmat.shape) != (num_q, num_g):
            raise ValueError(f"distmat must have shape ({num_q}, {num_g}), got {tuple(distmat.shape)}")
    else:
        if q_feats.shape[0] != num_q or g_feats.shape[0] != num_g:
            raise ValueError(
                f"features have {q_feats.shape[0]} queries / {g_feats.shape[0]} gallery rows, "
                f"pids have {num_q} / {num_g}"
            )
        q_feats = torch.nn.functional.normalize(q_feats.float().cpu(), dim=1)
        g_feats = torch.nn.functional.normalize(g_feats.float().cpu(), dim=1)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    cmc_sum = torch.zeros(max_rank, dtype=torch.float64)
    ap_sum = 0.0
    inp_sum = 0.0
    skipped: list[int] = []
    positions = torch.arange(num_g)
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        if distmat is not None:
            dist = distmat[start:stop].float().cpu()
        else:
            dist = feature_distance(q_feats[start:stop], g_feats)
        order = rank_gallery(dist)  # [c, G]
        qp = q_pids[start:stop, None]
        same_pid = g_pids[order] == qp
        junk = same_pid & (g_camids[order] == q_camids[start:stop, None])
        valid = ~junk
        match = same_pid & valid
        # 0-based rank of every entry once the junk is removed
        valid_rank = valid.long().cumsum(1) - 1
        num_rel = match.sum(1)
        has_match = num_rel > 0
        if not bool(has_match.all()):
            skipped.extend((start + torch.nonzero(~has_match).flatten()).tolist())
        if not bool(has_match.any()):
            continue
        match, valid_rank, num_rel = match[has_match], valid_rank[has_match], num_rel[has_match]
        # CMC: rank of the first match, via the first True position along the sorted gallery
        first_pos = torch.where(match, positions, num_g).min(1).values
        first_rank = valid_rank.gather(1, first_pos[:, None]).squeeze(1)
        ks = torch.arange(max_rank)
        cmc_sum += (first_rank[:, None] <= ks[None, :]).double().sum(0)
        # AP: precision at each true match = (# matches so far) / (valid rank + 1)
        cum_match = match.long().cumsum(1)
        # (junk entries may sit at valid rank -1; they are masked out, never divided by)
        precision = cum_match.double() / (valid_rank.double() + 1.0).clamp(min=1.0)
        ap = torch.where(match, precision, 0.0).sum(1) / num_rel.double()
        ap_sum += float(ap.sum())
        # INP: hardest (last) match's rank
        last_pos = torch.where(match, positions, -1).max(1).values
        last_rank = valid_rank.gather(1, last_pos[:, None]).squeeze(1)
        inp_sum += float((num_rel.double() / (last_rank.double() + 1.0)).sum())

    num_valid = num_q - len(skipped)
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_q} queries has a valid gallery match (same identity from another "
            "camera): check the query/gallery split and camera ids"
        )
    return RankingResult(
        cmc=(cmc_sum / num_valid).numpy(),
        mAP=ap_sum / num_valid,
        mINP=inp_sum / num_valid,
        num_queries=num_q,
        num_valid_queries=num_valid,
        num_skipped=len(skipped),
        skipped_query_indices=skipped,
    )
