"""Writing a run into the database, in batched transactions.

The pipeline hands the store whole steps of work (new tracklets, sightings, identity events);
the store keeps them in one open transaction and commits every ``commit_every`` steps. A run
killed midway therefore leaves the database as it was at its last commit, and every commit
leaves it consistent: a sighting's tracklet row is in the same or an earlier transaction, and
an identity's rows and the sightings that point at it change together.

SQLite is the default (WAL journal, so ``reidcam export`` can read while a run writes); any
SQLAlchemy URL works (PostgreSQL for cameras spread over several machines).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Dialect, Engine, Table, bindparam, create_engine, event, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from reidcam.errors import DataError
from reidcam.storage.bulk import BulkStatement, Row
from reidcam.storage.models import (
    Base,
    CameraRow,
    IdentityEventRow,
    IdentityRow,
    RunRow,
    SightingRow,
    TrackletEmbeddingRow,
    TrackletRow,
)

logger = logging.getLogger(__name__)


def database_url(value: str | Path) -> str:
    """A SQLAlchemy URL as given, or a plain file path as a SQLite URL."""
    text = str(value)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other backends and in-memory databases)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url in (prefix, "sqlite:///:memory:"):
        return None
    return Path(url[len(prefix) :])


def open_engine(url: str, must_exist: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL and foreign keys, and their folder is created."""
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.is_file():
            raise DataError(f"database not found: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, ImportError, ValueError) as error:
        raise DataError(f"cannot open database {url}: {str(error).splitlines()[0]}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


SIGHTING_COLUMNS = (
    *("run_id", "tracklet_id", "camera_id", "frame", "timestamp"),
    *("x1", "y1", "x2", "y2", "confidence", "local_track_id", "global_id", "foot_x", "foot_y"),
)
EVENT_COLUMNS = ("run_id", "kind", "global_id", "other_global_id", "tracklet_id", "distance", "time", "logged_at")
TRACKLET_STATE = ("global_id", "last_frame", "last_time", "boxes", "crops", "closed")  # in the table's order
EMBEDDING_VALUES = ("dim", "crops", "weight", "vector")
IN_LIST_CHUNK = 500  # ids per ``IN (...)``: well under every backend's limit on bound parameters


@dataclass
class _FrameSightings:
    """The boxes of one camera's frame, waiting to be written.

    Each row takes its tracklet's database id and global id only when written: the tracklet's row
    is inserted at the end of the step, and its identity may come or change before the write.
    """

    camera_id: str
    frame: int
    timestamp: float
    values: list[list[float]]  # per box: x1, y1, x2, y2, confidence, foot_x, foot_y
    local_ids: list[int]
    tracklets: Sequence[Any]

    def rows(self, run_id: int | None) -> list[Row]:
        """The frame's rows, in ``SIGHTING_COLUMNS`` order."""
        camera, frame, timestamp = self.camera_id, self.frame, self.timestamp
        return [
            (run_id, t.db_id, camera, frame, timestamp, v[0], v[1], v[2], v[3], v[4], local, t.global_id, v[5], v[6])
            for v, local, t in zip(self.values, self.local_ids, self.tracklets)
        ]


def _bulk_update(table: Table, values: Sequence[str], where: Sequence[str], dialect: Dialect) -> BulkStatement:
    """UPDATE ``table`` SET ``values`` WHERE each of ``where`` equals; a row gives ``values``, then ``where``
    (the order of the statement's parameters, which positional drivers then take as they are)."""
    statement = (
        update(table)
        .where(*(table.c[name] == bindparam(f"where_{name}") for name in where))
        .values({name: bindparam(f"set_{name}") for name in values})
    )
    return BulkStatement(statement, [f"set_{name}" for name in values] + [f"where_{name}" for name in where], dialect)


class _Statements:
    """Every statement a run repeats, compiled once for the engine's dialect."""

    def __init__(self, dialect: Dialect) -> None:
        tracklets, sightings = TrackletRow.__table__, SightingRow.__table__
        identities, embeddings = IdentityRow.__table__, TrackletEmbeddingRow.__table__
        self.sightings = BulkStatement.insert_into(sightings, SIGHTING_COLUMNS, dialect)
        self.events = BulkStatement.insert_into(IdentityEventRow.__table__, EVENT_COLUMNS, dialect)
        self.identities = BulkStatement.insert_into(identities, ("run_id", "global_id", "first_seen"), dialect)
        self.tracklet_identity = _bulk_update(tracklets, ("global_id",), ("id",), dialect)
        self.sighting_identity = _bulk_update(sightings, ("global_id",), ("tracklet_id",), dialect)
        self.tracklet_merge = _bulk_update(tracklets, ("global_id",), ("run_id", "global_id"), dialect)
        self.sighting_merge = _bulk_update(sightings, ("global_id",), ("run_id", "global_id"), dialect)
        self.identity_merge = _bulk_update(identities, ("merged_into",), ("run_id", "global_id"), dialect)
        self.tracklet_state = _bulk_update(tracklets, TRACKLET_STATE, ("id",), dialect)
        self.camera_frames = _bulk_update(CameraRow.__table__, ("frames",), ("run_id", "camera_id"), dialect)
        self.embedding_insert = BulkStatement.insert_into(
            embeddings, ("run_id", "tracklet_id", *EMBEDDING_VALUES), dialect
        )
        self.embedding_replace = _bulk_update(embeddings, EMBEDDING_VALUES, ("tracklet_id",), dialect)


class Store:
    """One run's writer.

    Ask ``commit_due`` after each pipeline step, ``commit`` when it says so, ``finish`` at the end.

    Rows go in through a few statements compiled once (``bulk.BulkStatement``), one executemany
    per statement and batch; sightings wait in memory, a frame at a time, until the next batch of
    identity events or the next commit.
    """

    def __init__(self, url: str, commit_every: int = 25) -> None:
        self.url = url
        self.engine = open_engine(url)
        try:
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as error:
            raise DataError(f"cannot create tables in {url}: {str(error).splitlines()[0]}") from None
        self.session = Session(self.engine, expire_on_commit=False)
        self.commit_every = commit_every
        self.run_id: int | None = None
        self._statements = _Statements(self.engine.dialect)
        self._pending: list[_FrameSightings] = []
        self._steps_since_commit = 0
        self.commits = 0

    def start_run(self, config_path: str, config_json: str, detector: str, reid_model: str, mode: str) -> int:
        run = RunRow(
            started_at=time.time(),
            status="running",
            config_path=config_path,
            config_json=config_json,
            detector=detector,
            reid_model=reid_model,
            association_mode=mode,
        )
        self.session.add(run)
        self.session.commit()
        self.run_id = run.id
        return run.id

    def add_cameras(self, cameras: Iterable[Any]) -> None:
        """``cameras``: ``sources.CameraInfo`` objects."""
        for info in cameras:
            self.session.add(
                CameraRow(
                    run_id=self.run_id,
                    camera_id=info.camera_id,
                    source=info.source,
                    fps=info.fps,
                    width=info.width,
                    height=info.height,
                    start_time=info.start_time.timestamp() if info.start_time else None,
                )
            )
        self.session.commit()

    def add_tracklets(self, tracklets: Sequence[Any]) -> None:
        """Insert rows for tracklets that just started (a whole step's at once); sets their ``db_id``."""
        if not tracklets:
            return
        rows = [
            {
                "run_id": self.run_id,
                "camera_id": t.camera_id,
                "local_track_id": t.local_id,
                "first_frame": t.first_frame,
                "last_frame": t.last_frame,
                "first_time": t.first_time,
                "last_time": t.last_time,
                "boxes": t.boxes,
            }
            for t in tracklets
        ]
        for tracklet, row_id in zip(tracklets, self._insert_returning_ids(TrackletRow.__table__, rows)):
            tracklet.db_id = row_id

    def add_frame_sightings(
        self,
        camera_id: str,
        frame: int,
        timestamp: float,
        xyxy: np.ndarray,
        confidences: np.ndarray,
        local_ids: Sequence[int],
        feet: np.ndarray,
        tracklets: Sequence[Any],
    ) -> None:
        """Queue one frame's boxes: (N, 4) ``xyxy``, (N,) ``confidences``, (N, 2) ground ``feet``, one
        local id and tracklet each. Each row gets its tracklet's id and *current* global id when written."""
        values = np.column_stack((xyxy, confidences, feet)).tolist()
        self._pending.append(_FrameSightings(camera_id, frame, timestamp, values, list(local_ids), list(tracklets)))

    def apply_events(self, events: Sequence[Any]) -> None:
        """Log ``association.IdentityEvent`` objects and carry them into identities, tracklets and sightings.

        One executemany per statement over each run of merges and each run of other events. Every
        statement reads and writes its own table only, so this gives the rows that running the
        events one by one gives, as long as each table sees its statements in event order: a merge
        sees every assignment before it, and an assignment after it is not rewritten by it.
        Queued sightings are written first, for the events' updates by tracklet to reach them.
        """
        self._write_pending_sightings()
        connection = self.session.connection()
        for merges, run in groupby(events, key=lambda item: item.kind == "merge"):
            batch = list(run)
            if merges:
                self._apply_merges(connection, batch)
            else:
                self._apply_assignments(connection, batch)
        now = time.time()
        self._statements.events.execute(connection, [self._event_row(item, now) for item in events])

    def _apply_assignments(self, connection: Connection, events: Sequence[Any]) -> None:
        """create and split start an identity; create, assign and split put a tracklet into one."""
        run, statements = self.run_id, self._statements
        starts = [(run, e.global_id, e.tracklet.first_time) for e in events if e.kind in ("create", "split")]
        statements.identities.execute(connection, starts)
        moves = [(e.global_id, e.tracklet.db_id) for e in events if e.kind in ("create", "assign", "split")]
        statements.tracklet_identity.execute(connection, moves)
        statements.sighting_identity.execute(connection, moves)

    def _apply_merges(self, connection: Connection, events: Sequence[Any]) -> None:
        """``other_global_id`` is absorbed into ``global_id`` in tracklets and sightings, and marked so."""
        rows = [(e.global_id, self.run_id, e.other_global_id) for e in events]
        statements = self._statements
        for statement in (statements.tracklet_merge, statements.sighting_merge, statements.identity_merge):
            statement.execute(connection, rows)

    def _event_row(self, item: Any, logged_at: float) -> Row:
        """An ``identity_events`` row, in ``EVENT_COLUMNS`` order."""
        tracklet_id = item.tracklet.db_id if item.tracklet is not None else None
        kind, global_id, other = item.kind, item.global_id, item.other_global_id
        return (self.run_id, kind, global_id, other, tracklet_id, item.distance, item.time, logged_at)

    def update_tracklets(self, tracklets: Sequence[Any]) -> None:
        """Bring the tracklets' rows (span, counts, closed) up to date."""
        rows = [
            (t.global_id, t.last_frame, t.last_time, t.boxes, t.crops, t.closed, t.db_id)
            for t in tracklets
            if t.db_id is not None
        ]
        self._statements.tracklet_state.execute(self.session.connection(), rows)

    def save_embeddings(self, tracklets: Sequence[Any]) -> None:
        """Store (or replace) the embeddings of tracklets that have one."""
        values: dict[int, tuple[int, int, float, bytes]] = {}
        for tracklet in tracklets:
            vector = tracklet.embedding
            if vector is None or tracklet.db_id is None:
                continue
            values[tracklet.db_id] = (
                int(vector.shape[0]),
                tracklet.crops,
                float(tracklet.weight_sum),
                np.asarray(vector, dtype=np.float32).tobytes(),
            )
        if not values:
            return
        connection = self.session.connection()
        stored = self._embedded(connection, list(values))
        replaced = [(*row, key) for key, row in values.items() if key in stored]
        added = [(self.run_id, key, *row) for key, row in values.items() if key not in stored]
        self._statements.embedding_replace.execute(connection, replaced)
        self._statements.embedding_insert.execute(connection, added)

    def _embedded(self, connection: Connection, tracklet_ids: Sequence[int]) -> set[int]:
        """Which of the tracklets have an embedding row already."""
        column = TrackletEmbeddingRow.__table__.c.tracklet_id
        found: set[int] = set()
        for start in range(0, len(tracklet_ids), IN_LIST_CHUNK):
            chunk = tracklet_ids[start : start + IN_LIST_CHUNK]
            found.update(connection.execute(select(column).where(column.in_(chunk))).scalars())
        return found

    def commit_due(self) -> bool:
        """Count a pipeline step; True once ``commit_every`` steps have gathered since the last commit."""
        self._steps_since_commit += 1
        return self._steps_since_commit >= self.commit_every

    def commit(self, frames_by_camera: dict[str, int] | None = None) -> None:
        self._write_pending_sightings()
        frames = [(count, self.run_id, camera_id) for camera_id, count in (frames_by_camera or {}).items()]
        self._statements.camera_frames.execute(self.session.connection(), frames)
        self.session.commit()
        self._steps_since_commit = 0
        self.commits += 1

    def finish(self, status: str, frames_by_camera: dict[str, int] | None = None) -> None:
        self.session.execute(
            update(RunRow).where(RunRow.id == self.run_id).values(status=status, finished_at=time.time())
        )
        self.commit(frames_by_camera)

    def abandon(self, status: str) -> None:
        """After an interruption: drop the open transaction, mark the run, keep every earlier commit."""
        self.session.rollback()
        self._pending.clear()
        self.session.execute(
            update(RunRow).where(RunRow.id == self.run_id).values(status=status, finished_at=time.time())
        )
        self.session.commit()

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    def _write_pending_sightings(self) -> None:
        if not self._pending:
            return
        rows: list[Row] = []
        for frame in self._pending:
            rows += frame.rows(self.run_id)
        self._statements.sightings.execute(self.session.connection(), rows)
        self._pending = []

    def _insert_returning_ids(self, table: Table, rows: list[dict[str, Any]]) -> list[int]:
        """INSERT the rows in one statement where the backend can return their ids in order, else one by one."""
        connection = self.session.connection()
        if self.engine.dialect.insert_executemany_returning_sort_by_parameter_order:
            statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
            return list(connection.execute(statement, rows).scalars())
        return [connection.execute(insert(table), row).inserted_primary_key[0] for row in rows]
