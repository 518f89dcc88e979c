"""Pictures of a run: an annotated video per camera, and a contact sheet per identity.

In the videos each box is labelled with its global id (``#7``) once its tracklet is associated,
and with its camera-local track (``cam1:3?``) before; a box's colour follows its global id, so
one person has one colour in every camera. The contact sheet of an identity shows its best
crops (largest, most confident, uncut), one row per camera it was seen in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import supervision as sv

from reidcam.errors import DataError
from reidcam.tracking.gallery import Gallery, Identity
from reidcam.tracking.tracklets import TrackletBook

logger = logging.getLogger(__name__)

SHEET_CROP_SIZE = (64, 128)  # width, height of one crop on the sheet
SHEET_LABEL_WIDTH = 96
UNASSIGNED_COLOUR_OFFSET = 1000


class AnnotatedVideos:
    """One MP4 per camera under ``folder``, written as the run goes."""

    def __init__(self, folder: Path, fps_by_camera: dict[str, float]) -> None:
        self.folder = folder
        self.fps_by_camera = fps_by_camera
        self._writers: dict[str, cv2.VideoWriter] = {}
        self._boxes = sv.BoxAnnotator(color_lookup=sv.ColorLookup.TRACK)
        self._labels = sv.LabelAnnotator(color_lookup=sv.ColorLookup.TRACK, text_scale=0.4, text_padding=4)

    def on_step(self, tracked: Sequence, book: TrackletBook, gallery: Gallery) -> None:
        for frame in tracked:
            self._writer(frame.camera_id, frame.image).write(self.annotate(frame, book))

    def annotate(self, frame, book: TrackletBook) -> np.ndarray:
        detections = frame.detections
        image = frame.image.copy()
        if len(detections) == 0:
            return image
        tracklets = [book.get(frame.camera_id, int(local_id)) for local_id in detections.tracker_id]
        coloured = sv.Detections(xyxy=detections.xyxy, confidence=detections.confidence)
        coloured.tracker_id = np.array(
            [t.global_id if t.global_id is not None else UNASSIGNED_COLOUR_OFFSET + t.local_id for t in tracklets]
        )
        labels = [f"#{t.global_id}" if t.global_id is not None else f"{t.camera_id}:{t.local_id}?" for t in tracklets]
        image = self._boxes.annotate(image, coloured)
        return self._labels.annotate(image, coloured, labels=labels)

    def _writer(self, camera_id: str, image: np.ndarray) -> cv2.VideoWriter:
        writer = self._writers.get(camera_id)
        if writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{camera_id}.mp4"
            size = (image.shape[1], image.shape[0])
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps_by_camera[camera_id], size)
            if not writer.isOpened():
                raise DataError(f"cannot write video {path}")
            self._writers[camera_id] = writer
        return writer

    def close(self) -> None:
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()


def write_contact_sheets(gallery: Gallery, folder: Path, crops_per_camera: int = 6) -> list[Path]:
    """One PNG per identity with crops: ``identity_0007.png``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for identity in gallery.active():
        sheet = contact_sheet(identity, crops_per_camera)
        if sheet is None:
            continue
        path = folder / f"identity_{identity.global_id:04d}.png"
        if not cv2.imwrite(str(path), sheet):
            raise DataError(f"cannot write {path}")
        written.append(path)
    logger.info("wrote %d contact sheets to %s", len(written), folder)
    return written


def contact_sheet(identity: Identity, crops_per_camera: int) -> np.ndarray | None:
    """Rows of the identity's best crops, one row per camera, labelled; None without any crop."""
    rows = []
    for camera_id in sorted(identity.cameras):
        crops = sorted(
            (crop for t in identity.tracklets if t.camera_id == camera_id for crop in t.kept_crops),
            key=lambda crop: crop.quality,
            reverse=True,
        )[:crops_per_camera]
        if crops:
            rows.append(_sheet_row(f"#{identity.global_id} {camera_id}", [c.image for c in crops], crops_per_camera))
    return np.vstack(rows) if rows else None


def _sheet_row(label: str, images: list[np.ndarray], slots: int) -> np.ndarray:
    width, height = SHEET_CROP_SIZE
    row = np.full((height, SHEET_LABEL_WIDTH + slots * width, 3), 255, dtype=np.uint8)
    cv2.putText(row, label, (4, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for slot, image in enumerate(images):
        x = SHEET_LABEL_WIDTH + slot * width
        row[:, x : x + width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return row
