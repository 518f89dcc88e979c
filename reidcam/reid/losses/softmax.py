"""Identity (classification) loss with label smoothing, as the ReIDMamba code writes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against a smoothed target: 1 - eps on the true class, eps / (C - 1) elsewhere.

    This differs from ``nn.CrossEntropyLoss(label_smoothing=eps)``, which spreads eps / C over
    every class (the true one included).
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        log_probs = F.log_softmax(logits.float(), dim=1)
        off_value = self.epsilon / (num_classes - 1) if num_classes > 1 else 0.0
        smoothed = torch.full_like(log_probs, off_value)
        smoothed.scatter_(1, targets.view(-1, 1), 1.0 - self.epsilon)
        return -(smoothed * log_probs).sum(dim=1).mean()
