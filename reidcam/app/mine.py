"""``reidcam mine``: a Market-1501-layout ReID dataset from one's own footage.

Every camera of cams.yaml goes through detection and per-camera tracking (no ReID). Each
tracklet becomes one identity (pid); its camera is the camera's position in cams.yaml (c1, c2,
...). Of its boxes, only those tall enough, clear of the frame border (a cut person is a bad
training image) and not much covered by another box are candidates, and a few of them, spread
evenly over the tracklet's life, are kept.

Most tracklets go to ``bounding_box_train/``. A held-out share is split in time: the first crops
become ``query/``, the last ones ``bounding_box_test/``, with the middle left out so the two are
well apart. The standard protocol ignores gallery images of the query's own camera, so the late
part of a held-out tracklet is filed under a pseudo camera ``c<N + cam>`` (N = number of
cameras): "same camera, later time". ``summary.json`` records this and the counts.

Caveat, by construction: a person seen in several tracklets (two cameras, or a track broken by
an occlusion) gets several pids. That is label noise for training and, in the held-out part, a
correct match counted as wrong; the tracker settings in cams.yaml decide how often it happens.

Memory stays bounded on long footage: a live tracklet holds at most ``4 x crops_per_tracklet``
candidates (thinned in time as it grows), and a tracklet unseen for ``close_after_s`` is written
to a staging folder and dropped from memory.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from reidcam.errors import ConfigError

logger = logging.getLogger(__name__)

MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
STAGING = "_tracklets"


@dataclass(frozen=True)
class MiningOptions:
    crops_per_tracklet: int = 8
    min_height: int = 64
    min_width: int = 16
    edge_margin: int = 3  # a box this close to the frame border is cut off: dropped
    max_overlap: float = 0.3  # a box this much covered by another box is occluded: dropped
    min_crops: int = 2  # tracklets with fewer good crops are dropped
    query_fraction: float = 0.2
    close_after_s: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crops_per_tracklet < 2:
            raise ConfigError("--crops-per-tracklet must be at least 2")
        if self.min_height < 1:
            raise ConfigError("--min-height must be positive")
        if not 0.0 <= self.query_fraction < 1.0:
            raise ConfigError("--query-fraction must be in [0, 1)")


@dataclass(frozen=True)
class Crop:
    frame: int
    image: np.ndarray


@dataclass
class TrackletCrops:
    """The candidate crops of one live tracklet, kept evenly spread in time within a fixed budget."""

    camera_id: str
    local_id: int
    capacity: int
    last_seen: float = 0.0
    stride: int = 1
    crops: list[Crop] = field(default_factory=list)

    def offer(self, crop: Crop) -> None:
        if self.crops and crop.frame - self.crops[-1].frame < self.stride:
            return
        self.crops.append(crop)
        if len(self.crops) > self.capacity:
            self.crops = self.crops[::2]
            self.stride *= 2

    def pick(self, count: int) -> list[Crop]:
        """``count`` crops (or all, if fewer) spread evenly from the first to the last."""
        if len(self.crops) <= count:
            return list(self.crops)
        positions = np.unique(np.linspace(0, len(self.crops) - 1, count).round().astype(int))
        return [self.crops[i] for i in positions]


@dataclass(frozen=True)
class StagedTracklet:
    camera_id: str
    local_id: int
    folder: Path
    frames: tuple[int, ...]


@dataclass
class MiningSummary:
    cameras: dict[str, int]
    options: dict
    frames: dict[str, int] = field(default_factory=dict)
    tracklets_seen: int = 0
    tracklets_too_few_crops: int = 0
    train_ids: int = 0
    train_images: int = 0
    query_ids: int = 0
    query_images: int = 0
    gallery_images: int = 0
    pseudo_cameras: dict[str, str] = field(default_factory=dict)


def usable_boxes(xyxy: np.ndarray, width: int, height: int, options: MiningOptions) -> np.ndarray:
    """Boolean mask: big enough, clear of the frame border, not much covered by another box."""
    if len(xyxy) == 0:
        return np.zeros(0, dtype=bool)
    x1, y1, x2, y2 = xyxy.T
    margin = options.edge_margin
    big = (y2 - y1 >= options.min_height) & (x2 - x1 >= options.min_width)
    inside = (x1 >= margin) & (y1 >= margin) & (x2 <= width - margin) & (y2 <= height - margin)
    return big & inside & (covered_fraction(xyxy) <= options.max_overlap)


def covered_fraction(xyxy: np.ndarray) -> np.ndarray:
    """For each box, the largest share of its area inside one other box."""
    if len(xyxy) < 2:
        return np.zeros(len(xyxy))
    lo = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])
    hi = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
    intersection = np.clip(hi - lo, 0, None).prod(axis=2)
    areas = np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
    share = intersection / np.maximum(areas[:, None], 1e-9)
    np.fill_diagonal(share, 0.0)
    return share.max(axis=1)


class TrackletMiner:
    """Collects crops from tracked frames and stages finished tracklets on disk."""

    def __init__(self, staging: Path, options: MiningOptions) -> None:
        self.staging = staging
        self.options = options
        self.live: dict[tuple[str, int], TrackletCrops] = {}
        self.staged: list[StagedTracklet] = []
        self.too_few = 0
        self.seen = 0

    def observe(self, camera_id: str, frame: int, timestamp: float, image: np.ndarray, xyxy: np.ndarray,
                track_ids: Iterable[int]) -> None:
        height, width = image.shape[:2]
        usable = usable_boxes(xyxy, width, height, self.options)
        for box, track_id, ok in zip(xyxy, track_ids, usable):
            tracklet = self._tracklet(camera_id, int(track_id))
            tracklet.last_seen = timestamp
            if ok:
                x1, y1, x2, y2 = (int(round(v)) for v in box)
                tracklet.offer(Crop(frame, image[y1:y2, x1:x2].copy()))
        self._close_quiet(timestamp)

    def finish(self) -> list[StagedTracklet]:
        for key in list(self.live):
            self._stage(self.live.pop(key))
        return self.staged

    def _tracklet(self, camera_id: str, track_id: int) -> TrackletCrops:
        key = (camera_id, track_id)
        if key not in self.live:
            self.live[key] = TrackletCrops(camera_id, track_id, capacity=4 * self.options.crops_per_tracklet)
            self.seen += 1
        return self.live[key]

    def _close_quiet(self, now: float) -> None:
        quiet = [key for key, t in self.live.items() if now - t.last_seen > self.options.close_after_s]
        for key in quiet:
            self._stage(self.live.pop(key))

    def _stage(self, tracklet: TrackletCrops) -> None:
        crops = tracklet.pick(self.options.crops_per_tracklet)
        if len(crops) < self.options.min_crops:
            self.too_few += 1
            return
        folder = self.staging / f"{tracklet.camera_id}__{tracklet.local_id}"
        folder.mkdir(parents=True, exist_ok=True)
        for crop in crops:
            cv2.imwrite(str(folder / f"{crop.frame:06d}.jpg"), crop.image)
        self.staged.append(StagedTracklet(tracklet.camera_id, tracklet.local_id, folder, tuple(c.frame for c in crops)))


def split_held_out(tracklets: list[StagedTracklet], fraction: float, seed: int) -> set[tuple[str, int]]:
    """The tracklets held out for query/gallery: a seeded random share of those with 3+ crops."""
    eligible = sorted((t.camera_id, t.local_id) for t in tracklets if len(t.frames) >= 3)
    if fraction <= 0 or len(eligible) < 2:
        return set()
    count = min(max(1, round(fraction * len(tracklets))), len(eligible) - 1)
    return set(random.Random(seed).sample(eligible, count))


def query_gallery_frames(frames: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First quarter (at least one) for query, last half for gallery; the middle is left out."""
    query = frames[: max(1, len(frames) // 4)]
    gallery = frames[len(frames) - max(1, len(frames) // 2):]
    return query, gallery


def write_market_layout(
    out_dir: Path, tracklets: list[StagedTracklet], camera_numbers: dict[str, int], options: MiningOptions,
    summary: MiningSummary,
) -> None:
    """Move the staged crops into the Market folders, one pid per tracklet."""
    held_out = split_held_out(tracklets, options.query_fraction, options.seed)
    for split in MARKET_SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    ordered = sorted(tracklets, key=lambda t: (camera_numbers[t.camera_id], t.local_id))
    pid = 0
    for tracklet in ordered:
        pid += 1
        cam = camera_numbers[tracklet.camera_id]
        if (tracklet.camera_id, tracklet.local_id) in held_out:
            query, gallery = query_gallery_frames(tracklet.frames)
            _place(tracklet, query, out_dir / "query", pid, cam, 1)
            _place(tracklet, gallery, out_dir / "bounding_box_test", pid, cam + len(camera_numbers), 2)
            summary.query_ids += 1
            summary.query_images += len(query)
            summary.gallery_images += len(gallery)
        else:
            _place(tracklet, tracklet.frames, out_dir / "bounding_box_train", pid, cam, 1)
            summary.train_ids += 1
            summary.train_images += len(tracklet.frames)
    summary.pseudo_cameras = {
        f"c{number + len(camera_numbers)}": f"{camera_id}, later part of held-out tracklets (gallery)"
        for camera_id, number in camera_numbers.items()
    }


def _place(tracklet: StagedTracklet, frames: Iterable[int], folder: Path, pid: int, cam: int, sequence: int) -> None:
    for frame in frames:
        name = f"{pid:04d}_c{cam}s{sequence}_{frame:06d}_00.jpg"
        shutil.move(str(tracklet.folder / f"{frame:06d}.jpg"), str(folder / name))


def _check_out_dir(out_dir: Path) -> None:
    for split in (*MARKET_SPLITS, STAGING):
        folder = out_dir / split
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"--out {out_dir}: {split}/ is not empty; choose a new folder")


def mine_dataset(
    sources: Path, out_dir: Path, options: MiningOptions, max_frames: int | None = None, device: str = "auto"
) -> MiningSummary:
    """Detect and track every camera of ``sources``, then write the Market-layout dataset."""
    from reidcam.app.config import load_config
    from reidcam.app.pipeline import tracked_frames

    config = load_config(sources)
    camera_numbers = {camera.id: number for number, camera in enumerate(config.cameras, start=1)}
    _check_out_dir(out_dir)
    summary = MiningSummary(cameras=dict(camera_numbers), options=asdict(options))
    miner = TrackletMiner(out_dir / STAGING, options)
    for tracked in tracked_frames(config, device=device, max_frames=max_frames):
        summary.frames[tracked.camera_id] = tracked.index
        ids = tracked.detections.tracker_id if tracked.detections.tracker_id is not None else []
        miner.observe(tracked.camera_id, tracked.index, tracked.timestamp, tracked.image,
                      np.asarray(tracked.detections.xyxy, dtype=np.float64).reshape(-1, 4), ids)
        if tracked.index % 200 == 0:
            logger.info("%s: frame %d, %d tracklets so far", tracked.camera_id, tracked.index, miner.seen)
    staged = miner.finish()
    summary.tracklets_seen = miner.seen
    summary.tracklets_too_few_crops = miner.too_few
    write_market_layout(out_dir, staged, camera_numbers, options, summary)
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def mine_dataset_cli(
    sources: Path, out_dir: Path, max_frames: int | None = None, crops_per_tracklet: int = 8, min_height: int = 64,
    query_fraction: float = 0.2, device: str = "auto", seed: int = 0,
) -> MiningSummary:
    options = MiningOptions(
        crops_per_tracklet=crops_per_tracklet, min_height=min_height, query_fraction=query_fraction, seed=seed
    )
    summary = mine_dataset(sources, out_dir, options, max_frames=max_frames, device=device)
    logger.info(
        "%s: %d train ids (%d images), %d held-out ids (%d query, %d gallery images); %d of %d tracklets "
        "had too few good crops", out_dir, summary.train_ids, summary.train_images, summary.query_ids,
        summary.query_images, summary.gallery_images, summary.tracklets_too_few_crops, summary.tracklets_seen,
    )
    return summary
