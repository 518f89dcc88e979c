"""Tracklets: which crops are worth embedding, the quality-weighted embedding, closing quiet tracks."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from reidcam.app.config import ReidConfig
from reidcam.tracking.tracklets import Tracklet, TrackletBook, select_crops

IMAGE = np.zeros((200, 300, 3), dtype=np.uint8)


def tracks(boxes: list[list[float]], confidences: list[float] | None = None) -> sv.Detections:
    found = sv.Detections(
        xyxy=np.array(boxes, dtype=np.float32),
        confidence=np.array(confidences or [0.9] * len(boxes), dtype=np.float32),
    )
    found.tracker_id = np.arange(1, len(boxes) + 1)
    return found


def book_with(found: sv.Detections, frame: int = 1) -> TrackletBook:
    book = TrackletBook(timeout_s=1.0)
    book.observe("cam", frame, 0.0, found.tracker_id.tolist())
    return book


def test_small_cut_and_covered_boxes_are_skipped():
    config = ReidConfig(min_crop_height=40, min_crop_width=12, edge_margin=2, max_overlap=0.3)
    found = tracks(
        [
            [20, 20, 50, 120],  # 1: good
            [100, 20, 110, 120],  # 2: too narrow
            [150, 20, 180, 50],  # 3: too short
            [0, 130, 16, 190],  # 4: cut by the left border
            [200, 20, 240, 120],  # 5: half covered by 6
            [220, 20, 260, 120],  # 6: half covered by 5
            [60, 100, 90, 200],  # 7: cut by the bottom border
        ]
    )
    chosen = select_crops("cam", 1, IMAGE, found, book_with(found), config)
    assert [c.local_id for c in chosen] == [1]
    assert chosen[0].crop.shape == (100, 30, 3)


def test_quality_grows_with_confidence_and_height_up_to_the_reference():
    config = ReidConfig(reference_height=128, max_overlap=1.0)
    found = tracks([[10, 10, 40, 74], [60, 10, 90, 190], [120, 10, 150, 74]], confidences=[0.8, 0.8, 0.4])
    qualities = [c.quality for c in select_crops("cam", 1, IMAGE, found, book_with(found), config)]
    assert qualities == pytest.approx([0.8 * 64 / 128, 0.8, 0.4 * 64 / 128])


def test_each_track_every_k_frames_from_its_own_start_until_the_cap():
    config = ReidConfig(every_k_frames=3, max_crops_per_tracklet=2)
    found = tracks([[20, 20, 50, 120]])
    book = book_with(found, frame=5)
    picked = []
    for frame in range(5, 20):
        book.observe("cam", frame, frame / 10, [1])
        for candidate in select_crops("cam", frame, IMAGE, found, book, config):
            picked.append(frame)
            book.get("cam", 1).add_embedding(np.ones(4), candidate.quality)
    assert picked == [5, 8]


def test_embedding_is_the_quality_weighted_mean():
    item = Tracklet("cam", 1, first_frame=1, first_time=0.0)
    assert item.embedding is None
    item.add_embedding(np.array([1.0, 0.0]), quality=3.0)
    item.add_embedding(np.array([0.0, 1.0]), quality=1.0)
    assert item.embedding == pytest.approx(np.array([3.0, 1.0]) / np.sqrt(10))
    assert item.crops == 2 and item.weight_sum == 4.0


def test_quiet_tracklets_close_on_their_own_cameras_clock():
    book = TrackletBook(timeout_s=1.0)
    book.observe("a", 1, 100.0, [1, 2])
    book.observe("b", 1, 500.0, [1])
    book.observe("a", 10, 100.9, [1])
    assert book.close_quiet() == []
    book.observe("a", 12, 101.1, [1])
    closed = book.close_quiet()
    assert [t.key for t in closed] == [("a", 2)]
    assert {t.key for t in book.open_tracklets()} == {("a", 1), ("b", 1)}
    assert {t.key for t in book.close_all()} == {("a", 1), ("b", 1)}
    assert book.get("a", 1).last_frame == 12 and book.get("a", 1).boxes == 3
