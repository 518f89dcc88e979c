"""The store as it wrote before its bulk paths: one ORM statement per event and per row group.

Kept as the reference the bulk paths must match row for row (tests/test_storage.py). It is the
writing code of ``Store`` up to commit 8fe56d0, unchanged but for ``add_frame_sightings``, which
builds the dicts that ``pipeline._sighting_row`` built there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import insert, select, update

from reidcam.storage.models import (
    CameraRow,
    IdentityEventRow,
    IdentityRow,
    SightingRow,
    TrackletEmbeddingRow,
    TrackletRow,
)
from reidcam.storage.repository import Store


class PerRowStore(Store):
    def __init__(self, url: str, commit_every: int = 25) -> None:
        super().__init__(url, commit_every)
        self._sightings: list[dict[str, Any]] = []
        self._sighting_tracklets: list[Any] = []

    def add_tracklets(self, tracklets: Sequence[Any]) -> None:
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
        rows = [
            {
                "camera_id": camera_id,
                "frame": frame,
                "timestamp": timestamp,
                "x1": float(box[0]),
                "y1": float(box[1]),
                "x2": float(box[2]),
                "y2": float(box[3]),
                "confidence": float(confidence),
                "local_track_id": int(local_id),
                "foot_x": float(foot[0]),
                "foot_y": float(foot[1]),
            }
            for box, confidence, local_id, foot in zip(xyxy, confidences, local_ids, feet)
        ]
        self.add_sightings(tracklets, rows)

    def add_sightings(self, tracklets: Sequence[Any], rows: Sequence[dict[str, Any]]) -> None:
        self._sighting_tracklets.extend(tracklets)
        self._sightings.extend(dict(row) for row in rows)

    def apply_events(self, events: Sequence[Any]) -> None:
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

    def abandon(self, status: str) -> None:
        self._sightings.clear()
        self._sighting_tracklets.clear()
        super().abandon(status)

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
