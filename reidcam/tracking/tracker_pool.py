"""The cameras' trackers, in the main thread or in worker processes (``tracker.processes``).

Why: ByteTrack's Kalman filter and IoU are per-track numpy in Python, about 0.4 ms per camera-frame on
a GPU host; 16 cameras' tracking was 14-16 % of the main thread, which bounds the run (BENCHMARKS.md,
session 7). Threads share the interpreter's lock, so only processes take it off the main thread.

``TrackerPool`` starts N spawn-context processes (the run may hold CUDA and threads: no fork), each
owning the ``CameraTracker`` of a fixed, round-robin subset of the cameras, built from the same
``TrackerSpec`` and each camera's frame rate. One call per step: every worker gets its cameras'
detections in one message, all workers track in parallel, and the main thread collects the replies. Its
own cost is the IPC: detections go as raw bytes of their xyxy, confidence and class_id arrays (pickling
numpy arrays or whole ``sv.Detections`` costs several times more, bench/tracker_pool.py), and the reply
of a camera is which of its input rows are confirmed tracks, with their track ids. The main thread
rebuilds the tracks from its own detections (``found[rows]``), so they equal the in-process tracker's
field for field, ``data`` included: every tracker of the ``trackers`` package returns rows of its input.
Measured on 16 cameras of ~8 people (BENCHMARKS.md, session 8): the main thread pays ~1 ms of CPU per
step instead of the 8 ms its own trackers took (2-core CPU machine); a fifth of that is the rebuild.

``tracker.processes: auto`` picks no workers below ``AUTO_MIN_CAMERAS`` (8) cameras or
``AUTO_MIN_CPUS`` (8) CPUs (the CI's 2 cores, small setups: a step's few ms of tracking are not worth
the messages), else ``min(4, cameras // 4, CPUs // 4)``: at least 4 cameras per message, at most a
quarter of the cores (decoders and the detector need theirs), and 4 workers already cut 16 cameras'
tracking to ~2 ms of each worker's time per step. A tracker that reads the frame (BoT-SORT with camera
motion compensation) stays in the main thread: a 1080p frame per camera per step over a pipe would cost
more than its tracking.

Messages on each worker's duplex pipe. Parent to child: a list of ``(camera_id, timestamp, xyxy, confidence,
class_id)`` (each array as ``(dtype, shape, bytes)`` or None), or None to stop. Child to parent: ``("ready",)``
once its trackers are built; ``("tracks", replies)``, one ``(rows, tracker_id)`` or None (no tracks) per
camera, in the order asked; ``("error", line, traceback, is_config_error)`` before it ends on an exception.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal, Protocol

import numpy as np
import supervision as sv

from reidcam.app.decode_process import sigint_ignored
from reidcam.errors import ConfigError, WorkerError, first_line
from reidcam.tracking.tracker import CameraTracker, TrackerSpec, empty_tracks

logger = logging.getLogger(__name__)

AUTO_MIN_CAMERAS = 8
AUTO_MIN_CPUS = 8
AUTO_MAX_WORKERS = 4
AUTO_CAMERAS_PER_WORKER = 4  # fewer, and a message carries too little tracking to be worth its cost
AUTO_CPUS_PER_WORKER = 4  # the decoders, the detector's threads and the main thread need the rest
START_TIMEOUT_S = 60.0  # a spawned worker imports numpy, supervision and trackers: seconds on a busy machine
STEP_TIMEOUT_S = 30.0  # a step's tracking takes milliseconds; this long means a worker is stuck
JOIN_S = 2.0  # how long closing waits for the workers to end before it kills them
ROW = "_reidcam_row"  # the data column that tells which input row a track is

PackedArray = tuple[str, tuple[int, ...], bytes]
TrackReply = tuple[PackedArray, PackedArray] | None


@dataclass(frozen=True)
class TrackInput:
    """One camera's detections of one frame, to be tracked. ``image`` is read only by trackers that use it."""

    camera_id: str
    detections: sv.Detections
    timestamp: float
    image: np.ndarray | None = None


class CameraTrackers(Protocol):
    """Every camera's tracker: a step's inputs in, each one's confirmed tracks out, in the same order."""

    def track(self, inputs: Sequence[TrackInput]) -> list[sv.Detections]: ...

    def close(self) -> None: ...


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(processes: int | Literal["auto"], cameras: int, cpus: int | None = None) -> int:
    """How many tracker processes to start: ``processes`` (never more than the cameras), or the "auto" rule."""
    if processes != "auto":
        return min(processes, cameras)
    cpus = available_cpus() if cpus is None else cpus
    if cameras < AUTO_MIN_CAMERAS or cpus < AUTO_MIN_CPUS:
        return 0
    return min(AUTO_MAX_WORKERS, cameras // AUTO_CAMERAS_PER_WORKER, cpus // AUTO_CPUS_PER_WORKER)


def open_trackers(
    spec: TrackerSpec, frame_rates: Mapping[str, float], processes: int | Literal["auto"]
) -> CameraTrackers:
    """The cameras' trackers (``frame_rates``: camera id to frames per second), in the main thread or in
    worker processes as ``tracker.processes`` says."""
    workers = worker_count(processes, len(frame_rates))
    if workers and spec.uses_frame:
        if processes != "auto":
            logger.warning("tracker.processes: %s with camera motion compensation reads every frame; "
                           "tracking stays in the main thread", spec.kind)
        workers = 0
    if workers == 0:
        return LocalTrackers(spec, frame_rates)
    logger.info("tracking %d cameras in %d worker processes", len(frame_rates), workers)
    return TrackerPool(spec, frame_rates, workers)


class LocalTrackers:
    """Every camera's tracker in the calling thread."""

    def __init__(self, spec: TrackerSpec, frame_rates: Mapping[str, float]) -> None:
        self.trackers = {camera_id: CameraTracker(spec, fps) for camera_id, fps in frame_rates.items()}

    def track(self, inputs: Sequence[TrackInput]) -> list[sv.Detections]:
        return [self.trackers[item.camera_id].update(item.detections, item.image, item.timestamp) for item in inputs]

    def close(self) -> None:
        pass


class TrackerPool:
    """Every camera's tracker in one of ``workers`` processes; closing it (or leaving the ``with``) ends them."""

    def __init__(self, spec: TrackerSpec, frame_rates: Mapping[str, float], workers: int) -> None:
        if not 1 <= workers <= len(frame_rates):
            raise ValueError(f"{workers} tracker processes for {len(frame_rates)} cameras")
        context = multiprocessing.get_context("spawn")
        camera_ids = list(frame_rates)
        self._workers: list[TrackerWorker] = []
        self._worker_of: dict[str, TrackerWorker] = {}
        try:
            for number in range(workers):
                rates = {camera_id: frame_rates[camera_id] for camera_id in camera_ids[number::workers]}
                worker = TrackerWorker(number, spec, rates, context)
                self._workers.append(worker)
                self._worker_of.update(dict.fromkeys(rates, worker))
            deadline = time.monotonic() + START_TIMEOUT_S
            for worker in self._workers:
                worker.wait_ready(deadline)
        except BaseException:  # a worker that cannot start, or Ctrl-C meanwhile: none is left behind
            self.close()
            raise

    @property
    def pids(self) -> list[int | None]:
        return [worker.pid for worker in self._workers]

    def track(self, inputs: Sequence[TrackInput]) -> list[sv.Detections]:
        """Send each worker its cameras' detections, then collect every reply; tracks in the order of ``inputs``."""
        positions: dict[TrackerWorker, list[int]] = {}
        for position, item in enumerate(inputs):
            positions.setdefault(self._worker_of[item.camera_id], []).append(position)
        for worker, asked in positions.items():
            worker.send([_request(inputs[position]) for position in asked])
        tracks: dict[int, sv.Detections] = {}
        for worker, asked in positions.items():
            for position, reply in zip(asked, worker.receive(len(asked))):
                tracks[position] = _tracks_of(inputs[position].detections, reply)
        return [tracks[position] for position in range(len(inputs))]

    def close(self) -> None:
        """Ask every worker to stop, wait for them together, kill the ones that do not end."""
        for worker in self._workers:
            worker.ask_to_stop()
        deadline = time.monotonic() + JOIN_S
        for worker in self._workers:
            worker.close(deadline)

    def __enter__(self) -> TrackerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TrackerWorker:
    """The main process's side of one tracker process."""

    def __init__(
        self, number: int, spec: TrackerSpec, frame_rates: Mapping[str, float], context: multiprocessing.context.BaseContext
    ) -> None:
        self.number = number
        self.camera_ids = list(frame_rates)
        self._conn, child_end = context.Pipe(duplex=True)
        level = logging.getLogger("reidcam").getEffectiveLevel()
        self._process = context.Process(
            target=worker_main, args=(spec, dict(frame_rates), child_end, level), name=f"tracker-{number}", daemon=True
        )
        with sigint_ignored():  # Ctrl-C is the run's to handle: it closes the pool
            self._process.start()
        child_end.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def wait_ready(self, deadline: float) -> None:
        kind, *rest = self._next_message(max(deadline - time.monotonic(), 0.0), "start")
        if kind == "error":
            raise self._error_of(*rest)

    def send(self, requests: list[tuple]) -> None:
        try:
            self._conn.send(requests)
        except (OSError, ValueError):  # the worker has gone (ValueError: the pipe is closed)
            raise self._ended_error("step") from None

    def receive(self, expected: int) -> list[TrackReply]:
        kind, *rest = self._next_message(STEP_TIMEOUT_S, "step")
        if kind == "error":
            raise self._error_of(*rest)
        replies = rest[0]
        if len(replies) != expected:
            raise self._failure(f"{len(replies)} replies for {expected} cameras")
        return replies

    def ask_to_stop(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass

    def close(self, deadline: float) -> None:
        self._process.join(max(deadline - time.monotonic(), 0.0))
        if self._process.is_alive():  # stuck (or stopped: SIGTERM would wait for it to go on); it holds nothing
            self._process.kill()
            self._process.join(JOIN_S)
        self._conn.close()

    def _next_message(self, timeout: float, waiting_for: str) -> tuple:
        try:
            if not self._conn.poll(timeout):
                raise self._failure(f"no answer to its {waiting_for} within {timeout:g} s")
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._ended_error(waiting_for) from None

    def _ended_error(self, waiting_for: str) -> WorkerError:
        self._process.join(JOIN_S)
        how = _exit_status(self._process.exitcode)
        if waiting_for == "start":  # as a script without the guard does: its children run it again, and fail
            return self._failure(f"ended before it was ready ({how}); a script that starts tracker processes "
                                 "needs an `if __name__ == \"__main__\":` guard, or set tracker.processes: 0")
        return self._failure(f"ended unexpectedly ({how})")

    def _error_of(self, line: str, details: str, is_config: bool) -> ConfigError | WorkerError:
        """The error a worker reported: a bad ``tracker.params`` value as the ``ConfigError`` it is in-process."""
        logger.debug("tracker process %d failed:\n%s", self.number, details)
        return ConfigError(line) if is_config else self._failure(line)

    def _failure(self, what: str) -> WorkerError:
        return WorkerError(f"tracker process {self.number} (cameras {', '.join(self.camera_ids)}): {what}")


def _exit_status(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _request(item: TrackInput) -> tuple:
    found = item.detections
    return (item.camera_id, item.timestamp, _pack(found.xyxy), _pack(found.confidence), _pack(found.class_id))


def _tracks_of(found: sv.Detections, reply: TrackReply) -> sv.Detections:
    """The tracks the worker found, rebuilt from the main process's own detections as ``CameraTracker`` gives them."""
    if reply is None:
        return empty_tracks()
    rows, tracker_ids = (_unpack(packed) for packed in reply)
    tracks = found[rows]
    tracks.tracker_id = tracker_ids
    return tracks


def _pack(array: np.ndarray | None) -> PackedArray | None:
    """An array as bytes: pickling the bytes costs a fraction of pickling the array."""
    return None if array is None else (array.dtype.str, array.shape, array.tobytes())


def _unpack(packed: PackedArray | None) -> np.ndarray | None:
    if packed is None:
        return None
    dtype, shape, raw = packed
    return np.frombuffer(raw, dtype).reshape(shape).copy()  # writable, as the tracker's own arrays are


# --- the child --------------------------------------------------------------------------------------------


def worker_main(spec: TrackerSpec, frame_rates: dict[str, float], conn: Connection, log_level: int) -> None:
    """The child process: build its cameras' trackers, then track each step it is sent until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run stops it: a None message, end of file, or a kill
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        trackers = {camera_id: CameraTracker(spec, fps) for camera_id, fps in frame_rates.items()}
    except Exception as error:
        _send_error(conn, error)
        return
    conn.send(("ready",))
    try:
        while (requests := conn.recv()) is not None:
            conn.send(("tracks", [_track_request(trackers, *request) for request in requests]))
    except (EOFError, OSError):  # the run has gone
        pass
    except Exception as error:
        _send_error(conn, error)


def _track_request(
    trackers: Mapping[str, CameraTracker], camera_id: str, timestamp: float,
    xyxy: PackedArray, confidence: PackedArray | None, class_id: PackedArray | None,
) -> TrackReply:
    """One camera's frame tracked: its confirmed tracks as input rows and track ids, or None for no tracks."""
    boxes = _unpack(xyxy)
    detections = sv.Detections(
        xyxy=boxes, confidence=_unpack(confidence), class_id=_unpack(class_id), data={ROW: np.arange(len(boxes))}
    )
    try:
        tracks = trackers[camera_id].update(detections, None, timestamp)
    except Exception as error:
        raise RuntimeError(f"camera {camera_id}: {type(error).__name__}: {first_line(error)}") from error
    if ROW not in tracks.data:  # CameraTracker's empty tracks, not rows of the input
        return None
    return _pack(tracks.data[ROW]), _pack(tracks.tracker_id)


def _send_error(conn: Connection, error: Exception) -> None:
    try:
        conn.send(("error", first_line(error), traceback.format_exc(), isinstance(error, ConfigError)))
    except (OSError, ValueError):
        pass
