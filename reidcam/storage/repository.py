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
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from reidcam.errors import DataError
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


class Store:
    """One run's writer.

    Ask ``commit_due`` after each pipeline step, ``commit`` when it says so, ``finish`` at the end.
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
        self._sightings: list[dict[str, Any]] = []
        self._sighting_tracklets: list[Any] = []
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
        """Insert rows for tracklets that just started; sets their ``db_id``."""
        if not tracklets:
            return
        rows = [
            TrackletRow(
                run_id=self.run_id,
                camera_id=t.camera_id,
                local_track_id=t.local_id,
                first_frame=t.first_frame,
                last_frame=t.last_frame,
                first_time=t.first_time,
                last_time=t.last_time,
                boxes=t.boxes,
            )
            for t in tracklets
        ]
        self.session.add_all(rows)
        self.session.flush()
        for tracklet, row in zip(tracklets, rows):
            tracklet.db_id = row.id

    def add_sightings(self, tracklets: Sequence[Any], rows: Sequence[dict[str, Any]]) -> None:
        """Queue sighting rows; each gets its tracklet's id and *current* global id when written."""
        self._sighting_tracklets.extend(tracklets)
        self._sightings.extend(rows)

    def apply_events(self, events: Sequence[Any]) -> None:
        """Log ``association.IdentityEvent`` objects and carry them into identities, tracklets and sightings."""
        self._write_pending_sightings()
        now = time.time()
        for item in events:
            self._apply_event(item)
            self.session.execute(
                insert(IdentityEventRow).values(
                    run_id=self.run_id,
                    kind=item.kind,
                    global_id=item.global_id,
                    other_global_id=item.other_global_id,
                    tracklet_id=item.tracklet.db_id if item.tracklet is not None else None,
                    distance=item.distance,
                    time=item.time,
                    logged_at=now,
                )
            )

    def _apply_event(self, item: Any) -> None:
        run = self.run_id
        if item.kind in ("create", "split"):
            self.session.execute(
                insert(IdentityRow).values(run_id=run, global_id=item.global_id, first_seen=item.tracklet.first_time)
            )
        if item.kind in ("create", "assign", "split"):
            tracklet_id = item.tracklet.db_id
            self.session.execute(
                update(TrackletRow).where(TrackletRow.id == tracklet_id).values(global_id=item.global_id)
            )
            self.session.execute(
                update(SightingRow).where(SightingRow.tracklet_id == tracklet_id).values(global_id=item.global_id)
            )
        elif item.kind == "merge":
            absorbed = item.other_global_id
            for table in (TrackletRow, SightingRow):
                self.session.execute(
                    update(table)
                    .where(table.run_id == run, table.global_id == absorbed)
                    .values(global_id=item.global_id)
                )
            self.session.execute(
                update(IdentityRow)
                .where(IdentityRow.run_id == run, IdentityRow.global_id == absorbed)
                .values(merged_into=item.global_id)
            )

    def update_tracklets(self, tracklets: Sequence[Any]) -> None:
        """Bring the tracklets' rows (span, counts, closed) up to date."""
        values = [
            {
                "id": t.db_id,
                "last_frame": t.last_frame,
                "last_time": t.last_time,
                "boxes": t.boxes,
                "crops": t.crops,
                "closed": t.closed,
                "global_id": t.global_id,
            }
            for t in tracklets
            if t.db_id is not None
        ]
        if values:
            self.session.execute(update(TrackletRow), values)

    def save_embeddings(self, tracklets: Sequence[Any]) -> None:
        """Store (or replace) the embeddings of tracklets that have one."""
        for tracklet in tracklets:
            vector = tracklet.embedding
            if vector is None or tracklet.db_id is None:
                continue
            existing = self.session.scalar(
                select(TrackletEmbeddingRow).where(TrackletEmbeddingRow.tracklet_id == tracklet.db_id)
            )
            row = existing or TrackletEmbeddingRow(run_id=self.run_id, tracklet_id=tracklet.db_id)
            row.dim = int(vector.shape[0])
            row.crops = tracklet.crops
            row.weight = float(tracklet.weight_sum)
            row.vector = np.asarray(vector, dtype=np.float32).tobytes()
            self.session.add(row)

    def commit_due(self) -> bool:
        """Count a pipeline step; True once ``commit_every`` steps have gathered since the last commit."""
        self._steps_since_commit += 1
        return self._steps_since_commit >= self.commit_every

    def commit(self, frames_by_camera: dict[str, int] | None = None) -> None:
        self._write_pending_sightings()
        for camera_id, frames in (frames_by_camera or {}).items():
            self.session.execute(
                update(CameraRow)
                .where(CameraRow.run_id == self.run_id, CameraRow.camera_id == camera_id)
                .values(frames=frames)
            )
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
        self._sightings.clear()
        self._sighting_tracklets.clear()
        self.session.execute(
            update(RunRow).where(RunRow.id == self.run_id).values(status=status, finished_at=time.time())
        )
        self.session.commit()

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    def _write_pending_sightings(self) -> None:
        if not self._sightings:
            return
        for row, tracklet in zip(self._sightings, self._sighting_tracklets):
            row["tracklet_id"] = tracklet.db_id
            row["global_id"] = tracklet.global_id
            row["run_id"] = self.run_id
        self.session.execute(insert(SightingRow), self._sightings)
        self._sightings = []
        self._sighting_tracklets = []
