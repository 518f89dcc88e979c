"""Per-camera tracking with the real ``trackers`` package on real detections, and the tracked-frames generator."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from reidcam.app.config import CamsConfig, DetectorConfig, TrackerConfig
from reidcam.app.pipeline import tracked_frames
from reidcam.detection.yolo import YoloDetector
from reidcam.errors import ConfigError
from reidcam.tracking.tracker import CameraTracker, TrackerSpec

FPS = 10.0


@pytest.fixture(scope="module")
def detector(detector_weights: Path) -> YoloDetector:
    return YoloDetector(DetectorConfig(weights=str(detector_weights)), device="cpu")


@pytest.fixture(scope="module")
def west_detections(clips, detector):
    """The first 25 frames of the west clip with their detections."""
    capture = cv2.VideoCapture(clips.cameras["west"]["source"])
    images = [capture.read()[1] for _ in range(25)]
    capture.release()
    return images, detector.detect(images)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def run_tracker(kind: str, images, detections, **params):
    tracker = CameraTracker(TrackerSpec.from_config(TrackerConfig(type=kind, params=params)), FPS)
    return [tracker.update(found, image, index / FPS) for index, (image, found) in enumerate(zip(images, detections))]


@pytest.mark.parametrize("kind", ["bytetrack", "botsort", "ocsort", "sort"])
def test_each_tracker_follows_the_walkers_with_stable_ids(kind, west_detections):
    images, detections = west_detections
    tracks = run_tracker(kind, images, detections)
    ids = [tid for frame in tracks for tid in frame.tracker_id.tolist()]
    assert ids and min(ids) >= 1
    people_per_frame = max(len(found) for found in detections)
    assert len(set(ids)) <= people_per_frame + 1  # no id churn on 25 frames of 2 to 4 walkers
    last_box: dict[int, np.ndarray] = {}
    for frame in tracks:
        for box, tid in zip(frame.xyxy, frame.tracker_id):
            if tid in last_box:
                assert box_iou(last_box[tid], box) > 0.4  # a walker moves a few pixels per frame
            last_box[tid] = box
    assert sum(len(frame) for frame in tracks[5:]) >= 0.8 * sum(len(found) for found in detections[5:])


def test_cameras_keep_separate_state(west_detections):
    images, detections = west_detections
    first = run_tracker("bytetrack", images, detections)
    second = run_tracker("bytetrack", images, detections)
    assert [f.tracker_id.tolist() for f in first] == [f.tracker_id.tolist() for f in second]


def test_params_override_defaults_and_unknown_params_are_errors():
    spec = TrackerSpec.from_config(TrackerConfig(type="bytetrack", params={"lost_track_buffer": 10}))
    assert spec.params["lost_track_buffer"] == 10
    assert spec.params["track_activation_threshold"] == 0.4
    with pytest.raises(ConfigError, match="tracker.params.lost_buffer: unknown parameter of bytetrack"):
        TrackerSpec.from_config(TrackerConfig(type="bytetrack", params={"lost_buffer": 10}))


def test_tracked_frames_generator_yields_every_frame_with_tracks(clips, detector):
    config = CamsConfig.model_validate({"cameras": [clips.cameras["west"], clips.cameras["east"]]})
    frames = list(tracked_frames(config, device="cpu", max_frames=8, detector=detector))
    assert sorted((f.camera_id, f.index) for f in frames) == sorted(
        (camera, index) for camera in ("west", "east") for index in range(1, 9)
    )
    for frame in frames:
        assert frame.image.shape[0] == 420
        assert frame.detections.tracker_id is not None and len(frame.detections.tracker_id) == len(frame.detections)
    assert any(len(frame.detections) for frame in frames)
    west_times = [f.timestamp for f in frames if f.camera_id == "west"]
    assert np.allclose(np.diff(west_times), 0.1)
