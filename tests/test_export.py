"""Exports of a database: the contract CSV and MOTChallenge files, of the latest run or a chosen one."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from reidcam.errors import ConfigError, DataError
from reidcam.storage.export import CSV_HEADER, export_trajectories, iso_utc
from reidcam.storage.repository import Store, database_url
from reidcam.tracking.association import IdentityEvent
from reidcam.tracking.tracklets import Tracklet

T0 = datetime(2026, 1, 15, 9, 0, tzinfo=timezone.utc).timestamp()
CONTRACT_HEADER = "global_id,camera_id,local_track_id,frame,timestamp,x1,y1,x2,y2,confidence,foot_x,foot_y"


class Camera:
    def __init__(self, camera_id: str) -> None:
        self.camera_id, self.source, self.fps, self.width, self.height, self.start_time = (
            camera_id,
            "x",
            10.0,
            320,
            240,
            None,
        )


def write_run(path: Path, shift: float) -> None:
    """A run with two identities over two cameras, and one unassigned blip."""
    store = Store(database_url(path))
    store.start_run("cams.yaml", "{}", "det", "reid", "combined")
    store.add_cameras([Camera("cam1"), Camera("cam2")])
    plan = [("cam2", 4, 2, [3, 4]), ("cam1", 1, 1, [1, 2, 3]), ("cam2", 7, 1, [20, 21]), ("cam1", 9, None, [5])]
    for camera, local_id, global_id, frames in plan:
        item = Tracklet(camera, local_id, first_frame=frames[0], first_time=T0 + frames[0] / 10)
        store.add_tracklets([item])
        for frame in frames:
            xyxy = np.array([[10.0 + frame + shift, 20.0, 30.0 + frame + shift, 100.5]])
            feet = np.array([[20.0 + frame, 100.5]])
            store.add_frame_sightings(camera, frame, T0 + (frame - 1) / 10, xyxy, np.array([0.87654]), [local_id],
                                      feet, [item])
        if global_id is not None:
            item.global_id = global_id
            known = global_id == 1 and camera == "cam2"
            store.apply_events([IdentityEvent("assign" if known else "create", global_id, T0, item)])
    store.finish("finished")
    store.close()


@pytest.fixture
def database(tmp_path) -> Path:
    path = tmp_path / "store.db"
    write_run(path, shift=0.0)
    write_run(path, shift=100.0)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_csv_has_the_contract_header_and_one_row_per_box(database, tmp_path):
    out = tmp_path / "t.csv"
    count = export_trajectories(str(database), out)
    assert out.read_text().splitlines()[0] == CONTRACT_HEADER == ",".join(CSV_HEADER)
    rows = read_csv(out)
    assert count == len(rows) == 7  # the unassigned blip is left out
    assert [(r["global_id"], r["camera_id"], r["frame"]) for r in rows] == [
        ("1", "cam1", "1"),
        ("1", "cam1", "2"),
        ("1", "cam1", "3"),
        ("1", "cam2", "20"),
        ("1", "cam2", "21"),
        ("2", "cam2", "3"),
        ("2", "cam2", "4"),
    ]
    first = rows[0]
    assert first["timestamp"] == "2026-01-15T09:00:00.000Z"
    assert rows[1]["timestamp"] == "2026-01-15T09:00:00.100Z"
    assert (first["x1"], first["y2"], first["confidence"], first["foot_x"]) == ("111.00", "100.50", "0.8765", "21.000")
    assert first["local_track_id"] == "1"


def test_run_id_picks_an_earlier_run(database, tmp_path):
    out = tmp_path / "t.csv"
    export_trajectories(str(database), out, run_id=1)
    assert read_csv(out)[0]["x1"] == "11.00"


def test_mot_files_per_camera_with_global_ids(database, tmp_path):
    folder = tmp_path / "mot"
    count = export_trajectories(f"sqlite:///{database}", folder, fmt="mot")
    assert count == 7
    assert sorted(p.name for p in folder.iterdir()) == ["cam1.txt", "cam2.txt"]
    cam2 = (folder / "cam2.txt").read_text().splitlines()
    assert cam2[0] == "3,2,113.00,20.00,20.00,80.50,0.8765,-1,-1,-1"
    assert [line.split(",")[:2] for line in cam2] == [["3", "2"], ["4", "2"], ["20", "1"], ["21", "1"]]


def test_iso_utc():
    assert iso_utc(0.25) == "1970-01-01T00:00:00.250Z"


def test_bad_requests_are_one_line_errors(database, tmp_path):
    with pytest.raises(DataError, match="database not found"):
        export_trajectories(str(tmp_path / "none.db"), tmp_path / "t.csv")
    with pytest.raises(DataError, match="no run 9"):
        export_trajectories(str(database), tmp_path / "t.csv", run_id=9)
    with pytest.raises(ConfigError, match="expected one of csv, mot"):
        export_trajectories(str(database), tmp_path / "t.csv", fmt="xlsx")
    not_ours = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(not_ours).execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(DataError, match="not a reidcam database"):
        export_trajectories(str(not_ours), tmp_path / "t.csv")


def test_export_command(database, tmp_path, cli):
    out = tmp_path / "cli.csv"
    result = cli("export", "--db", database, "--out", out)
    assert result.code == 0 and len(read_csv(out)) == 7
    missing = cli("export", "--db", tmp_path / "none.db", "--out", out)
    assert missing.code == 2
    assert missing.stderr.strip().count("\n") == 0 and "database not found" in missing.stderr
