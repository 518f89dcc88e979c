"""Person detection with the real INT8 YOLOv8n model, weights resolution, ROI and homography geometry."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv

from reidcam.app.config import CameraConfig, DetectorConfig
from reidcam.detection.geometry import CameraGeometry
from reidcam.detection.yolo import ULTRALYTICS_DEFAULT_WEIGHTS, YoloDetector, resolve_detector_weights
from reidcam.errors import ConfigError


@pytest.fixture(scope="module")
def detector(detector_weights: Path) -> YoloDetector:
    return YoloDetector(DetectorConfig(weights=str(detector_weights)), device="cpu")


@pytest.fixture(scope="module")
def street_frames(vtest_video: Path) -> list[np.ndarray]:
    """Three frames of the plaza, far enough apart to show different people."""
    capture = cv2.VideoCapture(str(vtest_video))
    frames = []
    for index in range(300):
        image = capture.read()[1]
        if index in (100, 200, 299):
            frames.append(image)
    capture.release()
    return frames


def test_finds_people_in_every_frame_of_a_batch(detector, street_frames):
    results = detector.detect(street_frames)
    assert len(results) == len(street_frames)
    for frame, found in zip(street_frames, results):
        assert len(found) >= 3  # 5 to 10 people walk in every frame of vtest.avi
        assert (found.class_id == detector.person_class).all()
        assert (found.confidence >= detector.config.confidence).all()
        height, width = frame.shape[:2]
        assert (found.xyxy[:, [0, 2]] >= -1).all() and (found.xyxy[:, [0, 2]] <= width + 1).all()
        assert (found.xyxy[:, 3] > found.xyxy[:, 1]).all() and (found.xyxy[:, 3] <= height + 1).all()


def test_batch_gives_the_same_boxes_as_one_by_one(detector, street_frames):
    batched = detector.detect(street_frames)
    for frame, together in zip(street_frames, batched):
        (alone,) = detector.detect([frame])
        assert np.allclose(alone.xyxy, together.xyxy, atol=1e-3)


def test_empty_scene_gives_no_boxes(detector):
    (found,) = detector.detect([np.full((240, 320, 3), 127, dtype=np.uint8)])
    assert len(found) == 0


def test_weights_resolution_order(monkeypatch, tmp_path, detector_weights):
    monkeypatch.setenv("REIDCAM_DETECTOR_WEIGHTS", "/models/from-env.onnx")
    assert resolve_detector_weights("/models/from-config.pt") == "/models/from-config.pt"
    assert resolve_detector_weights(None) == "/models/from-env.onnx"
    monkeypatch.delenv("REIDCAM_DETECTOR_WEIGHTS")
    monkeypatch.setenv("REIDCAM_SHARED", str(detector_weights.parents[2]))
    assert resolve_detector_weights(None) == str(detector_weights)
    monkeypatch.setenv("REIDCAM_SHARED", str(tmp_path))
    assert resolve_detector_weights(None) == ULTRALYTICS_DEFAULT_WEIGHTS


def test_missing_weights_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        YoloDetector(DetectorConfig(weights=str(tmp_path / "nope.pt")), device="cpu")
    message = str(caught.value)
    assert "detector weights not found" in message and "REIDCAM_DETECTOR_WEIGHTS" in message and "\n" not in message


@pytest.mark.parametrize("name", ["broken.pt", "broken.tflite"])
def test_corrupt_weights_are_a_one_line_error(tmp_path, name):
    weights = tmp_path / name
    weights.write_bytes(b"not a model" * 50)
    with pytest.raises(ConfigError) as caught:
        YoloDetector(DetectorConfig(weights=str(weights)), device="cpu")
    message = str(caught.value)
    assert f"detector weights '{weights}' cannot be loaded" in message and "\n" not in message


def _online() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="a network is reachable: Ultralytics would download the default weights")
def test_default_weights_offline_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        YoloDetector(DetectorConfig(weights=ULTRALYTICS_DEFAULT_WEIGHTS), device="cpu")
    message = str(caught.value)
    assert "cannot be downloaded (offline)" in message and "detector.weights" in message and "\n" not in message


def test_roi_keeps_boxes_whose_foot_is_inside():
    geometry = CameraGeometry.from_config(
        CameraConfig(id="c", source="c.mp4", roi=[(0, 0), (100, 0), (100, 100), (0, 100)])
    )
    boxes = sv.Detections(
        xyxy=np.array([[10, 10, 30, 90], [10, 50, 30, 150], [150, 10, 170, 60]], dtype=np.float32),
        confidence=np.array([0.9, 0.8, 0.7], dtype=np.float32),
    )
    kept = geometry.inside_roi(boxes)
    assert kept.xyxy.tolist() == [[10, 10, 30, 90]]


def test_foot_points_through_the_homography():
    plain = CameraGeometry.from_config(CameraConfig(id="c", source="c.mp4"))
    scaled = CameraGeometry.from_config(
        CameraConfig.model_validate(
            {
                "id": "c",
                "source": "c.mp4",
                "homography": {
                    "image_points": [[0, 0], [200, 0], [200, 100], [0, 100]],
                    "ground_points": [[0, 0], [10, 0], [10, 5], [0, 5]],
                },
            }
        )
    )
    boxes = np.array([[40, 20, 60, 100], [100, 0, 140, 50]], dtype=np.float32)
    assert plain.ground_points(boxes).tolist() == [[50, 100], [120, 50]]
    assert np.allclose(scaled.ground_points(boxes), [[2.5, 5.0], [6.0, 2.5]], atol=1e-4)


def test_degenerate_homography_is_a_config_error():
    camera = CameraConfig.model_validate(
        {
            "id": "c",
            "source": "c.mp4",
            "homography": {
                "image_points": [[0, 0], [1, 1], [2, 2], [3, 3]],
                "ground_points": [[0, 0], [1, 0], [1, 1], [0, 1]],
            },
        }
    )
    with pytest.raises(ConfigError, match="degenerate"):
        CameraGeometry.from_config(camera)
