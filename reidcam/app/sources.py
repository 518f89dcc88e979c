"""Frames from every camera: one reader thread per camera, merged on the cameras' clocks.

A camera is a video file, an image folder, a stream URL (RTSP, HTTP, ...) or a webcam index,
all decoded with OpenCV. Each reader thread fills a small queue; the end of a file ends its
camera, while a live source that drops is reopened with exponential backoff as the other
cameras go on.

``MultiCameraSource.steps`` hands out one *step* at a time: at most one frame per camera, all
within ``sync_tolerance_s`` of the earliest pending frame. Recordings whose clocks differ are so
replayed in time order, which is what online association across cameras needs; cameras on the
same clock are batched together, which is what the detector and the embedder need.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from reidcam.app.config import CameraConfig, StreamConfig
from reidcam.errors import DataError

# FFmpeg writes its own complaints straight to stderr ("moov atom not found", "Connection refused");
# every failure is reported here as one line instead. Set the variable to 24 (warning) to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FALLBACK_FPS = 10.0
QUEUE_SIZE = 8
LIVE_WAIT_S = 0.05


@dataclass(frozen=True)
class Frame:
    """One decoded frame of one camera.

    ``index`` is 1-based in the camera's own source (the MOTChallenge convention);
    ``timestamp`` is POSIX seconds (UTC) on the camera's clock.
    """

    camera_id: str
    index: int
    timestamp: float
    image: np.ndarray

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, tz=timezone.utc)


@dataclass(frozen=True)
class CameraInfo:
    """What opening a camera told us, stored with the run."""

    camera_id: str
    source: str
    fps: float
    width: int
    height: int
    start_time: datetime | None
    live: bool


class FrameReader:
    """Decodes one source; ``read`` returns None at the end (or on a drop, for live sources)."""

    fps: float | None
    size: tuple[int, int]

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder."""


class VideoReader(FrameReader):
    """Video files, stream URLs and webcams through ``cv2.VideoCapture``."""

    def __init__(self, source: str | int, streams: StreamConfig) -> None:
        if isinstance(source, int):
            self._capture = cv2.VideoCapture(source)
        else:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(streams.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(streams.read_timeout_s * 1000),
            ]
            if streams.decoder_threads:
                params += [cv2.CAP_PROP_N_THREADS, streams.decoder_threads]
            self._capture = cv2.VideoCapture(source, cv2.CAP_ANY, params)
        if not self._capture.isOpened():
            raise DataError("cannot be opened")
        reported = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = reported if reported and 0 < reported < 1000 else None
        self._first = self._capture.read()[1]
        if self._first is None:
            self._capture.release()
            raise DataError("no frame could be decoded")
        self.size = (self._first.shape[1], self._first.shape[0])

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            image, self._first = self._first, None
            return image
        ok, image = self._capture.read()
        return image if ok else None

    def close(self) -> None:
        self._capture.release()


class ImageFolderReader(FrameReader):
    """A folder of images, read in name order; an image that cannot be decoded is skipped."""

    def __init__(self, folder: Path) -> None:
        self._paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder")
        self.fps = None
        self._position = 0
        self._pending: np.ndarray | None = None
        first = self.read()
        if first is None:
            raise DataError("no image in the folder could be decoded")
        self._pending = first
        self.size = (first.shape[1], first.shape[0])

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        while self._position < len(self._paths):
            path = self._paths[self._position]
            self._position += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            logger.warning("skipping unreadable image %s", path)
        return None


def open_reader(camera: CameraConfig, streams: StreamConfig) -> FrameReader:
    """The reader for one camera's source; ``DataError`` with a one-line reason if it cannot be opened."""
    source = camera.source
    if camera.is_live:
        return VideoReader(source, streams)
    path = Path(str(source))
    if not path.exists():
        raise DataError(f"camera {camera.id}: source not found: {path}")
    try:
        if path.is_dir():
            return ImageFolderReader(path)
        return VideoReader(str(path), streams)
    except DataError as error:
        raise DataError(f"camera {camera.id}: {path}: {error}") from None


def open_live_reader(camera: CameraConfig, streams: StreamConfig, stop: threading.Event) -> FrameReader:
    """Open a stream or webcam, retrying with exponential backoff."""
    delay = streams.backoff_initial_s
    for attempt in range(streams.retries + 1):
        try:
            return VideoReader(camera.source, streams)
        except DataError:
            if attempt == streams.retries or stop.is_set():
                break
            logger.info("camera %s: cannot open %s, retry in %.1f s", camera.id, camera.source, delay)
            stop.wait(delay)
            delay = min(delay * 2, streams.backoff_max_s)
    raise DataError(f"camera {camera.id}: stream unreachable after {streams.retries + 1} attempts: {camera.source}")


_END = object()


@dataclass
class CameraStream:
    """A reader thread for one camera, feeding a bounded queue with ``Frame`` objects."""

    camera: CameraConfig
    reader: FrameReader
    streams: StreamConfig
    start_time: float
    fps: float
    max_frames: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    decode_seconds: float = 0.0
    decode_cpu_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.camera.id}", daemon=True)
        self.frames_read = 0

    def start(self) -> None:
        self._thread.start()

    def release_if_unstarted(self) -> None:
        """A camera opened but never read (the run failed before it began) still holds its decoder."""
        if not self.started:
            self.reader.close()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def live(self) -> bool:
        return self.camera.is_live

    def _run(self) -> None:
        try:
            self._read_all()
        except Exception:  # a reader must never take the run down; the camera just ends
            logger.exception("camera %s: reader failed", self.camera.id)
        finally:
            self.reader.close()
            self._put(_END, drop_if_full=False)

    def _read_all(self) -> None:
        index = 0
        while not self.stop.is_set() and (self.max_frames is None or index < self.max_frames):
            started, cpu_started = time.perf_counter(), time.thread_time()
            image = self.reader.read()
            self.decode_seconds += time.perf_counter() - started
            self.decode_cpu_seconds += time.thread_time() - cpu_started
            if image is None:
                if not self.live or not self._reconnect():
                    return
                continue
            index += 1
            self.frames_read = index
            self._put(Frame(self.camera.id, index, self._timestamp(index), image), drop_if_full=self.live)

    def _timestamp(self, index: int) -> float:
        """Files replay on the configured clock; live sources without a start time use the wall clock."""
        if self.live and self.camera.start_time is None:
            return time.time()
        return self.start_time + (index - 1) / self.fps

    def _reconnect(self) -> bool:
        logger.warning("camera %s: stream dropped, reconnecting", self.camera.id)
        self.reader.close()
        try:
            self.reader = open_live_reader(self.camera, self.streams, self.stop)
        except DataError as error:
            logger.warning("%s; the camera ends here", error)
            return False
        logger.info("camera %s: reconnected", self.camera.id)
        return True

    def _put(self, item: object, drop_if_full: bool) -> None:
        """Files wait for the consumer; live sources drop their oldest frame to stay current."""
        while True:
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if drop_if_full:
                    self._drop_oldest()
                elif self.stop.is_set():
                    return

    def _drop_oldest(self) -> None:
        try:
            self.queue.get_nowait()
        except queue.Empty:
            pass


class MultiCameraSource:
    """All cameras of a run; ``steps()`` yields lists of frames ordered on the cameras' clocks."""

    def __init__(self, streams: list[CameraStream], sync_tolerance_s: float | None = None) -> None:
        self.streams = {stream.camera.id: stream for stream in streams}
        periods = [1.0 / stream.fps for stream in streams]
        self.sync_tolerance_s = sync_tolerance_s if sync_tolerance_s is not None else max(periods) * 0.999
        self._heads: dict[str, Frame] = {}
        self._active = set(self.streams)

    @property
    def infos(self) -> list[CameraInfo]:
        return [
            CameraInfo(
                camera_id=s.camera.id,
                source=str(s.camera.source),
                fps=s.fps,
                width=s.reader.size[0],
                height=s.reader.size[1],
                start_time=datetime.fromtimestamp(s.start_time, tz=timezone.utc),
                live=s.live,
            )
            for s in self.streams.values()
        ]

    def steps(self) -> Iterator[list[Frame]]:
        for stream in self.streams.values():
            stream.start()
        try:
            while self._active:
                self._fill_heads()
                if not self._heads:
                    continue
                yield self._take_step()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the readers and release every decoder; safe to call more than once."""
        for stream in self.streams.values():
            stream.stop.set()
        for stream in self.streams.values():
            stream.release_if_unstarted()
            self._drain(stream)
            if stream.started:
                stream.join(timeout=2.0)

    def decode_seconds(self) -> tuple[float, float]:
        """Wall and CPU seconds the reader threads spent decoding, summed over cameras."""
        streams = self.streams.values()
        return sum(s.decode_seconds for s in streams), sum(s.decode_cpu_seconds for s in streams)

    def _fill_heads(self) -> None:
        for camera_id in sorted(self._active - set(self._heads)):
            stream = self.streams[camera_id]
            try:
                item = stream.queue.get(timeout=LIVE_WAIT_S) if stream.live else stream.queue.get()
            except queue.Empty:
                continue
            if item is _END:
                self._active.discard(camera_id)
                logger.info("camera %s: ended after %d frames", camera_id, stream.frames_read)
            else:
                self._heads[camera_id] = item

    def _take_step(self) -> list[Frame]:
        earliest = min(frame.timestamp for frame in self._heads.values())
        due = sorted((cid for cid, frame in self._heads.items() if frame.timestamp <= earliest + self.sync_tolerance_s))
        return [self._heads.pop(camera_id) for camera_id in due]

    @staticmethod
    def _drain(stream: CameraStream) -> None:
        while True:
            try:
                stream.queue.get_nowait()
            except queue.Empty:
                return


def open_cameras(
    cameras: Sequence[CameraConfig],
    streams: StreamConfig,
    run_start: datetime,
    max_frames: int | None = None,
    sync_tolerance_s: float | None = None,
) -> MultiCameraSource:
    """Open every camera at once (streams may take a while); those that fail are dropped with a warning.

    Raises ``DataError`` when no camera can be opened: the run would have nothing to do.
    """
    results: dict[str, FrameReader | DataError] = {}
    stop = threading.Event()
    streams = with_decoder_threads(streams, len(cameras))

    def attempt(camera: CameraConfig) -> None:
        try:
            results[camera.id] = (
                open_live_reader(camera, streams, stop) if camera.is_live else open_reader(camera, streams)
            )
        except DataError as error:
            results[camera.id] = error

    threads = [threading.Thread(target=attempt, args=(camera,), daemon=True) for camera in cameras]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failures = [results[c.id] for c in cameras if isinstance(results[c.id], DataError)]
    if len(failures) == len(cameras):
        raise DataError("; ".join(str(error) for error in failures))
    for error in failures:
        logger.warning("%s; going on without this camera", error)
    camera_streams = [
        _camera_stream(camera, results[camera.id], streams, run_start, max_frames)
        for camera in cameras
        if not isinstance(results[camera.id], DataError)
    ]
    return MultiCameraSource(camera_streams, sync_tolerance_s)


def with_decoder_threads(streams: StreamConfig, cameras: int) -> StreamConfig:
    """``streams`` with its decoder threads set: as configured, else the CPU cores shared among the cameras."""
    if streams.decoder_threads:
        return streams
    return streams.model_copy(update={"decoder_threads": max(1, (os.cpu_count() or 1) // max(cameras, 1))})


def _camera_stream(
    camera: CameraConfig, reader: FrameReader, streams: StreamConfig, run_start: datetime, max_frames: int | None
) -> CameraStream:
    fps = camera.fps or reader.fps
    if fps is None:
        logger.warning(
            "camera %s: frame rate unknown, assuming %.0f fps (set fps in cams.yaml)", camera.id, FALLBACK_FPS
        )
        fps = FALLBACK_FPS
    start = camera.start_time or run_start
    return CameraStream(camera, reader, streams, start_time=start.timestamp(), fps=fps, max_frames=max_frames)
