"""``detector.overlap``: detection and tracking in a background thread change nothing of what a run
stores or exports, and a source failing mid-run still ends as a one-line error with the run's
records kept. Real runs on the CPU: the INT8 detector, ByteTrack and the tiny ReIDMamba model."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from reidcam.app.run import run_from_config
from reidcam.app.sources import MultiCameraSource
from reidcam.errors import DataError

pytestmark = pytest.mark.slow

FRAMES = 16
STORED = {
    "identities": "SELECT global_id, first_seen, merged_into FROM identities ORDER BY global_id",
    "tracklets": "SELECT camera_id, local_track_id, global_id, first_frame, last_frame, first_time, last_time, "
    "boxes, crops, closed FROM tracklets ORDER BY camera_id, local_track_id",
    "sightings": "SELECT t.camera_id, t.local_track_id, s.frame, s.timestamp, s.x1, s.y1, s.x2, s.y2, s.confidence, "
    "s.global_id, s.foot_x, s.foot_y FROM sightings s JOIN tracklets t ON t.id = s.tracklet_id "
    "ORDER BY s.camera_id, s.frame, s.local_track_id",
    "embeddings": "SELECT t.camera_id, t.local_track_id, e.crops, e.weight, e.vector FROM tracklet_embeddings e "
    "JOIN tracklets t ON t.id = e.tracklet_id ORDER BY t.camera_id, t.local_track_id",
    "events": "SELECT kind, global_id, other_global_id, distance, time FROM identity_events ORDER BY id",
}


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def overlap_config(clips, fast_settings, folder: Path, overlap: bool) -> Path:
    settings = fast_settings(detector={"overlap": overlap}, storage={"commit_every": 2})
    return clips.write_config(folder / "cams.yaml", ["west", "east"], **settings)


def test_overlapped_detection_stores_and_exports_the_same_run(clips, fast_settings, tmp_path):
    outs = {}
    for overlap in (False, True):
        folder = tmp_path / f"overlap_{overlap}"
        cams_yaml = overlap_config(clips, fast_settings, folder, overlap)
        summary = run_from_config(cams_yaml, out_dir=folder / "out", device="cpu", max_frames=FRAMES)
        assert summary.overlap is overlap
        assert summary.frames == {"west": FRAMES, "east": FRAMES}
        outs[overlap] = folder / "out"
    serial, overlapped = outs[False], outs[True]
    for table, sql in STORED.items():
        rows = query(serial / "reidcam.db", sql)
        assert rows, table
        assert query(overlapped / "reidcam.db", sql) == rows, table
    assert (overlapped / "trajectories.csv").read_text() == (serial / "trajectories.csv").read_text()
    assert not [thread for thread in threading.enumerate() if thread.name == "detect-track"]


def fail_after_steps(steps: int):
    """``MultiCameraSource.steps`` that hands out ``steps`` real steps, then loses its camera."""
    real_steps = MultiCameraSource.steps

    def failing(self):
        for number, step in enumerate(real_steps(self)):
            if number == steps:
                raise DataError("camera west: stream lost mid-run")
            yield step

    return failing


def test_a_source_failing_mid_run_is_a_one_line_error_and_keeps_the_records(
    clips, fast_settings, tmp_path, cli, monkeypatch
):
    monkeypatch.setattr(MultiCameraSource, "steps", fail_after_steps(8))
    cams_yaml = overlap_config(clips, fast_settings, tmp_path, overlap=True)
    result = cli("run", "--sources", cams_yaml, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1] == "reidcam: error: camera west: stream lost mid-run"
    assert "Traceback" not in result.stderr, result.stderr
    db = tmp_path / "out" / "reidcam.db"
    assert query(db, "SELECT status FROM runs") == [("failed",)]
    committed = query(db, "SELECT camera_id, frames FROM cameras ORDER BY camera_id")
    assert committed == [("east", 8), ("west", 8)]  # every step before the failure was recorded
    assert query(db, "SELECT count(*) FROM sightings")[0][0] > 0
    alive = {thread.name for thread in threading.enumerate()}
    assert "detect-track" not in alive and not any(name.startswith("camera-") for name in alive)
