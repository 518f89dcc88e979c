"""The ReIDMamba objective: mean triplet + mean ID loss over branches, plus the two RATR terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reidcam.reid.losses.ratr import ratr_inter, ratr_intra
from reidcam.reid.losses.softmax import LabelSmoothingCrossEntropy
from reidcam.reid.losses.triplet import BatchHardTripletLoss


class ReIDMambaLoss(nn.Module):
    """L = mean_b tri(f_b) + mean_b CE(logits_b) + w_intra * RATR_intra + w_inter * RATR_inter.

    ``forward`` returns a dict of 0-d tensors: ``loss`` (to back-propagate), ``triplet``, ``id``,
    ``ratr_intra``, ``ratr_inter`` (unweighted components).
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        triplet_margin: float = 1.2,
        ratr_temperature: float = 0.1,
        ratr_intra_weight: float = 1.0,
        ratr_inter_weight: float = 1.0,
        triplet_weight: float = 1.0,
        id_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.id_loss = LabelSmoothingCrossEntropy(label_smoothing)
        self.triplet_loss = BatchHardTripletLoss(triplet_margin)
        self.ratr_temperature = ratr_temperature
        self.weights = {
            "triplet": triplet_weight, "id": id_weight,
            "ratr_intra": ratr_intra_weight, "ratr_inter": ratr_inter_weight,
        }

    def forward(
        self,
        features: Sequence[torch.Tensor],
        logits: Sequence[torch.Tensor] | None,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        zero = features[0].new_zeros((), dtype=torch.float32)
        parts = {
            "triplet": torch.stack([self.triplet_loss(f, labels) for f in features]).mean(),
            "id": torch.stack([self.id_loss(scores, labels) for scores in logits]).mean() if logits else zero,
            "ratr_intra": ratr_intra(features, labels, self.ratr_temperature) if len(features) > 1 else zero,
            "ratr_inter": ratr_inter(features, labels, self.ratr_temperature) if len(features) > 1 else zero,
        }
        total = sum(self.weights[name] * value for name, value in parts.items() if self.weights[name])
        return {"loss": total, **parts}
