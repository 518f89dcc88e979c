"""The detector interface the pipeline depends on: images in, person boxes out, batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import supervision as sv


class PendingDetections(Protocol):
    """A batch's detections that may still be computing (on a GPU); ``result`` waits for them."""

    def result(self) -> list[sv.Detections]: ...


@dataclass(frozen=True)
class DoneDetections:
    """Detections computed already: what a detector without asynchronous work hands back from ``submit``."""

    detections: list[sv.Detections]

    def result(self) -> list[sv.Detections]:
        return self.detections


class Detector(Protocol):
    """Finds people in a batch of BGR images, one ``sv.Detections`` (xyxy, confidence) per image.

    ``submit`` starts a batch and returns before a GPU has finished it, so that the caller can work on
    the previous batch meanwhile; ``detect`` is ``submit(images).result()``. The images must stay
    unchanged until ``result`` returns.
    """

    def detect(self, images: Sequence[np.ndarray]) -> list[sv.Detections]: ...

    def submit(self, images: Sequence[np.ndarray]) -> PendingDetections: ...
