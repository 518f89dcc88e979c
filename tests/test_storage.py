"""The store: batched transactions on a real SQLite file, identity events carried into every table."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from reidcam.storage.repository import Store, database_url, sqlite_path
from reidcam.tracking.association import IdentityEvent
from reidcam.tracking.tracklets import Tracklet

T0 = datetime(2026, 1, 15, 9, 0, tzinfo=timezone.utc).timestamp()


@dataclass
class Camera:
    camera_id: str
    source: str = "clip.mp4"
    fps: float = 10.0
    width: int = 320
    height: int = 240
    start_time: datetime | None = None


def sighting(camera: str, frame: int, local_id: int) -> dict:
    return {
        "camera_id": camera,
        "frame": frame,
        "timestamp": T0 + (frame - 1) / 10,
        "x1": 10.0,
        "y1": 20.0,
        "x2": 40.0,
        "y2": 110.0,
        "confidence": 0.9,
        "local_track_id": local_id,
        "foot_x": 25.0,
        "foot_y": 110.0,
    }


def new_store(path: Path, commit_every: int = 2) -> Store:
    store = Store(database_url(path), commit_every=commit_every)
    store.start_run("cams.yaml", "{}", "det.tflite", "reidmamba_tiny", "combined")
    store.add_cameras([Camera("cam1"), Camera("cam2")])
    return store


def open_tracklet(store: Store, camera: str, local_id: int, frame: int) -> Tracklet:
    item = Tracklet(camera, local_id, first_frame=frame, first_time=T0 + (frame - 1) / 10)
    item.observe(frame, item.first_time)
    store.add_tracklets([item])
    return item


def rows(path: Path, query: str) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(query).fetchall()


def test_paths_become_sqlite_urls(tmp_path):
    assert database_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert database_url("postgresql://u@host/db") == "postgresql://u@host/db"
    assert sqlite_path(database_url(tmp_path / "a.db")) == tmp_path / "a.db"
    assert sqlite_path("sqlite:///:memory:") is None


def test_sqlite_file_uses_wal_and_holds_the_run(tmp_path):
    path = tmp_path / "sub" / "store.db"
    store = new_store(path)
    store.close()
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "SELECT status, detector, association_mode FROM runs") == [("running", "det.tflite", "combined")]
    assert rows(path, "SELECT camera_id, fps, width FROM cameras ORDER BY camera_id") == [
        ("cam1", 10.0, 320),
        ("cam2", 10.0, 320),
    ]


def test_sightings_get_their_tracklets_global_id_whenever_it_comes(tmp_path):
    path = tmp_path / "store.db"
    store = new_store(path)
    first = open_tracklet(store, "cam1", 1, 1)
    store.add_sightings([first], [sighting("cam1", 1, 1)])
    store.commit()
    first.global_id = 1
    store.apply_events([IdentityEvent("create", 1, T0, first)])
    store.add_sightings([first], [sighting("cam1", 2, 1)])
    store.commit()
    store.close()
    assert rows(path, "SELECT frame, global_id FROM sightings ORDER BY frame") == [(1, 1), (2, 1)]
    assert rows(path, "SELECT global_id FROM tracklets") == [(1,)]
    assert rows(path, "SELECT global_id, merged_into FROM identities") == [(1, None)]
    assert rows(path, "SELECT kind, global_id FROM identity_events") == [("create", 1)]


def test_merge_and_split_rewrite_identities_everywhere(tmp_path):
    path = tmp_path / "store.db"
    store = new_store(path)
    a = open_tracklet(store, "cam1", 1, 1)
    b = open_tracklet(store, "cam2", 1, 30)
    c = open_tracklet(store, "cam2", 2, 60)
    for item, global_id in ((a, 1), (b, 2), (c, 2)):
        store.add_sightings([item], [sighting(item.camera_id, item.first_frame, item.local_id)])
        item.global_id = global_id
    store.apply_events(
        [IdentityEvent("create", 1, T0, a), IdentityEvent("create", 2, T0, b), IdentityEvent("assign", 2, T0, c)]
    )
    store.apply_events([IdentityEvent("merge", 1, T0, None, other_global_id=2, distance=0.1)])
    store.apply_events([IdentityEvent("split", 3, T0, c, other_global_id=1, distance=0.9)])
    store.commit()
    store.close()
    assert rows(path, "SELECT camera_id, local_track_id, global_id FROM sightings ORDER BY id") == [
        ("cam1", 1, 1),
        ("cam2", 1, 1),
        ("cam2", 2, 3),
    ]
    assert rows(path, "SELECT global_id, merged_into FROM identities ORDER BY global_id") == [
        (1, None),
        (2, 1),
        (3, None),
    ]
    assert [kind for (kind,) in rows(path, "SELECT kind FROM identity_events ORDER BY id")] == [
        "create",
        "create",
        "assign",
        "merge",
        "split",
    ]


def test_commits_come_every_n_steps(tmp_path):
    store = new_store(tmp_path / "store.db", commit_every=3)
    assert [store.commit_due() for _ in range(3)] == [False, False, True]
    store.close()


def test_abandoned_run_keeps_exactly_what_was_committed(tmp_path):
    path = tmp_path / "store.db"
    store = new_store(path)
    item = open_tracklet(store, "cam1", 1, 1)
    store.add_sightings([item], [sighting("cam1", 1, 1)])
    store.commit({"cam1": 1})
    late = open_tracklet(store, "cam2", 1, 5)
    store.add_sightings([item, late], [sighting("cam1", 2, 1), sighting("cam2", 5, 1)])
    store.apply_events([IdentityEvent("create", 1, T0, late)])
    store.abandon("interrupted")
    store.close()
    assert rows(path, "SELECT camera_id, frame FROM sightings") == [("cam1", 1)]
    assert rows(path, "SELECT camera_id FROM tracklets") == [("cam1",)]
    assert rows(path, "SELECT count(*) FROM identities") == [(0,)]
    assert rows(path, "SELECT status FROM runs") == [("interrupted",)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(path, "PRAGMA foreign_key_check") == []


def test_embeddings_are_stored_as_float32_and_replaced(tmp_path):
    path = tmp_path / "store.db"
    store = new_store(path)
    item = open_tracklet(store, "cam1", 1, 1)
    item.add_embedding(np.array([3.0, 4.0], dtype=np.float32), quality=0.5)
    store.save_embeddings([item])
    item.add_embedding(np.array([0.0, 1.0], dtype=np.float32), quality=0.5)
    store.save_embeddings([item])
    store.commit()
    store.close()
    ((dim, crops, blob),) = rows(path, "SELECT dim, crops, vector FROM tracklet_embeddings")
    assert (dim, crops) == (2, 2)
    assert np.frombuffer(blob, dtype=np.float32) == pytest.approx(item.embedding)


def test_two_runs_share_one_database(tmp_path):
    path = tmp_path / "store.db"
    for _ in range(2):
        store = new_store(path)
        store.finish("finished")
        store.close()
    assert rows(path, "SELECT id, status FROM runs") == [(1, "finished"), (2, "finished")]
    assert rows(path, "SELECT run_id, count(*) FROM cameras GROUP BY run_id") == [(1, 2), (2, 2)]
