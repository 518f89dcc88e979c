"""``Prefetch``: items in order from a background thread; errors handed over intact; an early stop
ends the producer thread and closes its source."""

from __future__ import annotations

import threading
import time

import pytest

from reidcam.app.prefetch import Prefetch
from reidcam.errors import DataError


class Source:
    """A generator source that records what happened to it, and in which thread."""

    def __init__(self, count: int | None = None, fail_after: int | None = None, delay_s: float = 0.0) -> None:
        self.count = count
        self.fail_after = fail_after
        self.delay_s = delay_s
        self.error = DataError("camera west: stream lost")
        self.produced = 0
        self.closed_in: str | None = None

    def items(self):
        try:
            while self.count is None or self.produced < self.count:
                if self.produced == self.fail_after:
                    raise self.error
                time.sleep(self.delay_s)
                self.produced += 1
                yield self.produced
        finally:
            self.closed_in = threading.current_thread().name


def test_items_arrive_in_order_and_the_thread_ends():
    source = Source(count=50)
    prefetch = Prefetch(source.items(), depth=3)
    assert list(prefetch) == list(range(1, 51))
    assert not prefetch.running
    assert source.closed_in == "prefetch"


def test_a_plain_iterable_works_too():
    with Prefetch(range(5)) as prefetched:
        assert list(prefetched) == [0, 1, 2, 3, 4]


def test_an_error_of_the_source_is_raised_after_the_items_before_it():
    source = Source(fail_after=4)
    received = []
    with pytest.raises(DataError) as raised:
        with Prefetch(source.items()) as prefetched:
            for item in prefetched:
                received.append(item)
    assert received == [1, 2, 3, 4]
    assert raised.value is source.error


def test_breaking_out_stops_and_joins_the_producer_and_closes_the_source():
    source = Source()  # endless
    with Prefetch(source.items(), depth=2, name="endless") as prefetched:
        for item in prefetched:
            if item == 3:
                break
    assert not prefetched.running
    assert source.closed_in == "endless"
    assert source.produced <= 3 + 2 + 1  # what was taken, the queue, and the one being put
    assert "endless" not in {thread.name for thread in threading.enumerate()}


def test_an_error_in_the_consumer_stops_the_producer_without_with():
    source = Source()
    prefetch = Prefetch(source.items())
    with pytest.raises(KeyboardInterrupt):
        for item in prefetch:
            if item == 2:
                raise KeyboardInterrupt
    assert not prefetch.running
    assert source.closed_in == "prefetch"


def test_a_slow_consumer_with_a_full_queue_stops_promptly():
    source = Source()
    with Prefetch(source.items(), depth=1) as prefetched:
        iterator = iter(prefetched)
        assert next(iterator) == 1
        time.sleep(0.3)  # the producer now waits on the full queue
        started = time.perf_counter()
    assert time.perf_counter() - started < 1.0
    assert not prefetched.running
    assert source.closed_in == "prefetch"


def test_it_is_iterated_once():
    prefetch = Prefetch(range(3))
    assert list(prefetch) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="iterated once"):
        list(prefetch)


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        Prefetch(range(3), depth=0)
