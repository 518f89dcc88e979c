"""The store: batched transactions on a real SQLite file, identity events carried into every table."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
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


def add_sighting(store: Store, tracklet: Tracklet, frame: int) -> None:
    """One box of ``tracklet`` in ``frame``, handed over as the pipeline hands a frame's boxes."""
    store.add_frame_sightings(
        tracklet.camera_id, frame, T0 + (frame - 1) / 10, np.array([[10.0, 20.0, 40.0, 110.0]]), np.array([0.9]),
        [tracklet.local_id], np.array([[25.0, 110.0]]), [tracklet],
    )


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
    add_sighting(store, first, 1)
    store.commit()
    first.global_id = 1
    store.apply_events([IdentityEvent("create", 1, T0, first)])
    add_sighting(store, first, 2)
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
        add_sighting(store, item, item.first_frame)
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
    add_sighting(store, item, 1)
    store.commit({"cam1": 1})
    late = open_tracklet(store, "cam2", 1, 5)
    add_sighting(store, item, 2)
    add_sighting(store, late, 5)
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


# The bulk paths against the per-row store they replaced (tests/store_reference.py): the same calls
# must leave the same rows in every table, less the wall-clock columns.

WALL_CLOCK_COLUMNS = {"runs": {"started_at", "finished_at"}, "identity_events": {"logged_at"}}
TABLES = ("runs", "cameras", "identities", "tracklets", "sightings", "tracklet_embeddings", "identity_events")


def table_contents(path: Path) -> dict[str, list[tuple]]:
    contents = {}
    with sqlite3.connect(path) as connection:
        for table in TABLES:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            kept = ", ".join(c for c in columns if c not in WALL_CLOCK_COLUMNS.get(table, set()))
            contents[table] = connection.execute(f"SELECT {kept} FROM {table} ORDER BY id").fetchall()
    return contents


def frame_sightings(store: Store, frame: int, tracklets: list[Tracklet], rng: np.random.Generator, ones=False):
    """One camera's frame through the pipeline's columnar path, float32 boxes as the tracker gives them."""
    for item in tracklets:
        item.observe(frame, T0 + frame / 10)
    count = len(tracklets)
    xyxy = (rng.random((count, 4)) * 500).astype(np.float32)
    confidences = np.ones(count) if ones else rng.random(count).astype(np.float32)
    feet = (rng.random((count, 2)) * 20).astype(np.float32)
    local_ids = [t.local_id for t in tracklets]
    camera, timestamp = tracklets[0].camera_id, T0 + frame / 10
    store.add_frame_sightings(camera, frame, timestamp, xyxy, confidences, local_ids, feet, tracklets)


def scripted_run(store: Store) -> None:
    """Assigns before, between and after merges in one batch, a chain of merges, splits, replaced embeddings."""
    rng = np.random.default_rng(3)
    keys = (("cam1", 1), ("cam2", 1), ("cam2", 2), ("cam1", 2), ("cam1", 3))
    a, b, c, d, e = (Tracklet(camera, local, first_frame=1, first_time=T0 + local) for camera, local in keys)
    store.add_tracklets([a, b])
    frame_sightings(store, 1, [a], rng)
    frame_sightings(store, 1, [b], rng, ones=True)
    a.global_id, b.global_id = 1, 2
    store.apply_events([IdentityEvent("create", 1, T0, a), IdentityEvent("create", 2, T0, b, distance=0.5)])
    store.add_tracklets([c, d, e])
    frame_sightings(store, 2, [a, d, e], rng)
    frame_sightings(store, 2, [b, c], rng)
    store.update_tracklets([a, b, c, d, e])
    store.commit({"cam1": 2, "cam2": 2})
    frame_sightings(store, 3, [a, d, e], rng)  # queued when the events come, and written with them
    frame_sightings(store, 3, [b, c], rng)
    b.global_id = c.global_id = 1  # the assign and merge below, as the associator applies them
    d.global_id, e.global_id = 2, 3  # e's merges below left out: only the database's rows follow them
    store.apply_events(
        [
            IdentityEvent("assign", 2, T0 + 1, c, distance=0.1),
            IdentityEvent("merge", 1, T0 + 1, None, other_global_id=2, distance=0.05),
            IdentityEvent("assign", 2, T0 + 1, d, distance=0.2),  # after the merge: stays 2
            IdentityEvent("create", 3, T0 + 1, e),
            IdentityEvent("merge", 4, T0 + 1, None, other_global_id=3, distance=0.1),
            IdentityEvent("merge", 1, T0 + 1, None, other_global_id=4, distance=0.1),  # 3 -> 4 -> 1
            IdentityEvent("split", 5, T0 + 1, a, other_global_id=1, distance=0.9),
            IdentityEvent("assign", 5, T0 + 1, b, distance=0.25),
        ]
    )
    frame_sightings(store, 4, [a, d, e], rng)
    for item, vector in ((a, [1.0, 2.0]), (c, [0.0, 1.0]), (d, [3.0, 4.0])):
        item.add_embedding(np.array(vector, dtype=np.float32), quality=0.5)
    c.closed = True
    store.save_embeddings([a, c, a, b])  # a twice, b without an embedding
    store.update_tracklets([a, b, c, d, e])
    store.commit({"cam1": 4, "cam2": 3})
    a.add_embedding(np.array([5.0, 1.0], dtype=np.float32), quality=0.7)
    store.save_embeddings([d, a])  # a's replaced
    store.finish("finished", {"cam1": 4, "cam2": 4})


def random_run(store: Store, seed: int) -> None:
    """Forty steps of tracks starting and ending on three cameras, with events of every kind in random order."""
    rng = np.random.default_rng(seed)
    live: dict[str, list[Tracklet]] = {camera: [] for camera in ("cam1", "cam2", "cam3")}
    every: list[Tracklet] = []
    identities: list[int] = []
    new_ids = itertools.count(1)
    for step in range(1, 41):
        started = []
        for camera, tracks in live.items():
            while len(tracks) < 3 or rng.random() < 0.1:
                tracks.append(Tracklet(camera, len(every) + 1, first_frame=step, first_time=T0 + step / 10))
                every.append(tracks[-1])
                started.append(tracks[-1])
            frame_sightings(store, step, tracks, rng, ones=step % 7 == 0)
            if rng.random() < 0.2:
                tracks.pop(int(rng.integers(len(tracks)))).closed = True
        store.add_tracklets(started)
        store.apply_events(random_events(rng, every, identities, new_ids, T0 + step / 10))
        if step % 5 == 0:
            for item in rng.choice(every, size=4):
                item.add_embedding(rng.random(8).astype(np.float32), quality=float(rng.random()))
            store.update_tracklets(every)
            store.save_embeddings([t for t in every if t.closed or rng.random() < 0.3])
            store.commit({camera: step for camera in live})
    store.finish("finished", {camera: 40 for camera in live})


def random_events(
    rng: np.random.Generator, every: list[Tracklet], identities: list[int], new_ids: Iterator[int], now: float
) -> list[IdentityEvent]:
    """Up to five events, each changing the tracklets' global ids as the associator does."""
    events = []
    for _ in range(int(rng.integers(0, 6))):
        kind = rng.choice(["create", "assign", "merge", "split"], p=[0.3, 0.4, 0.15, 0.15])
        tracklet = every[int(rng.integers(len(every)))]
        if kind == "merge" and len(identities) >= 2:
            kept, absorbed = (int(i) for i in rng.choice(identities, size=2, replace=False))
            identities.remove(absorbed)
            for item in every:
                if item.global_id == absorbed:
                    item.global_id = kept
            events.append(IdentityEvent("merge", kept, now, None, other_global_id=absorbed, distance=0.1))
        elif kind == "assign" and identities:
            tracklet.global_id = int(rng.choice(identities))
            events.append(IdentityEvent("assign", tracklet.global_id, now, tracklet, distance=float(rng.random())))
        elif kind in ("create", "split") or not identities:
            kind = "split" if kind == "split" and tracklet.global_id is not None else "create"
            other = tracklet.global_id if kind == "split" else None
            tracklet.global_id = next(new_ids)
            identities.append(tracklet.global_id)
            events.append(IdentityEvent(kind, tracklet.global_id, now, tracklet, other_global_id=other))
    return events


def bulk_engines(variant: str):
    """``create_engine`` for the store under test: the default qmark driver path, named parameters, or
    INSERTs through Core (as on psycopg2, where the dialect folds them into multi-row VALUES)."""
    import sqlalchemy

    def create(url: str):
        engine = sqlalchemy.create_engine(url, paramstyle="named" if variant == "named" else None)
        if variant == "core-inserts":
            engine.dialect.use_insertmanyvalues_wo_returning = True
        return engine

    return create


def written_by(store_class, path: Path, play) -> dict[str, list[tuple]]:
    store = store_class(database_url(path), commit_every=5)
    store.start_run("cams.yaml", "{}", "det", "reid", "combined")
    store.add_cameras([Camera("cam1"), Camera("cam2"), Camera("cam3")])
    play(store)
    store.close()
    return table_contents(path)


@pytest.mark.parametrize("variant", ["qmark", "named", "core-inserts"])
@pytest.mark.parametrize("scenario", ["scripted", "random-1", "random-2", "random-3"])
def test_bulk_paths_write_the_rows_the_per_row_store_wrote(tmp_path, monkeypatch, variant, scenario):
    from store_reference import PerRowStore

    import reidcam.storage.repository as repository

    play = scripted_run if scenario == "scripted" else lambda store: random_run(store, int(scenario[-1]))
    expected = written_by(PerRowStore, tmp_path / "per_row.db", play)
    monkeypatch.setattr(repository, "create_engine", bulk_engines(variant))
    written = written_by(Store, tmp_path / "bulk.db", play)
    assert expected["sightings"] and expected["identity_events"] and expected["tracklet_embeddings"]
    assert any(kind == "merge" for _, _, kind, *_ in expected["identity_events"])
    for table in TABLES:
        assert written[table] == expected[table], table


def test_abandon_after_bulk_events_keeps_the_last_commit_like_the_per_row_store(tmp_path):
    from store_reference import PerRowStore

    def play(store: Store) -> None:
        rng = np.random.default_rng(5)
        a, b = Tracklet("cam1", 1, first_frame=1, first_time=T0), Tracklet("cam2", 1, first_frame=1, first_time=T0)
        store.add_tracklets([a, b])
        frame_sightings(store, 1, [a], rng)
        a.global_id = 1
        store.apply_events([IdentityEvent("create", 1, T0, a)])
        store.update_tracklets([a, b])
        store.commit({"cam1": 1})
        frame_sightings(store, 2, [a], rng)
        frame_sightings(store, 2, [b], rng)
        b.global_id = 2
        store.apply_events([IdentityEvent("create", 2, T0, b), IdentityEvent("merge", 1, T0, None, other_global_id=2)])
        store.update_tracklets([a, b])
        store.abandon("interrupted")

    expected = written_by(PerRowStore, tmp_path / "per_row.db", play)
    assert written_by(Store, tmp_path / "bulk.db", play) == expected
    assert [row[3:5] for row in expected["sightings"]] == [("cam1", 1)]
