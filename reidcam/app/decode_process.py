"""Decoding in worker processes, one per camera, into shared memory (``streams.decode: process``).

Why: reader threads share one interpreter lock with the main thread, which a GPU run keeps busy in
Python; a reader that has decoded a frame waits for the lock to hand it over, and every short wait of
the main thread for the GPU lets a reader in ahead of it (bench/NOTES-speed.md, attempt 36). A process
has an interpreter of its own. It decodes into one of a ring of frame-sized *slots* in memory shared
with the run (a memfd, passed over the process's pipe) and sends the slot's number through the pipe:
a frame crosses without a copy.

A slot goes back to its decoder when the last array that views it is garbage (``weakref.finalize``
on the frame's array, which every view of it keeps alive), so a frame handed out is never overwritten
while anything still reads it. Should the consumer hold all but one slot of a camera, the next frame
is handed out as a copy and its slot freed at once: a decoder never waits forever.

Messages on each camera's duplex pipe. Child to parent: ``("opened", fps, (w, h))`` or ``("error",
text)``; then ``("frame", slot, index, read_at, stats, behind)``, ``("inline", image, index, read_at,
stats, behind)`` for a frame that does not fit the slots (a stream that changed its size), ``("log", name, level,
text)``, and last ``("end",)``. Parent to child: ``("ring", slots)`` followed by the memfd, then
``("free", slot)``.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

import numpy as np

from reidcam.app.config import CameraConfig, StreamConfig
from reidcam.app.sources import (
    END,
    JOIN_S,
    CameraDecoder,
    CameraFeed,
    DecodeStats,
    Frame,
    frame_timestamp,
    open_live_reader,
    open_reader,
)
from reidcam.errors import DataError

logger = logging.getLogger(__name__)

SLOTS = 8  # frames of one camera in flight: decoded ahead, in the pipe, or held by the run
POLL_S = 0.1  # how often a file's decoder waiting for a free slot checks whether it should stop
_TIMEOUT = object()


def supported() -> bool:
    """Shared memory by memfd and descriptors passed over a pipe: Linux."""
    return hasattr(os, "memfd_create")


def spawn_decoders(
    cameras: Sequence[CameraConfig], streams: StreamConfig, max_frames: int | None
) -> dict[str, DecoderProcess | DataError]:
    """A decoder process per camera, all opening their sources at once; each camera's process, or the
    ``DataError`` that says why its source cannot be opened."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold CUDA and threads
    processes: list[DecoderProcess] = []
    try:
        for camera in cameras:
            processes.append(DecoderProcess(camera, streams, max_frames, context))
        opened: dict[str, DecoderProcess | DataError] = {}
        for process in processes:
            error = process.wait_opened()
            if error is not None:
                process.close()
            opened[process.camera.id] = error or process
        return opened
    except BaseException:  # Ctrl-C while the sources open, or a process that cannot start: none is left behind
        for process in processes:
            process.stop()
        deadline = time.monotonic() + JOIN_S
        for process in processes:
            process.close(deadline)
        raise


class DecoderProcess(CameraFeed):
    """The run's side of one camera's decoder process: a ``CameraFeed`` once ``begin`` has given it its clock."""

    def __init__(
        self, camera: CameraConfig, streams: StreamConfig, max_frames: int | None, context: multiprocessing.context.BaseContext
    ) -> None:
        self.camera = camera
        self.stats = DecodeStats()
        self.fps = 0.0
        self.start_time = 0.0
        self.reported_fps: float | None = None
        self.size = (0, 0)
        self._conn, child_end = context.Pipe(duplex=True)
        self._stop = context.Event()
        level = logging.getLogger("reidcam").getEffectiveLevel()
        self._process = context.Process(
            target=decoder_main,
            args=(camera, streams, max_frames, child_end, self._stop, level),
            name=f"decoder-{camera.id}",
            daemon=True,
        )
        with sigint_ignored():  # Ctrl-C is the run's to handle: it stops the decoders in order
            self._process.start()
        child_end.close()
        # slots are freed from whichever thread drops a frame's last array, and a drop inside a send
        # (a collection) frees one within the lock
        self._lock = threading.RLock()
        self._memory: mmap.mmap | None = None
        self._held = 0
        self._ended = False

    def wait_opened(self) -> DataError | None:
        """None once the child has opened its source (``reported_fps`` and ``size`` set), else why not."""
        while True:
            message = self._receive(None)
            if message is None:
                return DataError(
                    f"camera {self.camera.id}: its decoder process ended before opening the source (a script that "
                    "opens cameras needs an `if __name__ == \"__main__\":` guard, or set streams.decode: thread)"
                )
            if message[0] == "opened":
                self.reported_fps, self.size = message[1], tuple(message[2])
                return None
            if message[0] == "error":
                return DataError(message[1])

    def begin(self, start_time: float, fps: float) -> DecoderProcess:
        self.start_time, self.fps = start_time, fps
        return self

    def start(self) -> None:
        """Give the child its slots; it decodes from then on."""
        size = SLOTS * self._slot_bytes
        fd = os.memfd_create(f"reidcam-{self.camera.id}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            self._memory = mmap.mmap(fd, size)
            with self._lock:
                self._conn.send(("ring", SLOTS))
                send_handle(self._conn, fd, self._process.pid)
        except OSError as error:  # the child died before it could take the ring: the camera just ends
            logger.warning("camera %s: decoder process unreachable (%s)", self.camera.id, error)
            self._ended = True
        finally:
            os.close(fd)

    def get(self, timeout: float | None = None) -> Frame | object:
        """The next frame. Once a live source's decoder has had to drop a frame (no slot was freed in time),
        the run is behind the stream: it skips to the newest frame waiting, and so stays current by dropping
        the oldest, as the reader threads do."""
        if self._ended:
            return END
        frame: Frame | None = None
        skipping = False
        while True:
            message = self._receive(timeout if frame is None else 0.0)
            if message is _TIMEOUT:
                if frame is None:
                    raise queue.Empty
                return frame
            if message is None or message[0] == "end":
                if message is None:
                    logger.warning("camera %s: decoder process ended unexpectedly (exit code %s)",
                                   self.camera.id, self._process.exitcode)
                self._ended = True
                return END if frame is None else frame
            frame, behind = self._frame(*message)
            skipping = skipping or (self.live and behind)
            if not skipping:
                return frame

    def stop(self) -> None:
        self._stop.set()
        if self._memory is None:  # never started: the child waits for its ring, and gets an end of file
            with self._lock:
                self._conn.close()

    def close(self, deadline: float | None = None) -> None:
        self.stop()
        deadline = time.monotonic() + JOIN_S if deadline is None else deadline
        self._process.join(max(deadline - time.monotonic(), 0.0))
        if self._process.is_alive():  # stuck in a read of a dead stream: its source dies with it
            self._process.terminate()
            self._process.join(JOIN_S)
        with self._lock:  # a frame dropped in another thread may be sending its slot back
            self._conn.close()
        self._ended = True

    @property
    def _slot_bytes(self) -> int:
        return self.size[0] * self.size[1] * 3

    def _receive(self, timeout: float | None) -> tuple | object | None:
        """The next message other than a log line (those are logged here); ``_TIMEOUT`` when ``timeout``
        passes first, None when the child has gone."""
        try:
            while True:
                if timeout is not None and not self._conn.poll(timeout):
                    return _TIMEOUT
                message = self._conn.recv()
                if message[0] != "log":
                    return message
                _, name, level, text = message
                logging.getLogger(name).log(level, text)
        except (EOFError, OSError):
            return None

    def _frame(self, kind: str, payload, index: int, read_at: float, stats: DecodeStats, behind: bool
               ) -> tuple[Frame, bool]:
        self.stats = stats
        image = payload if kind == "inline" else self._slot_image(payload)
        timestamp = frame_timestamp(self.camera, self.start_time, self.fps, index, read_at)
        return Frame(self.camera.id, index, timestamp, image), behind

    def _slot_image(self, slot: int) -> np.ndarray:
        width, height = self.size
        image = np.ndarray((height, width, 3), np.uint8, buffer=self._memory, offset=slot * self._slot_bytes)
        with self._lock:
            crowded = self._held >= SLOTS - 1
            self._held += not crowded
        if crowded:  # the run holds nearly every slot: a copy, so that the decoder can go on
            image = image.copy()
            self._send_free(slot)
        else:
            weakref.finalize(image, self._release, slot).atexit = False
        return image

    def _release(self, slot: int) -> None:
        with self._lock:
            self._held -= 1
        self._send_free(slot)

    def _send_free(self, slot: int) -> None:
        try:
            with self._lock:
                self._conn.send(("free", slot))
        except (OSError, ValueError):  # the child has ended (ValueError: this end is closed)
            pass


# --- the child --------------------------------------------------------------------------------------------


class _PipeLogHandler(logging.Handler):
    """Log records of the child, sent to the run to be logged there."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._conn.send(("log", record.name, record.levelno, self.format(record)))
        except (OSError, ValueError):
            pass


class _SlotWriter:
    """The child's side of the ring: which slots are free, and the frame message of a decoded frame."""

    def __init__(self, conn: Connection, memory: mmap.mmap, slots: int, size: tuple[int, int], live: bool, stop) -> None:
        width, height = size
        frame_bytes = width * height * 3
        self._views = [
            np.ndarray((height, width, 3), np.uint8, buffer=memory, offset=slot * frame_bytes) for slot in range(slots)
        ]
        self._free = list(range(slots))
        self._current: int | None = None
        self._conn, self._live, self._stop = conn, live, stop
        self.dropped = 0
        self._dropped_sent = 0  # frames dropped by the last message sent

    def next_buffer(self) -> np.ndarray | None:
        """A free slot to decode into. A file waits for one; a live source never waits (None: a new array,
        and the frame is dropped), since its stream goes on whether the run keeps up or not, and a wait would
        only let its lag grow."""
        if self._current is not None:  # the last read gave no frame (a stream that dropped): the slot is free
            self._free.append(self._current)
        self._collect(0.0)
        while not self._free and not self._live and not self._stop.is_set():
            self._collect(POLL_S)
        self._current = self._free.pop() if self._free else None
        return None if self._current is None else self._views[self._current]

    def send(self, index: int, image: np.ndarray, stats: DecodeStats) -> None:
        slot, self._current = self._current, None
        read_at = time.time()
        if slot is None and self._live:
            self.dropped += 1
            return
        behind, self._dropped_sent = self.dropped > self._dropped_sent, self.dropped
        if slot is not None and image is self._views[slot]:
            self._conn.send(("frame", slot, index, read_at, stats, behind))
            return
        if slot is not None:
            self._free.append(slot)
        self._conn.send(("inline", image, index, read_at, stats, behind))

    def _collect(self, timeout: float) -> None:
        """Take the slots the run has freed."""
        if not self._conn.poll(timeout):
            return
        while self._conn.poll(0.0):
            kind, slot = self._conn.recv()
            if kind == "free":
                self._free.append(slot)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a child starts, so that it starts ignoring it (a spawned Python keeps an ignored
    SIGINT): Ctrl-C in a terminal reaches the whole process group. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def decoder_main(
    camera: CameraConfig, streams: StreamConfig, max_frames: int | None, conn: Connection, stop, log_level: int
) -> None:
    """The child process: open the source, take the ring, decode to the end (or until ``stop``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run stops it: its stop event, end of file, terminate
    handler = _PipeLogHandler(conn)
    logging.basicConfig(level=log_level, handlers=[handler], format="%(message)s", force=True)
    try:
        reader = open_live_reader(camera, streams, stop) if camera.is_live else open_reader(camera, streams)
    except DataError as error:
        conn.send(("error", str(error)))
        return
    conn.send(("opened", reader.fps, reader.size))
    try:
        writer = _take_ring(conn, reader.size, camera.is_live, stop)
    except (EOFError, OSError):  # the run ended before it started this camera
        reader.close()
        return
    decoder = CameraDecoder(camera, reader, streams, stop, max_frames)
    try:
        for index, image in decoder.frames(writer.next_buffer):
            writer.send(index, image, decoder.stats)
        if writer.dropped:
            logger.info("camera %s: %d frames dropped while the run was behind", camera.id, writer.dropped)
        conn.send(("end",))
    except (EOFError, OSError):  # the run has gone
        pass
    except Exception:  # a decoder must never take the run down; the camera just ends
        logger.exception("camera %s: decoder failed", camera.id)
        conn.send(("end",))


def _take_ring(conn: Connection, size: tuple[int, int], live: bool, stop) -> _SlotWriter:
    kind, slots = conn.recv()
    if kind != "ring":
        raise EOFError(kind)
    fd = recv_handle(conn)
    try:
        memory = mmap.mmap(fd, slots * size[0] * size[1] * 3)
    finally:
        os.close(fd)
    return _SlotWriter(conn, memory, slots, size, live, stop)
