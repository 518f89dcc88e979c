"""Bad input through the real command line: one line on stderr and exit code 2, or, for one camera
among several, a warning while the run goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NO_RETRY = {"streams": {"retries": 0, "open_timeout_s": 2}}


def reidcam(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "reidcam", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_yaml(path: Path, document: dict | str) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reidcam: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_video(tmp_path):
    cams = write_yaml(tmp_path / "cams.yaml", {"cameras": [{"id": "door", "source": "videos/door.mp4"}]})
    result = reidcam("run", "--sources", cams, cwd=tmp_path)
    assert_one_line_error(result, "camera door: source not found", str(tmp_path / "videos" / "door.mp4"))


def test_unreadable_video(tmp_path):
    (tmp_path / "door.mp4").write_bytes(b"\x00\x01 definitely not a video" * 100)
    cams = write_yaml(tmp_path / "cams.yaml", {"cameras": [{"id": "door", "source": "door.mp4"}]})
    assert_one_line_error(reidcam("run", "--sources", cams, cwd=tmp_path), "camera door:", "cannot be opened")


def test_malformed_cams_yaml(tmp_path):
    cams = write_yaml(tmp_path / "cams.yaml", "cameras:\n  - {id: door, source: door.mp4\n")
    assert_one_line_error(reidcam("run", "--sources", cams, cwd=tmp_path), "cams.yaml: not valid YAML at line")


def test_unknown_key(tmp_path):
    cams = write_yaml(
        tmp_path / "cams.yaml", {"cameras": [{"id": "door", "source": "door.mp4"}], "tracking": {"type": "sort"}}
    )
    assert_one_line_error(
        reidcam("run", "--sources", cams, cwd=tmp_path), "tracking: unknown key; expected one of cameras"
    )


def test_duplicate_camera_id(tmp_path):
    document = {"cameras": [{"id": "door", "source": "a.mp4"}, {"id": "door", "source": "b.mp4"}]}
    cams = write_yaml(tmp_path / "cams.yaml", document)
    assert_one_line_error(reidcam("run", "--sources", cams, cwd=tmp_path), "duplicate camera id 'door'")


@pytest.mark.parametrize("command", ["run", "bench"])
def test_missing_config_file(tmp_path, command):
    assert_one_line_error(reidcam(command, "--sources", tmp_path / "nope.yaml", cwd=tmp_path), "file not found")


def test_bench_of_a_missing_video_names_the_camera(tmp_path):
    cams = write_yaml(tmp_path / "cams.yaml", {"cameras": [{"id": "door", "source": "videos/door.mp4"}]})
    assert_one_line_error(reidcam("bench", "--sources", cams, cwd=tmp_path), "camera door: source not found")


def test_unreachable_stream(tmp_path):
    document = {"cameras": [{"id": "gate", "source": "rtsp://127.0.0.1:9/gate"}], **NO_RETRY}
    cams = write_yaml(tmp_path / "cams.yaml", document)
    assert_one_line_error(
        reidcam("run", "--sources", cams, cwd=tmp_path), "camera gate: stream unreachable", "rtsp://127.0.0.1:9/gate"
    )


def test_missing_detector_weights(tmp_path, clips):
    document = {"cameras": [clips.cameras["west"]], "detector": {"weights": "models/none.tflite"}}
    cams = write_yaml(tmp_path / "cams.yaml", document)
    assert_one_line_error(
        reidcam("run", "--sources", cams, cwd=tmp_path), "detector weights not found", "REIDCAM_DETECTOR_WEIGHTS"
    )


@pytest.mark.slow
def test_dead_cameras_among_several_are_warnings_and_the_run_goes_on(tmp_path, clips, fast_settings):
    document = {
        "cameras": [
            clips.cameras["west"],
            {"id": "gate", "source": "rtsp://127.0.0.1:9/gate"},
            {"id": "lost", "source": "videos/lost.mp4"},
        ],
        **NO_RETRY,
        **fast_settings(),
    }
    cams = write_yaml(tmp_path / "cams.yaml", document)
    result = reidcam("run", "--sources", cams, "--out", tmp_path / "out", "--max-frames", 8, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "camera gate: stream unreachable" in result.stderr and "going on without this camera" in result.stderr
    assert "camera lost: source not found" in result.stderr
    header = (tmp_path / "out" / "trajectories.csv").read_text().splitlines()[0]
    assert header.startswith("global_id,camera_id")
