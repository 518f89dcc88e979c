"""Batch-hard triplet loss on un-normalised features (Hermans et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def euclidean_distances(features: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean (not squared) distances; squared values clamped at 1e-12 before the root."""
    squared_norms = features.pow(2).sum(dim=1, keepdim=True)
    squared = squared_norms + squared_norms.T - 2.0 * features @ features.T
    return squared.clamp(min=1e-12).sqrt()


def hardest_pairs(distances: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each anchor: distance to its farthest positive and to its nearest negative.

    The anchor counts as its own positive (distance ~1e-6), so an identity seen once still has a
    finite positive distance. An anchor without any negative gets +inf as negative distance.
    """
    same = labels.view(-1, 1) == labels.view(1, -1)
    hardest_positive = distances.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
    return hardest_positive, hardest_negative


class BatchHardTripletLoss(nn.Module):
    """mean_i relu(d(a_i, p_i) - d(a_i, n_i) + margin); soft margin log(1 + exp(d_ap - d_an)) if margin == 0.

    Anchors with no negative in the batch are left out of the mean (by weights, not by indexing:
    the loss never waits for the GPU, so the step's kernels stay queued back to back).
    """

    def __init__(self, margin: float = 1.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positive, negative = hardest_pairs(euclidean_distances(features.float()), labels)
        valid = torch.isfinite(negative)
        gap = torch.where(valid, positive - negative, torch.zeros_like(positive))
        per_anchor = F.relu(gap + self.margin) if self.margin > 0 else F.softplus(gap)
        return (per_anchor * valid).sum() / valid.sum().clamp(min=1)
