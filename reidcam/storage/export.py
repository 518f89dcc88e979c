"""Trajectories out of the database: the contract CSV, or MOTChallenge files per camera.

CSV (design.md), one row per person box per frame, header first::

    global_id,camera_id,local_track_id,frame,timestamp,x1,y1,x2,y2,confidence,foot_x,foot_y

rows ordered by global id, then time. Only boxes of tracklets that have a global id are
written. Works on a finished database and on one a run is still writing (SQLite WAL readers
see the last commit).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from reidcam.errors import ConfigError, DataError
from reidcam.storage.models import CameraRow, RunRow, SightingRow
from reidcam.storage.repository import database_url, open_engine

logger = logging.getLogger(__name__)

CSV_HEADER = (
    "global_id",
    "camera_id",
    "local_track_id",
    "frame",
    "timestamp",
    "x1",
    "y1",
    "x2",
    "y2",
    "confidence",
    "foot_x",
    "foot_y",
)
FORMATS = ("csv", "mot")
BATCH_ROWS = 5000


def iso_utc(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``: ``2026-01-15T09:00:08.100Z``."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_trajectories(db: str, out: Path, fmt: str = "csv", run_id: int | None = None) -> int:
    """Write the trajectories of ``run_id`` (default: the latest run) to ``out``; returns the row count."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    engine = open_engine(database_url(db), must_exist=True)
    try:
        with Session(engine) as session:
            run = _pick_run(session, run_id, db)
            if fmt == "csv":
                count = write_csv(session, run, Path(out))
            else:
                count = write_mot(session, run, Path(out))
    except SQLAlchemyError as error:
        raise DataError(f"{db}: not a reidcam database ({str(error).splitlines()[0]})") from None
    finally:
        engine.dispose()
    logger.info("exported %d rows of run %d to %s", count, run, out)
    return count


def export_run_csv(engine: Engine, run_id: int, out: Path) -> int:
    """The end-of-run CSV, through the run's own engine."""
    with Session(engine) as session:
        return write_csv(session, run_id, out)


def _pick_run(session: Session, run_id: int | None, db: str) -> int:
    if run_id is None:
        latest = session.scalar(select(func.max(RunRow.id)))
        if latest is None:
            raise DataError(f"{db}: the database holds no run yet")
        return int(latest)
    if session.get(RunRow, run_id) is None:
        raise DataError(f"{db}: no run {run_id}")
    return run_id


def _sightings(session: Session, run_id: int, order: tuple) -> Iterator[SightingRow]:
    statement = (
        select(SightingRow)
        .where(SightingRow.run_id == run_id, SightingRow.global_id.is_not(None))
        .order_by(*order)
        .execution_options(yield_per=BATCH_ROWS)
    )
    yield from session.scalars(statement)


def write_csv(session: Session, run_id: int, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    order = (SightingRow.global_id, SightingRow.timestamp, SightingRow.camera_id, SightingRow.frame)
    count = 0
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for row in _sightings(session, run_id, order):
            writer.writerow(
                (
                    row.global_id,
                    row.camera_id,
                    row.local_track_id,
                    row.frame,
                    iso_utc(row.timestamp),
                    f"{row.x1:.2f}",
                    f"{row.y1:.2f}",
                    f"{row.x2:.2f}",
                    f"{row.y2:.2f}",
                    f"{row.confidence:.4f}",
                    f"{row.foot_x:.3f}",
                    f"{row.foot_y:.3f}",
                )
            )
            count += 1
    return count


def write_mot(session: Session, run_id: int, out: Path) -> int:
    """One ``<camera>.txt`` per camera in the folder ``out``: frame,id,left,top,width,height,conf,-1,-1,-1."""
    out.mkdir(parents=True, exist_ok=True)
    cameras = session.scalars(select(CameraRow.camera_id).where(CameraRow.run_id == run_id)).all()
    order = (SightingRow.camera_id, SightingRow.frame, SightingRow.global_id)
    handles = {camera: (out / f"{camera}.txt").open("w") for camera in cameras}
    count = 0
    try:
        for row in _sightings(session, run_id, order):
            if row.camera_id not in handles:
                handles[row.camera_id] = (out / f"{row.camera_id}.txt").open("w")
            handles[row.camera_id].write(
                f"{row.frame},{row.global_id},{row.x1:.2f},{row.y1:.2f},{row.x2 - row.x1:.2f},"
                f"{row.y2 - row.y1:.2f},{row.confidence:.4f},-1,-1,-1\n"
            )
            count += 1
    finally:
        for handle in handles.values():
            handle.close()
    return count
