"""The detector interface the pipeline depends on: images in, person boxes out, batched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import supervision as sv


class Detector(Protocol):
    """Finds people in a batch of BGR images, one ``sv.Detections`` (xyxy, confidence) per image."""

    def detect(self, images: Sequence[np.ndarray]) -> list[sv.Detections]: ...
