"""Losses of ReIDMamba: label-smoothed CE, batch-hard triplet, RATR, and their sum."""

from reidcam.reid.losses.ratr import ratr_inter, ratr_intra, soft_kendall_tau
from reidcam.reid.losses.reidmamba_loss import ReIDMambaLoss
from reidcam.reid.losses.softmax import LabelSmoothingCrossEntropy
from reidcam.reid.losses.triplet import BatchHardTripletLoss, euclidean_distances

__all__ = [
    "BatchHardTripletLoss",
    "LabelSmoothingCrossEntropy",
    "ReIDMambaLoss",
    "euclidean_distances",
    "ratr_inter",
    "ratr_intra",
    "soft_kendall_tau",
]
