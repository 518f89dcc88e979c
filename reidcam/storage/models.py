"""The database schema (SQLAlchemy 2): runs, cameras, identities, tracklets, sightings, embeddings, events.

One database may hold many runs; every table carries ``run_id``. Global ids count from 1 within
a run, so an identity is ``(run_id, global_id)``. Sightings (one row per box per frame) carry
their global id directly, so exports need no joins; it is NULL until the tracklet is associated
(and stays NULL for tracklets too short to be anyone). Times are stored as POSIX seconds (UTC),
which sort and subtract the same on every backend; exports write ISO 8601.
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, finished, interrupted, failed
    config_path: Mapped[str] = mapped_column(Text)
    config_json: Mapped[str] = mapped_column(Text)
    detector: Mapped[str] = mapped_column(Text, default="")
    reid_model: Mapped[str] = mapped_column(Text, default="")
    association_mode: Mapped[str] = mapped_column(String(16), default="combined")


class CameraRow(Base):
    __tablename__ = "cameras"
    __table_args__ = (UniqueConstraint("run_id", "camera_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    camera_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(Text)
    fps: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    frames: Mapped[int] = mapped_column(Integer, default=0)


class IdentityRow(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("run_id", "global_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    global_id: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[float] = mapped_column(Float)
    merged_into: Mapped[int | None] = mapped_column(Integer, nullable=True)


class TrackletRow(Base):
    __tablename__ = "tracklets"
    __table_args__ = (UniqueConstraint("run_id", "camera_id", "local_track_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    camera_id: Mapped[str] = mapped_column(String(128))
    local_track_id: Mapped[int] = mapped_column(Integer)
    global_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_frame: Mapped[int] = mapped_column(Integer)
    last_frame: Mapped[int] = mapped_column(Integer)
    first_time: Mapped[float] = mapped_column(Float)
    last_time: Mapped[float] = mapped_column(Float)
    boxes: Mapped[int] = mapped_column(Integer, default=0)
    crops: Mapped[int] = mapped_column(Integer, default=0)
    closed: Mapped[bool] = mapped_column(default=False)


class SightingRow(Base):
    __tablename__ = "sightings"
    __table_args__ = (
        Index("ix_sightings_run_global", "run_id", "global_id"),
        Index("ix_sightings_run_camera_frame", "run_id", "camera_id", "frame"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    tracklet_id: Mapped[int] = mapped_column(ForeignKey("tracklets.id"), index=True)
    camera_id: Mapped[str] = mapped_column(String(128))
    frame: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    local_track_id: Mapped[int] = mapped_column(Integer)
    global_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    foot_x: Mapped[float] = mapped_column(Float)
    foot_y: Mapped[float] = mapped_column(Float)


class TrackletEmbeddingRow(Base):
    """A tracklet's appearance: the quality-weighted mean of its crop embeddings, float32 bytes."""

    __tablename__ = "tracklet_embeddings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    tracklet_id: Mapped[int] = mapped_column(ForeignKey("tracklets.id"), unique=True)
    dim: Mapped[int] = mapped_column(Integer)
    crops: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class IdentityEventRow(Base):
    """The log of every create, assign, merge and split."""

    __tablename__ = "identity_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    global_id: Mapped[int] = mapped_column(Integer)
    other_global_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tracklet_id: Mapped[int | None] = mapped_column(ForeignKey("tracklets.id"), nullable=True)
    distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    time: Mapped[float] = mapped_column(Float)
    logged_at: Mapped[float] = mapped_column(Float)
