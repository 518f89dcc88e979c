"""Run an iterator in a background thread, a few items ahead of the code that consumes it.

Why: in the main job, detection and tracking of step N+1 can run while the main thread embeds,
associates and stores step N. Both sides spend most of their time waiting for the GPU or in C/C++
code that releases the GIL, so one thread is enough to overlap them.

The producer thread hands items over through a bounded queue, so it runs at most ``depth`` items
ahead. An exception of the source reaches the consumer as the very same object, after the items
produced before it (the CLI turns reidcam's own errors into one-line messages). When the consumer
stops early, for whatever reason, the producer is told to stop, the source is closed in the
producer's thread (a generator must be closed by the thread that runs it) and the thread is joined.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DEPTH = 2
PUT_WAIT_S = 0.1  # how often a producer waiting on a full queue checks whether it should stop


@dataclass(frozen=True)
class _Raised:
    error: BaseException


_END = object()


class Prefetch(Generic[T]):
    """The items of ``source``, produced in a background thread at most ``depth`` ahead, in order.

    Iterate it once, best inside ``with`` so that the producer is stopped and joined however the
    loop ends::

        with Prefetch(steps()) as prefetched:
            for step in prefetched:
                handle(step)

    Iterating without ``with`` also stops the producer when the loop ends, raises, or the
    iterator is closed.
    """

    def __init__(self, source: Iterable[T], depth: int = DEFAULT_DEPTH, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    @property
    def running(self) -> bool:
        """Whether the producer thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start producing; done by ``with`` and by iterating, and harmless more than once."""
        if self._thread.ident is None:
            self._thread.start()

    def close(self) -> None:
        """Tell the producer to stop and wait for it; it closes the source first."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        if self._stopping.is_set():
            raise RuntimeError(f"{self._thread.name}: a Prefetch is iterated once")
        self.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            self.close()

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as error:  # raised again in the consumer's thread
            self._put(_Raised(error))
        finally:
            self._close_source()

    def _put(self, item: object) -> bool:
        """Waits for room in the queue; False once the consumer has stopped."""
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=PUT_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def _close_source(self) -> None:
        if not isinstance(self._source, Generator):
            return
        try:
            self._source.close()
        except Exception:  # the consumer has stopped or has its own error; this one can only be logged
            logger.exception("closing the source of %s failed", self._thread.name)
