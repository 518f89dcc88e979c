"""Frames from every camera: one decoder per camera, merged on the cameras' clocks.

A camera is a video file, an image folder, a stream URL (RTSP, HTTP, ...) or a webcam index,
all decoded with OpenCV. Each camera's decoder runs ahead of the consumer by a few frames, in a
thread (``streams.decode: thread``, here) or in its own process writing into shared memory
(``process``, decode_process.py); the end of a file ends its camera, while a live source that
drops is reopened with exponential backoff as the other cameras go on.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
JOIN_S = 2.0  # how long closing waits for the decoders to end


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

    def read_into(self, out: np.ndarray) -> np.ndarray | None:
        """The next frame, written into ``out`` when it has the frame's shape (else a new array)."""
        image = self.read()
        if image is not None and image.shape == out.shape and image.dtype == out.dtype:
            np.copyto(out, image)
            return out
        return image

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

    def read_into(self, out: np.ndarray) -> np.ndarray | None:
        """FFmpeg decodes straight into ``out`` when the shapes match (OpenCV reuses a fitting array)."""
        if self._first is not None:
            return super().read_into(out)
        ok, image = self._capture.read(out)
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


END = object()  # what a feed's ``get`` returns once its camera has ended


@dataclass
class DecodeStats:
    """What decoding one camera cost so far."""

    frames_read: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def frame_timestamp(camera: CameraConfig, start_time: float, fps: float, index: int, read_at: float) -> float:
    """Files replay on the configured clock; live sources without a start time use the wall clock of the read."""
    if camera.is_live and camera.start_time is None:
        return read_at
    return start_time + (index - 1) / fps


class CameraDecoder:
    """Decodes one camera to its end, in whichever thread or process runs it: the frame cap, the decode
    time, and the reconnects of a live source that drops. ``stop`` is a threading or multiprocessing Event."""

    def __init__(
        self, camera: CameraConfig, reader: FrameReader, streams: StreamConfig, stop, max_frames: int | None
    ) -> None:
        self.camera = camera
        self.reader = reader
        self.streams = streams
        self.stop = stop
        self.max_frames = max_frames
        self.stats = DecodeStats()

    def frames(self, buffer: Callable[[], np.ndarray | None] = lambda: None) -> Iterator[tuple[int, np.ndarray]]:
        """(index, image) of every frame, 1-based; ``buffer`` gives the array to decode the next frame into
        (None: a new one). The reader is closed when the frames end or the caller stops iterating."""
        try:
            while not self.stop.is_set() and (self.max_frames is None or self.stats.frames_read < self.max_frames):
                out = buffer()
                started, cpu_started = time.perf_counter(), time.thread_time()
                image = self.reader.read() if out is None else self.reader.read_into(out)
                self.stats.seconds += time.perf_counter() - started
                self.stats.cpu_seconds += time.thread_time() - cpu_started
                if image is None:
                    if not self.camera.is_live or not self._reconnect():
                        return
                    continue
                self.stats.frames_read += 1
                yield self.stats.frames_read, image
        finally:
            self.reader.close()

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


class CameraFeed:
    """One camera's decoded frames, a few ahead of the consumer; ``get`` hands them out in order.

    ``get`` returns the next ``Frame``, or ``END`` once the camera has ended, and raises ``queue.Empty``
    when ``timeout`` passes first. ``close`` stops the decoder and releases the source; it is safe to
    call more than once, started or not.
    """

    camera: CameraConfig
    fps: float
    start_time: float
    size: tuple[int, int]
    stats: DecodeStats

    @property
    def live(self) -> bool:
        return self.camera.is_live

    def start(self) -> None:
        raise NotImplementedError

    def get(self, timeout: float | None = None) -> Frame | object:
        raise NotImplementedError

    def stop(self) -> None:
        """Tell the decoder to stop, without waiting for it (``close`` waits)."""
        raise NotImplementedError

    def close(self, deadline: float | None = None) -> None:
        """Stop, and wait for the decoder until ``deadline`` (``time.monotonic()``; default: 2 s from now)."""
        raise NotImplementedError


class CameraStream(CameraFeed):
    """A reader thread for one camera, feeding a bounded queue with ``Frame`` objects."""

    def __init__(
        self,
        camera: CameraConfig,
        reader: FrameReader,
        streams: StreamConfig,
        start_time: float,
        fps: float,
        max_frames: int | None = None,
    ) -> None:
        self.camera, self.fps, self.start_time, self.size = camera, fps, start_time, reader.size
        self._stop = threading.Event()
        self._decoder = CameraDecoder(camera, reader, streams, self._stop, max_frames)
        self.stats = self._decoder.stats
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout: float | None = None) -> Frame | object:
        return self._queue.get(timeout=timeout)

    def stop(self) -> None:
        self._stop.set()

    def close(self, deadline: float | None = None) -> None:
        self.stop()
        started = self._thread.ident is not None
        if not started:  # opened but never read (the run failed before it began): the decoder is still held
            self._decoder.reader.close()
        _drain(self._queue)
        if started:
            deadline = time.monotonic() + JOIN_S if deadline is None else deadline
            self._thread.join(timeout=max(deadline - time.monotonic(), 0.0))

    def _run(self) -> None:
        try:
            for index, image in self._decoder.frames():
                timestamp = frame_timestamp(self.camera, self.start_time, self.fps, index, time.time())
                self._put(Frame(self.camera.id, index, timestamp, image), drop_if_full=self.live)
        except Exception:  # a reader must never take the run down; the camera just ends
            logger.exception("camera %s: reader failed", self.camera.id)
        finally:
            self._put(END, drop_if_full=False)

    def _put(self, item: object, drop_if_full: bool) -> None:
        """Files wait for the consumer. A live source never waits: its camera goes on whether the run keeps
        up or not, so a wait would only let its lag grow; it drops its oldest frame to stay current."""
        while True:
            try:
                if drop_if_full:
                    self._queue.put_nowait(item)
                else:
                    self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if drop_if_full:
                    _drain(self._queue, limit=1)
                elif self._stop.is_set():
                    return


def _drain(items: queue.Queue, limit: int | None = None) -> None:
    while limit is None or limit > 0:
        try:
            items.get_nowait()
        except queue.Empty:
            return
        limit = None if limit is None else limit - 1


class MultiCameraSource:
    """All cameras of a run; ``steps()`` yields lists of frames ordered on the cameras' clocks."""

    def __init__(self, streams: Sequence[CameraFeed], sync_tolerance_s: float | None = None) -> None:
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
                width=s.size[0],
                height=s.size[1],
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
        """Stop the decoders and release every source; safe to call more than once."""
        for stream in self.streams.values():
            stream.stop()  # all at once, and one deadline for all: a stuck camera costs its 2 s once
        deadline = time.monotonic() + JOIN_S
        for stream in self.streams.values():
            stream.close(deadline)

    def decode_seconds(self) -> tuple[float, float]:
        """Wall and CPU seconds the decoders spent decoding, summed over cameras."""
        streams = self.streams.values()
        return sum(s.stats.seconds for s in streams), sum(s.stats.cpu_seconds for s in streams)

    def _fill_heads(self) -> None:
        for camera_id in sorted(self._active - set(self._heads)):
            stream = self.streams[camera_id]
            try:
                item = stream.get(timeout=LIVE_WAIT_S if stream.live else None)
            except queue.Empty:
                continue
            if item is END:
                self._active.discard(camera_id)
                logger.info("camera %s: ended after %d frames", camera_id, stream.stats.frames_read)
            else:
                self._heads[camera_id] = item

    def _take_step(self) -> list[Frame]:
        earliest = min(frame.timestamp for frame in self._heads.values())
        due = sorted((cid for cid, frame in self._heads.items() if frame.timestamp <= earliest + self.sync_tolerance_s))
        return [self._heads.pop(camera_id) for camera_id in due]


def open_cameras(
    cameras: Sequence[CameraConfig],
    streams: StreamConfig,
    run_start: datetime,
    max_frames: int | None = None,
    sync_tolerance_s: float | None = None,
    gpu: bool = False,
) -> MultiCameraSource:
    """Open every camera at once (streams may take a while); those that fail are dropped with a warning.

    ``gpu`` says whether the frames go to a GPU, where ``streams.decode: auto`` decodes in processes.
    Raises ``DataError`` when no camera can be opened: the run would have nothing to do.
    """
    streams = with_decoder_threads(streams, len(cameras))
    if _decodes_in_processes(streams, gpu):
        from reidcam.app.decode_process import spawn_decoders

        opened: dict[str, FrameReader | CameraFeed | DataError] = dict(spawn_decoders(cameras, streams, max_frames))
    else:
        opened = dict(_open_readers(cameras, streams))
    failures = [opened[c.id] for c in cameras if isinstance(opened[c.id], DataError)]
    if len(failures) == len(cameras):
        raise DataError("; ".join(str(error) for error in failures))
    for error in failures:
        logger.warning("%s; going on without this camera", error)
    feeds = [
        _feed(camera, opened[camera.id], streams, run_start, max_frames)
        for camera in cameras
        if not isinstance(opened[camera.id], DataError)
    ]
    return MultiCameraSource(feeds, sync_tolerance_s)


def with_decoder_threads(streams: StreamConfig, cameras: int) -> StreamConfig:
    """``streams`` with its decoder threads set: as configured, else the CPU cores shared among the cameras."""
    if streams.decoder_threads:
        return streams
    return streams.model_copy(update={"decoder_threads": max(1, (os.cpu_count() or 1) // max(cameras, 1))})


def _decodes_in_processes(streams: StreamConfig, gpu: bool) -> bool:
    if streams.decode == "thread" or (streams.decode == "auto" and not gpu):
        return False
    from reidcam.app.decode_process import supported

    if not supported():
        if streams.decode == "process":
            logger.warning("streams.decode: process needs Linux (memfd); decoding in threads instead")
        return False
    return True


def _open_readers(cameras: Sequence[CameraConfig], streams: StreamConfig) -> dict[str, FrameReader | DataError]:
    """Every camera's reader, opened in a thread each, or the ``DataError`` that says why it cannot be."""
    results: dict[str, FrameReader | DataError] = {}
    stop = threading.Event()

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
    return results


def _feed(
    camera: CameraConfig, opened, streams: StreamConfig, run_start: datetime, max_frames: int | None
) -> CameraFeed:
    """The feed of an opened camera: a reader thread around a ``FrameReader``, or the decoder process itself."""
    start = (camera.start_time or run_start).timestamp()
    if isinstance(opened, FrameReader):
        fps = _camera_fps(camera, opened.fps)
        return CameraStream(camera, opened, streams, start_time=start, fps=fps, max_frames=max_frames)
    return opened.begin(start, _camera_fps(camera, opened.reported_fps))


def _camera_fps(camera: CameraConfig, reported: float | None) -> float:
    fps = camera.fps or reported
    if fps is None:
        logger.warning(
            "camera %s: frame rate unknown, assuming %.0f fps (set fps in cams.yaml)", camera.id, FALLBACK_FPS
        )
        fps = FALLBACK_FPS
    return fps
