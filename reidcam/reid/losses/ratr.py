"""RATR: ranking-aware triplet regularisation between the MGFE branches (method doc, section 2c).

For every anchor, each branch ranks a set of items by cosine similarity: the anchor's other
same-identity images (intra term) or the centres of the other identities in the batch (inter
term). The soft Kendall tau between two branches' rankings,

    tau(x, y) = 2 / (D (D - 1)) * sum_{p<q} tanh((x_p - x_q) / t) * tanh((y_p - y_q) / t),

is averaged over anchors and branch pairs and *minimised*, which de-correlates the branches.

The item sets are derived from the labels, so any batch works (P x K or not, identity-major or
not); anchors with fewer than two items contribute nothing. With a P x K batch this is exactly
the original (D = K - 1 positives, D = P - 1 centres).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F


def soft_kendall_tau(
    scores_a: torch.Tensor, scores_b: torch.Tensor, item_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over anchors of the soft Kendall tau between two (N, M) score rows, over masked items."""
    upper = torch.ones(item_mask.shape[1], item_mask.shape[1], dtype=torch.bool, device=item_mask.device).triu(1)
    pair_mask = item_mask.unsqueeze(2) & item_mask.unsqueeze(1) & upper
    sign_a = torch.tanh((scores_a.unsqueeze(2) - scores_a.unsqueeze(1)) / temperature)
    sign_b = torch.tanh((scores_b.unsqueeze(2) - scores_b.unsqueeze(1)) / temperature)
    concordance = (sign_a * sign_b * pair_mask).sum(dim=(1, 2))
    pairs = pair_mask.sum(dim=(1, 2))
    valid = pairs > 0
    per_anchor = concordance / pairs.clamp(min=1)  # 0 where an anchor has no pair
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)


def _mean_over_branch_pairs(
    scores: Sequence[torch.Tensor], item_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    terms = [soft_kendall_tau(a, b, item_mask, temperature) for a, b in combinations(scores, 2)]
    return torch.stack(terms).mean()


def ratr_intra(features: Sequence[torch.Tensor], labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Rank correlation between branches of each anchor's similarities to its other positives."""
    normalised = [F.normalize(f.float(), dim=1) for f in features]
    same = labels.view(-1, 1) == labels.view(1, -1)
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    scores = [f @ f.T for f in normalised]
    return _mean_over_branch_pairs(scores, positives, temperature)


def identity_centres(normalised: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Row j: the L2-normalised mean feature of sample j's identity (``same``: the labels' equality matrix)."""
    return F.normalize(same.to(normalised.dtype) @ normalised, dim=1)


def first_of_each_identity(same: torch.Tensor) -> torch.Tensor:
    """Mask of the first sample of each identity in the batch (``same``: the labels' equality matrix)."""
    index = torch.arange(same.shape[0], device=same.device)
    return torch.where(same, index.view(1, -1), same.shape[0]).amin(dim=1) == index


def ratr_inter(features: Sequence[torch.Tensor], labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Rank correlation between branches of each anchor's similarities to the other identities' centres.

    Centres are indexed by sample, one per identity kept by a mask: all sizes follow from the batch
    size alone, so nothing here waits for the GPU (as ``torch.unique`` would).
    """
    same = labels.view(-1, 1) == labels.view(1, -1)
    scores = []
    for feature in features:
        normalised = F.normalize(feature.float(), dim=1)
        scores.append(normalised @ identity_centres(normalised, same).T)
    other_identities = ~same & first_of_each_identity(same).view(1, -1)
    return _mean_over_branch_pairs(scores, other_identities, temperature)
