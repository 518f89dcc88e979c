"""Tracklets: one local track of one camera, with the appearance gathered along it.

A tracklet collects a crop embedding every few frames. Crops that are too small, cut by the
frame border or covered by another person are skipped, because they describe the occluder or
the border as much as the person. The tracklet's embedding is the quality-weighted mean of its
crop embeddings (re-normalised), so sharp, large, confident crops count most.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import supervision as sv

from reidcam.app.config import ReidConfig

TrackletKey = tuple[str, int]  # (camera id, local track id)


@dataclass
class KeptCrop:
    """A crop kept for the identity's contact sheet."""

    quality: float
    frame: int
    image: np.ndarray


@dataclass
class Tracklet:
    """One local track: its time span, its appearance and, once associated, its global id."""

    camera_id: str
    local_id: int
    first_frame: int
    first_time: float
    last_frame: int = 0
    last_time: float = 0.0
    boxes: int = 0
    crops: int = 0
    embedding_sum: np.ndarray | None = None
    weight_sum: float = 0.0
    global_id: int | None = None
    closed: bool = False
    db_id: int | None = None
    kept_crops: list[KeptCrop] = field(default_factory=list)

    @property
    def key(self) -> TrackletKey:
        return (self.camera_id, self.local_id)

    @property
    def embedding(self) -> np.ndarray | None:
        """Quality-weighted mean of the crop embeddings, L2-normalised; None before the first crop."""
        return normalised(self.embedding_sum)

    def observe(self, frame: int, timestamp: float) -> None:
        self.last_frame = frame
        self.last_time = timestamp
        self.boxes += 1

    def add_embedding(self, vector: np.ndarray, quality: float) -> None:
        weighted = vector.astype(np.float64) * quality
        self.embedding_sum = weighted if self.embedding_sum is None else self.embedding_sum + weighted
        self.weight_sum += quality
        self.crops += 1

    def keep_crop(self, crop: KeptCrop, limit: int) -> None:
        """Keep the ``limit`` best crops seen so far."""
        if limit <= 0:
            return
        self.kept_crops.append(crop)
        self.kept_crops.sort(key=lambda kept: kept.quality, reverse=True)
        del self.kept_crops[limit:]

    def shared_time(self, other: Tracklet) -> float:
        """Seconds both spans cover; 0 when they touch at one instant, negative for the gap between."""
        return min(self.last_time, other.last_time) - max(self.first_time, other.first_time)


def normalised(vector: np.ndarray | None) -> np.ndarray | None:
    if vector is None:
        return None
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else None


class TrackletBook:
    """Every tracklet of the run, keyed by (camera, local id); closes tracks that went quiet.

    The open ones are also kept apart, so that a step costs time in the live tracks, not in
    every track of the run so far.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tracklets: dict[TrackletKey, Tracklet] = {}
        self._open: dict[TrackletKey, Tracklet] = {}
        self._camera_clock: dict[str, float] = {}

    def observe(self, camera_id: str, frame: int, timestamp: float, track_ids: Iterable[int]) -> list[Tracklet]:
        """Record the tracks seen in a frame; returns the tracklets that start here."""
        self._camera_clock[camera_id] = timestamp
        started = []
        for local_id in track_ids:
            key = (camera_id, int(local_id))
            tracklet = self.tracklets.get(key)
            if tracklet is None:
                tracklet = Tracklet(camera_id, int(local_id), first_frame=frame, first_time=timestamp)
                self.tracklets[key] = tracklet
                self._open[key] = tracklet
                started.append(tracklet)
            tracklet.observe(frame, timestamp)
        return started

    def get(self, camera_id: str, local_id: int) -> Tracklet:
        return self.tracklets[(camera_id, int(local_id))]

    def close_quiet(self) -> list[Tracklet]:
        """Close the tracklets unseen for ``timeout_s`` on their own camera's clock."""
        quiet = [
            tracklet
            for tracklet in self._open.values()
            if self._camera_clock[tracklet.camera_id] - tracklet.last_time > self.timeout_s
        ]
        return self._close(quiet)

    def close_all(self) -> list[Tracklet]:
        return self._close(list(self._open.values()))

    def open_tracklets(self) -> list[Tracklet]:
        return list(self._open.values())

    def _close(self, tracklets: list[Tracklet]) -> list[Tracklet]:
        for tracklet in tracklets:
            tracklet.closed = True
            del self._open[tracklet.key]
        return tracklets


@dataclass(frozen=True)
class CropCandidate:
    """A box of a frame worth embedding, with its quality weight."""

    camera_id: str
    local_id: int
    frame: int
    crop: np.ndarray
    quality: float


def select_crops(
    camera_id: str,
    frame_index: int,
    image: np.ndarray,
    tracks: sv.Detections,
    book: TrackletBook,
    config: ReidConfig,
) -> list[CropCandidate]:
    """The crops of this frame to embed: each live track every ``every_k_frames`` frames, good boxes only,
    until the tracklet has ``max_crops_per_tracklet`` (a CPU budget: a dozen good crops describe a
    walker about as well as a hundred)."""
    if len(tracks) == 0:
        return []
    height, width = image.shape[:2]
    covered = _covered_fraction(tracks.xyxy)
    confidences = tracks.confidence if tracks.confidence is not None else np.ones(len(tracks), dtype=np.float32)
    candidates = []
    for row, (box, local_id) in enumerate(zip(tracks.xyxy, tracks.tracker_id)):
        tracklet = book.get(camera_id, int(local_id))
        if (frame_index - tracklet.first_frame) % config.every_k_frames:
            continue
        if config.max_crops_per_tracklet is not None and tracklet.crops >= config.max_crops_per_tracklet:
            continue
        if not _usable(box, width, height, covered[row], config):
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        quality = float(confidences[row]) * min(1.0, (y2 - y1) / config.reference_height)
        candidates.append(CropCandidate(camera_id, int(local_id), frame_index, image[y1:y2, x1:x2].copy(), quality))
    return candidates


def _usable(box: np.ndarray, width: int, height: int, covered: float, config: ReidConfig) -> bool:
    x1, y1, x2, y2 = box
    margin = config.edge_margin
    if x2 - x1 < config.min_crop_width or y2 - y1 < config.min_crop_height:
        return False
    if x1 < margin or y1 < margin or x2 > width - margin or y2 > height - margin:
        return False
    return covered <= config.max_overlap


def _covered_fraction(xyxy: np.ndarray) -> np.ndarray:
    """For each box, the largest fraction of its area covered by one other box."""
    count = len(xyxy)
    if count < 2:
        return np.zeros(count, dtype=np.float32)
    x1 = np.maximum(xyxy[:, None, 0], xyxy[None, :, 0])
    y1 = np.maximum(xyxy[:, None, 1], xyxy[None, :, 1])
    x2 = np.minimum(xyxy[:, None, 2], xyxy[None, :, 2])
    y2 = np.minimum(xyxy[:, None, 3], xyxy[None, :, 3])
    intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    fraction = intersection / np.maximum(areas[:, None], 1e-9)
    np.fill_diagonal(fraction, 0.0)
    return fraction.max(axis=1)
