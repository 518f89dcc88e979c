"""Live progress of a run, per camera: frames, frames per second, live tracks, identities.

On a terminal it is a rich table redrawn a few times a second (on stderr); elsewhere (CI logs,
files) a log line every few seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table

from reidcam.tracking.gallery import Gallery
from reidcam.tracking.tracklets import TrackletBook

logger = logging.getLogger(__name__)

REFRESH_S = 0.25
LOG_EVERY_S = 10.0


@dataclass
class CameraProgress:
    camera_id: str
    frames: int = 0
    tracks: int = 0
    first_seen: float | None = None
    last_seen: float | None = None

    @property
    def fps(self) -> float:
        if self.first_seen is None or self.last_seen is None or self.last_seen <= self.first_seen:
            return 0.0
        return (self.frames - 1) / (self.last_seen - self.first_seen)


class ProgressTracker:
    """Counts per camera, fed by the pipeline's steps; the display classes render it."""

    def __init__(self, camera_ids: Sequence[str]) -> None:
        self.cameras = {camera_id: CameraProgress(camera_id) for camera_id in camera_ids}
        self.identities = 0
        self.started = time.perf_counter()

    def on_step(self, tracked: Sequence, book: TrackletBook, gallery: Gallery) -> None:
        now = time.perf_counter()
        for frame in tracked:
            camera = self.cameras[frame.camera_id]
            camera.frames += 1
            camera.tracks = len(frame.detections)
            camera.first_seen = camera.first_seen or now
            camera.last_seen = now
        self.identities = len(gallery.active())

    def close(self) -> None:
        """Nothing to release; the displays below draw a last time."""

    def table(self) -> Table:
        table = Table(title=f"reidcam run: {self.identities} identities, {time.perf_counter() - self.started:.0f} s")
        for column in ("camera", "frames", "fps", "tracks"):
            table.add_column(column, justify="left" if column == "camera" else "right")
        for camera in self.cameras.values():
            table.add_row(camera.camera_id, str(camera.frames), f"{camera.fps:.1f}", str(camera.tracks))
        return table

    def line(self) -> str:
        parts = [f"{c.camera_id} {c.frames} frames {c.fps:.1f} fps {c.tracks} tracks" for c in self.cameras.values()]
        return f"{'; '.join(parts)}; {self.identities} identities"


class LiveProgress(ProgressTracker):
    """A rich table on stderr, redrawn at most every ``REFRESH_S``."""

    def __init__(self, camera_ids: Sequence[str]) -> None:
        super().__init__(camera_ids)
        self._live = Live(self.table(), console=Console(stderr=True), auto_refresh=False, transient=False)
        self._drawn = 0.0

    def on_step(self, tracked: Sequence, book: TrackletBook, gallery: Gallery) -> None:
        super().on_step(tracked, book, gallery)
        if not self._live.is_started:
            self._live.start()
        if time.perf_counter() - self._drawn >= REFRESH_S:
            self._live.update(self.table(), refresh=True)
            self._drawn = time.perf_counter()

    def close(self) -> None:
        if self._live.is_started:
            self._live.update(self.table(), refresh=True)
            self._live.stop()


class LogProgress(ProgressTracker):
    """A log line every ``LOG_EVERY_S`` where there is no terminal to redraw."""

    def __init__(self, camera_ids: Sequence[str]) -> None:
        super().__init__(camera_ids)
        self._logged = time.perf_counter()

    def on_step(self, tracked: Sequence, book: TrackletBook, gallery: Gallery) -> None:
        super().on_step(tracked, book, gallery)
        if time.perf_counter() - self._logged >= LOG_EVERY_S:
            logger.info("%s", self.line())
            self._logged = time.perf_counter()

    def close(self) -> None:
        logger.info("%s", self.line())


def make_progress(camera_ids: Sequence[str]) -> ProgressTracker:
    return LiveProgress(camera_ids) if sys.stderr.isatty() else LogProgress(camera_ids)
