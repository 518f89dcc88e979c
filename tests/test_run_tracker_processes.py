"""``tracker.processes``: a run whose trackers work in processes stores what a run tracking in its main thread
stores, and a tracker process killed mid-run ends the run as a failing camera does: a one-line error, the
commits made so far kept, no process left. Real runs on the CPU: the INT8 detector, ByteTrack, SQLite."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from reidcam.app.run import run_from_config
from reidcam.tracking.tracker_pool import TrackerPool

pytestmark = pytest.mark.slow

FRAMES = 16
STORED = {
    "tracklets": "SELECT camera_id, local_track_id, global_id, first_frame, last_frame, first_time, last_time, "
    "boxes, closed FROM tracklets ORDER BY camera_id, local_track_id",
    "sightings": "SELECT t.camera_id, t.local_track_id, s.frame, s.timestamp, s.x1, s.y1, s.x2, s.y2, s.confidence, "
    "s.global_id, s.foot_x, s.foot_y FROM sightings s JOIN tracklets t ON t.id = s.tracklet_id "
    "ORDER BY s.camera_id, s.frame, s.local_track_id",
}


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def processes_config(clips, fast_settings, folder: Path, processes: int) -> Path:
    """Two cameras, association by space and time only (no ReID model to load: the runs stay short)."""
    settings = fast_settings(
        tracker={"processes": processes}, association={"mode": "spacetime"}, storage={"commit_every": 2}
    )
    return clips.write_config(folder / "cams.yaml", ["west", "east"], **settings)


def test_tracking_in_processes_stores_the_same_run(clips, fast_settings, tmp_path, caplog):
    outs = {}
    for processes in (0, 2):
        folder = tmp_path / f"processes_{processes}"
        cams_yaml = processes_config(clips, fast_settings, folder, processes)
        with caplog.at_level(logging.INFO, logger="reidcam.tracking"):
            summary = run_from_config(
                cams_yaml, out_dir=folder / "out", device="cpu", max_frames=FRAMES, show_progress=False
            )
        assert summary.frames == {"west": FRAMES, "east": FRAMES}
        assert ("tracking 2 cameras in 2 worker processes" in caplog.text) is (processes == 2)
        outs[processes] = folder / "out"
    for table, sql in STORED.items():
        rows = query(outs[0] / "reidcam.db", sql)
        assert rows, table
        assert query(outs[2] / "reidcam.db", sql) == rows, table
    assert (outs[2] / "trajectories.csv").read_text() == (outs[0] / "trajectories.csv").read_text()


def kill_a_worker_at_step(step: int, pids: list[int]):
    """``TrackerPool.track`` that kills the pool's first process before its ``step``-th call."""
    real_track = TrackerPool.track
    calls = 0

    def track(self, inputs):
        nonlocal calls
        calls += 1
        pids[:] = self.pids
        if calls == step:
            os.kill(pids[0], signal.SIGKILL)
        return real_track(self, inputs)

    return track


def test_a_killed_tracker_process_is_a_one_line_error_and_keeps_the_records(
    clips, fast_settings, tmp_path, cli, monkeypatch
):
    pids: list[int] = []
    monkeypatch.setattr(TrackerPool, "track", kill_a_worker_at_step(9, pids))
    cams_yaml = processes_config(clips, fast_settings, tmp_path, processes=2)
    result = cli("run", "--sources", cams_yaml, "--out", tmp_path / "out", "--device", "cpu")
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "reidcam: error: tracker process 0 (cameras west): ended unexpectedly (killed by SIGKILL)"
    )
    assert "Traceback" not in result.stderr, result.stderr
    db = tmp_path / "out" / "reidcam.db"
    assert query(db, "SELECT status FROM runs") == [("failed",)]
    committed = query(db, "SELECT camera_id, frames FROM cameras ORDER BY camera_id")
    assert committed == [("east", 8), ("west", 8)]  # the 8 steps tracked before the kill, committed by twos
    assert query(db, "SELECT count(*) FROM sightings")[0][0] > 0
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
