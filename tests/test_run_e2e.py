"""``reidcam run`` end to end on the CPU: real clips, the INT8 detector, ByteTrack, the tiny ReIDMamba
model (random weights until trained ones ship), cross-camera association and a real SQLite file.

The constructed crossing case: the ``replay`` camera shows the window of ``west`` again, with the
same look, on a clock that starts two seconds after ``west``'s clip ends. Every person of ``west``
so walks through ``replay`` later; who is who is known box by box (same frame number, same box).
Appearance alone is ambiguous here (several people, a random-weight model); what makes the ids
carry over is the association: the tracklet's embedding against the gallery, the Hungarian
assignment of tracklets maturing together, the same-moment rule (two people seen together in
``west`` cannot be one identity) and the topology's transit window.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import pytest

from reidcam.app.pipeline import late_frame_rate
from reidcam.app.run import run_from_config

pytestmark = pytest.mark.slow

CONTRACT_HEADER = "global_id,camera_id,local_track_id,frame,timestamp,x1,y1,x2,y2,confidence,foot_x,foot_y"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def main_run(clips, fast_settings, tmp_path_factory):
    """One run over west, east and replay, with annotated videos and contact sheets."""
    folder = tmp_path_factory.mktemp("run")
    topology = [
        {"between": ["west", "replay"], "min_transit_s": 0, "max_transit_s": 10},
        {"between": ["west", "east"], "min_transit_s": 0, "max_transit_s": 30},
    ]
    cams_yaml = clips.write_config(
        folder / "cams.yaml", ["west", "east", "replay"], topology=topology, **fast_settings()
    )
    summary = run_from_config(
        cams_yaml, out_dir=folder / "out", device="cpu", write_video=True, write_contact_sheets=True
    )
    return summary, folder / "out"


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def query(db: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, args).fetchall()


def iou(a: dict, b: dict) -> float:
    ax1, ay1, ax2, ay2 = (float(a[k]) for k in ("x1", "y1", "x2", "y2"))
    bx1, by1, bx2, by2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def test_csv_has_the_contract_header_and_rows_of_every_camera(main_run):
    summary, out = main_run
    csv_path = out / "trajectories.csv"
    assert summary.csv_path == csv_path
    assert csv_path.read_text().splitlines()[0] == CONTRACT_HEADER
    rows = read_csv(csv_path)
    assert {row["camera_id"] for row in rows} == {"west", "east", "replay"}
    assert summary.frames == {"west": 40, "east": 40, "replay": 40}
    for row in rows:
        assert row["timestamp"].endswith("Z") and 1 <= int(row["frame"]) <= 40
        assert float(row["foot_y"]) == pytest.approx(float(row["y2"]), abs=0.01)


def test_every_global_id_of_the_csv_is_in_the_database(main_run):
    summary, out = main_run
    db = out / "reidcam.db"
    rows = read_csv(out / "trajectories.csv")
    run_id = summary.run_id
    identities = {gid for (gid,) in query(db, "SELECT global_id FROM identities WHERE run_id = ?", run_id)}
    assert {int(row["global_id"]) for row in rows} <= identities
    assert query(db, "SELECT status FROM runs WHERE id = ?", run_id) == [("finished",)]
    assert query(db, "SELECT count(*) FROM sightings WHERE run_id = ? AND global_id IS NOT NULL", run_id) == [
        (len(rows),)
    ]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    embedded = query(db, "SELECT count(*) FROM tracklet_embeddings WHERE run_id = ?", run_id)[0][0]
    assert embedded > 0


def test_one_person_is_one_box_per_frame(main_run):
    _, out = main_run
    seen = set()
    for row in read_csv(out / "trajectories.csv"):
        key = (row["camera_id"], row["frame"], row["global_id"])
        assert key not in seen
        seen.add(key)


def test_people_crossing_from_west_to_replay_keep_their_global_id(main_run):
    _, out = main_run
    rows = read_csv(out / "trajectories.csv")
    west = defaultdict(list)
    for row in rows:
        if row["camera_id"] == "west":
            west[row["frame"]].append(row)
    pairs = []
    for row in rows:
        if row["camera_id"] == "replay":
            twins = [w for w in west[row["frame"]] if iou(w, row) > 0.9]
            if twins:
                pairs.append((twins[0]["global_id"], row["global_id"]))
    assert len(pairs) >= 40
    assert len({west_id for west_id, _ in pairs}) >= 2  # several people cross, not one
    assert all(west_id == replay_id for west_id, replay_id in pairs), sorted(set(pairs))


def test_annotated_videos_and_contact_sheets(main_run):
    summary, out = main_run
    for camera in ("west", "east", "replay"):
        capture = cv2.VideoCapture(str(out / "videos" / f"{camera}.mp4"))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
        capture.release()
    sheets = sorted((out / "contact_sheets").glob("identity_*.png"))
    assert sheets
    ids = {int(row["global_id"]) for row in read_csv(out / "trajectories.csv")}
    assert {int(p.stem.split("_")[1]) for p in sheets} <= ids
    assert cv2.imread(str(sheets[0])) is not None


def test_export_command_matches_the_end_of_run_csv(main_run, cli, tmp_path):
    _, out = main_run
    result = cli("export", "--db", out / "reidcam.db", "--out", tmp_path / "again.csv")
    assert result.code == 0
    assert (tmp_path / "again.csv").read_text() == (out / "trajectories.csv").read_text()
    mot = cli("export", "--db", out / "reidcam.db", "--out", tmp_path / "mot", "--format", "mot")
    assert mot.code == 0
    assert sorted(p.name for p in (tmp_path / "mot").iterdir()) == ["east.txt", "replay.txt", "west.txt"]


def test_spacetime_mode_runs_without_reid_into_the_same_database(main_run, clips, fast_settings, tmp_path):
    summary, out = main_run
    cams_yaml = clips.write_config(
        tmp_path / "cams.yaml",
        ["west", "replay"],
        **fast_settings(association={"mode": "spacetime", "max_transit_s": 10}),
    )
    second = run_from_config(
        cams_yaml, db_url=str(out / "reidcam.db"), out_dir=tmp_path / "out", device="cpu", max_frames=15
    )
    assert second.run_id == summary.run_id + 1
    assert second.stages.get("reid") is None
    rows = read_csv(tmp_path / "out" / "trajectories.csv")
    assert rows and {row["camera_id"] for row in rows} == {"west", "replay"}
    db = out / "reidcam.db"
    assert query(db, "SELECT association_mode FROM runs WHERE id = ?", second.run_id) == [("spacetime",)]


def test_a_killed_run_leaves_a_consistent_database(clips, fast_settings, tmp_path):
    cams_yaml = clips.write_config(
        tmp_path / "cams.yaml", ["west", "east"], **fast_settings(storage={"commit_every": 1})
    )
    db = tmp_path / "out" / "reidcam.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "reidcam", "run", "--sources", str(cams_yaml), "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if db.is_file() and _committed_frames(db) >= 6:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "PRAGMA foreign_key_check") == []
    assert query(db, "SELECT status FROM runs") == [("running",)]
    frames = _committed_frames(db)
    assert 6 <= frames < 80
    orphans = query(
        db,
        "SELECT count(*) FROM sightings s WHERE s.global_id IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM identities i WHERE i.run_id = s.run_id AND i.global_id = s.global_id)",
    )
    assert orphans == [(0,)]
    assert query(
        db,
        "SELECT count(*) FROM sightings s JOIN tracklets t ON t.id = s.tracklet_id "
        "WHERE s.global_id IS NOT t.global_id",
    ) == [(0,)]
    from reidcam.storage.export import export_trajectories

    rows = export_trajectories(str(db), tmp_path / "after.csv")
    assert (tmp_path / "after.csv").read_text().splitlines()[0] == CONTRACT_HEADER
    assert rows == query(db, "SELECT count(*) FROM sightings WHERE global_id IS NOT NULL")[0][0]


def _committed_frames(db: Path) -> int:
    try:
        return sum(count for (count,) in query(db, "SELECT frames FROM cameras"))
    except sqlite3.OperationalError:
        return 0


def test_bench_command_times_every_stage_and_writes_nothing_beside_the_config(clips, fast_settings, tmp_path, cli):
    folder = tmp_path / "bench"
    settings = fast_settings(storage={"db": str(folder / "mine.db")})
    cams_yaml = clips.write_config(folder / "cams.yaml", ["west", "east"], out=str(folder / "out"), **settings)
    result = cli("bench", "--sources", cams_yaml, "--device", "cpu", "--max-frames", "12")
    assert result.code == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for stage in ("decode", "detect", "track", "end-to-end"):
        assert stage in rows, result.stdout
    assert rows["detect"][3] == "24" and rows["end-to-end"][3] == "24"  # 12 frames x 2 cameras
    assert float(rows["detect"][1]) > 0
    assert "cameras: west 12, east 12" in result.stdout
    steps = next(line for line in result.stdout.splitlines() if line.startswith("steps:"))
    count, per_step = steps.split()[1].rstrip(","), float(steps.split()[2])
    assert int(count) * per_step == pytest.approx(24, abs=0.1)
    assert sorted(p.name for p in folder.iterdir()) == ["cams.yaml"]


def test_a_run_reports_the_rate_of_its_second_half(main_run):
    summary, _ = main_run
    # 40 steps of three frames: the second half's 19 steps after the middle one, within the run's wall time
    assert summary.late_rate is not None
    assert summary.late_rate >= 19 * 3 / summary.wall_seconds
    assert 1 <= summary.total_frames / summary.steps <= 3  # three cameras: at most a frame of each per step


def test_late_frame_rate_skips_the_first_half_of_the_steps():
    marks = [(10.0, 16), (11.0, 16), (11.5, 16), (12.0, 16), (12.5, 8)]
    # the middle step ends at 11.5; the two steps after it (24 frames) took 1.0 s
    assert late_frame_rate(marks) == pytest.approx(24.0)
    assert late_frame_rate(marks[:3]) is None
