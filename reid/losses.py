"""Training losses: identity cross-entropy (optional label smoothing) and batch-hard triplet.

The AP3D release trains with cross-entropy + batch-hard triplet (weights 1:1) where the
triplet's distance is the negative cosine similarity of the post-BN features, margin 0.3:
cross-entropy shapes the features in angular space, so the triplet works there too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CrossEntropyLabelSmooth", "TripletLoss", "ReIDLoss"]


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy with label smoothing ``epsilon`` (Szegedy et al.); epsilon 0 is plain CE."""

    def __init__(self, num_classes: int, epsilon: float = 0.0):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the loss expects {self.num_classes}")
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017).

    For each anchor: hardest positive (largest distance, same identity) and hardest negative
    (smallest distance, other identity); loss = mean(relu(d_ap - d_an + margin)).
    ``distance="cosine"`` uses d = -cos (the release); ``"euclidean"`` the L2 distance.
    Anchors without any negative in the batch contribute nothing.
    """

    def __init__(self, margin: float = 0.3, distance: str = "cosine"):
        super().__init__()
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"triplet distance must be 'cosine' or 'euclidean', got {distance!r}")
        if margin < 0:
            raise ValueError(f"triplet margin must be >= 0, got {margin}")
        self.margin = margin
        self.distance = distance

    def pairwise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.distance == "cosine":
            x = F.normalize(x, dim=1)
            return -(x @ x.t())
        sq = (x * x).sum(1)
        return (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp(min=1e-12).sqrt()

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dist = self.pairwise(features)
        same = targets[:, None] == targets[None, :]
        # the anchor itself counts as a positive (as in the release): its distance is the
        # smallest possible, so it only matters when the anchor has no other positive
        d_ap = dist.masked_fill(~same, float("-inf")).max(1).values
        d_an = dist.masked_fill(same, float("inf")).min(1).values
        has_neg = (~same).any(1)
        if not bool(has_neg.any()):
            return dist.sum() * 0.0  # keeps the graph connected (DDP) with a zero loss
        return F.relu(d_ap[has_neg] - d_an[has_neg] + self.margin).mean()


class ReIDLoss(nn.Module):
    """``ce_weight * CE(logits) + triplet_weight * triplet(features)``; returns the parts too."""

    def __init__(
        self,
        num_classes: int,
        ce_weight: float = 1.0,
        triplet_weight: float = 1.0,
        margin: float = 0.3,
        label_smoothing: float = 0.0,
        triplet_distance: str = "cosine",
    ):
        super().__init__()
        if ce_weight < 0 or triplet_weight < 0 or ce_weight + triplet_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got ce_weight={ce_weight}, triplet_weight={triplet_weight}"
            )
        self.ce = CrossEntropyLabelSmooth(num_classes, label_smoothing)
        self.triplet = TripletLoss(margin, triplet_distance)
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight

    def forward(self, logits, features, targets):
        ce = self.ce(logits, targets)
        tri = self.triplet(features, targets)
        return self.ce_weight * ce + self.triplet_weight * tri, {"ce": ce.detach(), "triplet": tri.detach()}
