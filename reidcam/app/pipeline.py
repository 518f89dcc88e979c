"""The stages of the main job, as small objects wired in a loop over steps.

::

    MultiCameraSource ─steps─► DetectTrack ─TrackedFrame lists─► EmbeddingStage ─► Associator ─► Store
                                   │                                                  (and observers:
                                   └─► tracked_frames(): detection + tracking only     progress, video)

``DetectTrack`` is the reusable part: frames of all cameras are detected in one batch per step,
then each camera's tracker runs on its own frame. ``tracked_frames`` exposes it as a generator of
``TrackedFrame`` for other jobs (``reidcam mine``) that need per-camera tracks without ReID.
``MultiCameraPipeline`` adds crop embedding (batched over all cameras), online association, the
store and the observers, and finishes with the refinement pass. With ``detector.overlap`` on (off by
default: it measured no faster), detection and tracking of the next step run in a
background thread (``Prefetch``) while the main thread handles the current one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
import supervision as sv

from reidcam.app.config import CamsConfig, ReidConfig
from reidcam.app.prefetch import Prefetch
from reidcam.app.sources import Frame, MultiCameraSource, open_cameras
from reidcam.detection.base import Detector, PendingDetections
from reidcam.detection.geometry import CameraGeometry
from reidcam.devices import resolve_device
from reidcam.errors import ConfigError
from reidcam.storage.repository import Store
from reidcam.tracking.association import Associator, IdentityEvent, Topology
from reidcam.tracking.gallery import Gallery
from reidcam.tracking.tracker import TrackerSpec
from reidcam.tracking.tracker_pool import TrackInput, open_trackers
from reidcam.tracking.tracklets import CropCandidate, KeptCrop, Tracklet, TrackletBook, select_crops
from reidcam.weights import DEFAULT_REID_MODEL, DEFAULT_REID_WEIGHTS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackedFrame:
    """One frame of one camera after detection and tracking.

    ``detections`` holds the confirmed tracks of the frame: xyxy, confidence and ``tracker_id``
    (the camera's local track id, from 1).
    """

    camera_id: str
    index: int
    timestamp: float
    image: np.ndarray
    detections: sv.Detections

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, tz=timezone.utc)


@dataclass
class StageTime:
    """Wall seconds, process CPU seconds (all threads) and items handled by one stage."""

    seconds: float = 0.0
    items: int = 0
    cpu_seconds: float = 0.0


@dataclass
class StageClock:
    """Time and item counts per stage, for the run summary and the CPU benchmark.

    CPU time beside wall time tells a slow stage from a busy machine. Stages may be timed from
    several threads (detection and tracking overlap the later stages), so ``add`` is thread-safe;
    overlapped stages' wall times then sum to more than the run's, and as CPU time is the process's,
    each one's also counts what the other thread did meanwhile.
    """

    stages: dict[str, StageTime] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def measure(self, stage: str, items: int = 1) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - wall, items, time.process_time() - cpu)

    def add(self, stage: str, seconds: float, items: int, cpu_seconds: float | None = None) -> None:
        with self._lock:
            entry = self.stages.setdefault(stage, StageTime())
            entry.seconds += seconds
            entry.items += items
            entry.cpu_seconds += seconds if cpu_seconds is None else cpu_seconds


class DetectTrack:
    """Detection batched over the cameras of a step, then each camera's own tracker.

    The trackers run in the main thread or in worker processes (``tracker.processes``); the processes
    live as long as this object: close it, or use it as a context manager.
    """

    def __init__(
        self,
        config: CamsConfig,
        detector: Detector,
        source: MultiCameraSource,
        clock: StageClock | None = None,
    ) -> None:
        self.source = source
        self.detector = detector
        self.clock = clock or StageClock()
        self.geometry = {camera.id: CameraGeometry.from_config(camera) for camera in config.cameras}
        spec = TrackerSpec.from_config(config.tracker)
        frame_rates = {camera_id: stream.fps for camera_id, stream in source.streams.items()}
        self.trackers = open_trackers(spec, frame_rates, config.tracker.processes)

    def close(self) -> None:
        """End the tracker processes, if any."""
        self.trackers.close()

    def __enter__(self) -> DetectTrack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def steps(self) -> Iterator[list[TrackedFrame]]:
        """Each step's tracked frames. A step's detection is started before the step before it is tracked
        and handed on: on a GPU, the network runs on one step while the host tracks, embeds and stores
        the last (the pipeline's host work was the bound: BENCHMARKS.md, session 7)."""
        in_flight: tuple[Sequence[Frame], PendingDetections] | None = None
        with closing(iter(self.source.steps())) as source:
            while True:
                try:
                    frames = next(source, None)
                    started = None if frames is None else (frames, self._submit(frames))
                except Exception:
                    if in_flight is not None:  # a failing camera: the step read before it is still handed on
                        yield self._track(*in_flight)
                    raise
                if in_flight is not None:
                    yield self._track(*in_flight)
                if started is None:
                    return
                in_flight = started

    def frames(self) -> Iterator[TrackedFrame]:
        for step in self.steps():
            yield from step

    def _submit(self, frames: Sequence[Frame]) -> PendingDetections:
        with self.clock.measure("detect", len(frames)):
            return self.detector.submit([frame.image for frame in frames])

    def _track(self, frames: Sequence[Frame], pending: PendingDetections) -> list[TrackedFrame]:
        with self.clock.measure("detect", 0):
            detections = pending.result()
        with self.clock.measure("track", len(frames)):
            tracks = self.trackers.track([
                TrackInput(frame.camera_id, self.geometry[frame.camera_id].inside_roi(found), frame.timestamp, frame.image)
                for frame, found in zip(frames, detections)
            ])
        return [
            TrackedFrame(frame.camera_id, frame.index, frame.timestamp, frame.image, found)
            for frame, found in zip(frames, tracks)
        ]


def build_detector(config: CamsConfig, device: str, frame_shapes: Sequence[tuple[int, ...]] = ()) -> Detector:
    """The detector of cams.yaml, warmed up for frames of ``frame_shapes`` (height, width, 3), one per camera."""
    from reidcam.detection.yolo import YoloDetector

    detector = YoloDetector(config.detector, str(resolve_device(config.detector.device or device)))
    detector.warm_up(frame_shapes)
    return detector


def tracked_frames(
    config: CamsConfig, device: str = "auto", max_frames: int | None = None, detector: Detector | None = None
) -> Iterator[TrackedFrame]:
    """Detection and tracking only: every camera's tracked frames, in clock order.

    For jobs that need per-camera tracks but no identities (``reidcam mine``).
    """
    detector = detector or build_detector(config, device)
    source = open_cameras(
        config.cameras, config.streams, datetime.now(timezone.utc), max_frames, config.sync_tolerance_s,
        gpu=bool(getattr(detector, "on_cuda", False)),
    )
    with DetectTrack(config, detector, source) as detect_track:
        yield from detect_track.frames()


class Embedder(Protocol):
    embed_dim: int

    def embed(self, crops: Sequence[np.ndarray], camera_indices: Sequence[int] | None = None) -> np.ndarray: ...


def create_embedder(config: ReidConfig, device: str) -> Embedder:
    """The ReID model of cams.yaml: an .onnx file, or a ReIDMamba variant with its weights."""
    device = str(resolve_device(config.device or device))
    if config.is_onnx:
        from reidcam.reid.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(Path(config.model), device=device, batch_size=config.batch_size, img_size=config.img_size)
    try:
        from reidcam.reid.embedder import Embedder as ReidMambaEmbedder
    except ImportError as error:
        raise ConfigError(f"reid.model {config.model!r}: the ReIDMamba embedder cannot be loaded ({error})") from None
    weights = _reid_weights(config)
    return ReidMambaEmbedder.create(
        weights,
        model_name=config.model,
        device=device,
        img_size=config.img_size,
        batch_size=config.batch_size,
        flip=config.flip,
    )


def _reid_weights(config: ReidConfig) -> Path | None:
    if config.weights is not None:
        weights = Path(config.weights)
        if not weights.is_file():
            raise ConfigError(f"reid.weights: file not found: {weights}")
        return weights
    if config.model == DEFAULT_REID_MODEL and DEFAULT_REID_WEIGHTS.is_file():
        return DEFAULT_REID_WEIGHTS
    return None  # the embedder warns that a random model carries little identity


class EmbeddingStage:
    """Crops of live tracks, every k frames, embedded in one batch over all cameras."""

    def __init__(
        self,
        embedder: Embedder | None,
        config: ReidConfig,
        camera_indices: dict[str, int],
        keep_crops: int,
        clock: StageClock,
    ) -> None:
        self.embedder = embedder
        self.config = config
        self.camera_indices = camera_indices
        self.keep_crops = keep_crops
        self.clock = clock

    @property
    def active(self) -> bool:
        return self.embedder is not None or self.keep_crops > 0

    def process(self, tracked: Sequence[TrackedFrame], book: TrackletBook) -> int:
        """Select, embed and add crops to their tracklets; returns the number embedded."""
        if not self.active:
            return 0
        candidates: list[CropCandidate] = []
        for frame in tracked:
            candidates.extend(
                select_crops(frame.camera_id, frame.index, frame.image, frame.detections, book, self.config)
            )
        if not candidates:
            return 0
        for candidate in candidates:
            book.get(candidate.camera_id, candidate.local_id).keep_crop(
                KeptCrop(candidate.quality, candidate.frame, candidate.crop), self.keep_crops
            )
        if self.embedder is None:
            return 0
        with self.clock.measure("reid", len(candidates)):
            vectors = self.embedder.embed(
                [c.crop for c in candidates], camera_indices=[self.camera_indices[c.camera_id] for c in candidates]
            )
        for candidate, vector in zip(candidates, vectors):
            book.get(candidate.camera_id, candidate.local_id).add_embedding(vector, candidate.quality)
        return len(candidates)


class StepObserver(Protocol):
    """Sees every step (progress display, annotated video) and the end of the run."""

    def on_step(self, tracked: Sequence[TrackedFrame], book: TrackletBook, gallery: Gallery) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunSummary:
    run_id: int
    db_url: str
    csv_path: Path | None
    frames: dict[str, int]
    tracklets: int
    identities: int
    events: dict[str, int]
    wall_seconds: float
    stages: dict[str, StageTime]
    overlap: bool = False  # detect and track overlapped the later stages: stage times sum to more than the wall
    late_rate: float | None = None  # frames/s over the second half of the steps (see ``late_frame_rate``)
    steps: int = 0  # detection batches: frames per step tell how much the cameras' clocks overlap

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())


def late_frame_rate(step_marks: Sequence[tuple[float, int]]) -> float | None:
    """Frames per second over the second half of a run's steps, from each step's end time and frame count.

    The whole run's rate includes its start: on a GPU, the first steps compile kernels and capture graphs
    for every new batch shape, which a short benchmark run never earns back, while a camera runs for hours.
    None when the run had fewer than four steps.
    """
    if len(step_marks) < 4:
        return None
    middle = len(step_marks) // 2
    seconds = step_marks[-1][0] - step_marks[middle][0]
    frames = sum(count for _, count in step_marks[middle + 1:])
    return frames / seconds if seconds > 0 else None


class MultiCameraPipeline:
    """The main job's loop: detect+track, embed, associate, store, observe; then refine and finish."""

    def __init__(
        self,
        config: CamsConfig,
        detect_track: DetectTrack,
        embedding: EmbeddingStage,
        store: Store,
        observers: Sequence[StepObserver] = (),
    ) -> None:
        self.config = config
        self.detect_track = detect_track
        self.embedding = embedding
        self.store = store
        self.observers = list(observers)
        self.clock = detect_track.clock
        self.overlap = config.detector.overlap
        self.book = TrackletBook(config.association.tracklet_timeout_s)
        self.associator = Associator(config.association, Topology(config.topology, config.association))
        self.frames: dict[str, int] = {camera_id: 0 for camera_id in detect_track.source.streams}
        self.event_counts: dict[str, int] = {}
        self._closed_since_commit: list[Tracklet] = []
        self.step_marks: list[tuple[float, int]] = []  # (perf_counter at a step's end, its frames)

    @property
    def gallery(self) -> Gallery:
        return self.associator.gallery

    def run(self) -> None:
        """Process every step until the cameras end; raises ``KeyboardInterrupt`` through if stopped."""
        with self._tracked_steps() as steps:
            for tracked in steps:
                self.process_step(tracked)
                self.step_marks.append((time.perf_counter(), len(tracked)))
        self.finish()

    def _tracked_steps(self) -> AbstractContextManager[Iterable[list[TrackedFrame]]]:
        """Detection and tracking; when overlapping, in a background thread a few steps ahead."""
        steps = self.detect_track.steps()
        if not self.overlap:
            return closing(steps)
        logger.info("detection and tracking run in a background thread, overlapping the later stages")
        return Prefetch(steps, name="detect-track")

    def process_step(self, tracked: Sequence[TrackedFrame]) -> None:
        with self.clock.measure("store", 0):
            self._record(tracked)
        self.embedding.process(tracked, self.book)
        with self.clock.measure("associate", len(tracked)):
            closed = self.book.close_quiet()
            self._closed_since_commit.extend(closed)
            events = self.associator.associate(self.book.open_tracklets() + closed)
        with self.clock.measure("store", len(tracked)):
            self._log_events(events)
            if self.store.commit_due():
                self._commit()
        for observer in self.observers:
            observer.on_step(tracked, self.book, self.gallery)

    def finish(self) -> None:
        """Close every tracklet, associate the last ones, refine, and commit the end state."""
        with self.clock.measure("associate", 0):
            closed = self.book.close_all()
            self._closed_since_commit.extend(closed)
            events = self.associator.associate(closed)
            events += self.associator.refine()
        with self.clock.measure("store", 0):
            self._log_events(events)
            self._commit()
        for observer in self.observers:
            observer.close()

    def _record(self, tracked: Sequence[TrackedFrame]) -> None:
        """The step's boxes as sightings; the tracklets that start in it are inserted together, after."""
        started: list[Tracklet] = []
        for frame in tracked:
            self.frames[frame.camera_id] = frame.index
            track_ids = [] if frame.detections.tracker_id is None else frame.detections.tracker_id.tolist()
            started += self.book.observe(frame.camera_id, frame.index, frame.timestamp, track_ids)
            self._add_sightings(frame)
        self.store.add_tracklets(started)

    def _add_sightings(self, frame: TrackedFrame) -> None:
        """The frame's boxes, handed to the store as arrays; the store builds the rows when it writes them."""
        detections = frame.detections
        if len(detections) == 0:
            return
        feet = self.detect_track.geometry[frame.camera_id].ground_points(detections.xyxy)
        confidences = detections.confidence if detections.confidence is not None else np.ones(len(detections))
        local_ids = detections.tracker_id.tolist()
        tracklets = [self.book.get(frame.camera_id, local_id) for local_id in local_ids]
        self.store.add_frame_sightings(
            frame.camera_id, frame.index, frame.timestamp, detections.xyxy, confidences, local_ids, feet, tracklets
        )

    def _log_events(self, events: Sequence[IdentityEvent]) -> None:
        if not events:
            return
        self.store.apply_events(events)
        for item in events:
            self.event_counts[item.kind] = self.event_counts.get(item.kind, 0) + 1

    def _commit(self) -> None:
        changed = self.book.open_tracklets() + self._closed_since_commit
        self.store.update_tracklets(changed)
        self.store.save_embeddings(self._closed_since_commit)
        self.store.commit(self.frames)
        self._closed_since_commit = []
