"""cams.yaml validation: defaults, path resolution, and one-line errors that name file, key and expectation."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from reidcam.app.config import load_config
from reidcam.errors import ConfigError

SMALLEST = "cameras: [{id: cam1, source: videos/entrance.mp4}, {id: cam2, source: rtsp://127.0.0.1:8554/cam2}]\n"


def write(folder: Path, text: str, name: str = "cams.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_smallest_file_gets_defaults_and_paths_resolve_against_its_folder(tmp_path):
    config = load_config(write(tmp_path, SMALLEST))
    cam1, cam2 = config.cameras
    assert cam1.source == str(tmp_path / "videos" / "entrance.mp4")
    assert not cam1.is_live
    assert cam2.source == "rtsp://127.0.0.1:8554/cam2" and cam2.is_live
    assert config.tracker.type == "bytetrack"
    assert config.association.mode == "combined"
    assert config.reid.model == "reidmamba_tiny" and config.reid.weights is None
    assert config.topology == []


def test_full_camera_entry_and_sections(tmp_path):
    text = """
cameras:
  - id: door
    source: 0
    start_time: "2026-01-15T10:00:00+01:00"
    fps: 12.5
    roi: [[0, 0], [100, 0], [100, 80]]
    homography:
      image_points: [[0, 0], [100, 0], [100, 100], [0, 100]]
      ground_points: [[0, 0], [5, 0], [5, 5], [0, 5]]
  - {id: hall, source: clips/hall, start_time: "2026-01-15T09:00:03"}
topology:
  - {between: [door, hall], min_transit_s: 2, max_transit_s: 20}
detector: {weights: models/det.onnx, imgsz: 320}
tracker: {type: ocsort, params: {delta_t: 2}}
reid: {model: models/osnet.onnx, every_k_frames: 3}
association: {mode: spacetime, max_transit_s: 15}
storage: {db: runs/store.db}
out: results
"""
    config = load_config(write(tmp_path, text))
    door, hall = config.cameras
    assert door.source == 0 and door.is_live
    assert door.start_time == datetime(2026, 1, 15, 9, 0, tzinfo=timezone.utc)
    assert hall.start_time == datetime(2026, 1, 15, 9, 0, 3, tzinfo=timezone.utc)
    assert hall.source == str(tmp_path / "clips" / "hall")
    assert config.detector.weights == str(tmp_path / "models" / "det.onnx")
    assert config.reid.model == str(tmp_path / "models" / "osnet.onnx") and config.reid.is_onnx
    assert config.storage.db == str(tmp_path / "runs" / "store.db")
    assert config.out == str(tmp_path / "results")
    assert config.topology[0].between == ("door", "hall")


def test_model_names_without_a_folder_stay_names(tmp_path):
    config = load_config(write(tmp_path, SMALLEST + "detector: {weights: yolov8n.pt}\n"))
    assert config.detector.weights == "yolov8n.pt"


def test_unknown_key_names_the_key_and_the_keys_expected(tmp_path):
    message = config_error(write(tmp_path, SMALLEST + "detector: {wieghts: x.pt}\n"))
    assert "detector.wieghts: unknown key" in message
    assert "weights" in message and "confidence" in message


def test_unknown_key_in_a_camera(tmp_path):
    message = config_error(write(tmp_path, "cameras: [{id: a, source: a.mp4, colour: red}]\n"))
    assert "cameras[0].colour: unknown key" in message and "start_time" in message


def test_duplicate_camera_id(tmp_path):
    message = config_error(write(tmp_path, "cameras: [{id: a, source: a.mp4}, {id: a, source: b.mp4}]\n"))
    assert "cameras: duplicate camera id 'a'" in message


def test_malformed_yaml_names_the_line(tmp_path):
    message = config_error(write(tmp_path, "cameras:\n  - {id: a, source: a.mp4\n"))
    assert "not valid YAML at line" in message


def test_wrong_types_name_each_key_and_what_was_expected(tmp_path):
    text = "cameras: [{id: a, source: a.mp4, fps: fast, start_time: soon}]\nassociation: {mode: magic}\n"
    message = config_error(write(tmp_path, text))
    assert "cameras[0].fps: expected a valid number" in message and "'fast'" in message
    assert "cameras[0].start_time:" in message
    assert "association.mode: expected 'combined', 'appearance' or 'spacetime'" in message


def test_source_of_the_wrong_kind_is_named_once(tmp_path):
    message = config_error(write(tmp_path, "cameras: [{id: a, source: [1, 2]}]\n"))
    assert message.count("cameras[0].source") == 1


def test_missing_cameras_and_empty_file(tmp_path):
    assert "cameras: required key is missing" in config_error(write(tmp_path, "out: x\n"))
    assert "expected a mapping" in config_error(write(tmp_path, "", name="empty.yaml"))


def test_missing_file(tmp_path):
    assert "file not found" in config_error(tmp_path / "nowhere.yaml")


def test_topology_must_name_known_cameras_and_sane_times(tmp_path):
    unknown = SMALLEST + "topology: [{between: [cam1, cam9]}]\n"
    assert "unknown camera 'cam9'" in config_error(write(tmp_path, unknown))
    backwards = SMALLEST + "topology: [{between: [cam1, cam2], min_transit_s: 9, max_transit_s: 3}]\n"
    assert "max_transit_s must be >= min_transit_s" in config_error(write(tmp_path, backwards, "b.yaml"))


def test_homography_needs_four_points(tmp_path):
    text = (
        "cameras: [{id: a, source: a.mp4, homography: "
        "{image_points: [[0,0],[1,0],[1,1]], ground_points: [[0,0],[1,0],[1,1],[0,1]]}}]\n"
    )
    assert "cameras[0].homography.image_points" in config_error(write(tmp_path, text))


def test_the_example_config_is_valid_and_documents_the_defaults():
    from reidcam.app.config import CamsConfig

    example = load_config(Path(__file__).resolve().parents[1] / "configs" / "cams.example.yaml")
    defaults = CamsConfig(cameras=example.cameras)
    for section in ("detector", "tracker", "reid", "association", "storage", "streams"):
        assert getattr(example, section) == getattr(defaults, section), section
    assert example.sync_tolerance_s is None and example.out is None


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (0, 0), (3, 3)])
def test_tracker_processes_is_a_count_or_auto(tmp_path, value, expected):
    config = load_config(write(tmp_path, SMALLEST + f"tracker: {{processes: {value}}}\n"))
    assert config.tracker.processes == expected


@pytest.mark.parametrize("value", ["-1", "many", "1.5", "true"])
def test_tracker_processes_rejects_anything_else_in_one_line(tmp_path, value):
    message = config_error(write(tmp_path, SMALLEST + f"tracker: {{processes: {value}}}\n"))
    assert "tracker.processes:" in message and "'auto'" in message


def test_tracker_processes_defaults_to_auto(tmp_path):
    assert load_config(write(tmp_path, SMALLEST)).tracker.processes == "auto"
