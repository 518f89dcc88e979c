"""How fast decoder threads run beside a busy Python main thread, per GIL switch interval.

    PYTHONPATH=. python bench/gil_readers.py [--readers 4,16] [--seconds 4]

Each reader thread decodes vtest.avi with OpenCV in a loop (as reidcam's camera readers do); the main
thread either sleeps or runs pure Python (as the pipeline's tracking, association and storage do).
OpenCV releases the interpreter lock while it decodes, but every reader needs it back for each frame;
with a busy main thread it gets it only when the main thread is forced to yield, every switch interval
(Python's default 5 ms). Prints frames/s of all readers together per case, and how much Python work
the busy main thread got done. Needs ../shared/data/vtest.avi
(or REIDCAM_SHARED).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import cv2

from reidcam.app.config import shared_dir


def read_loop(video: str, counter: list[int], stop: threading.Event) -> None:
    capture = cv2.VideoCapture(video)
    while not stop.is_set():
        ok, _ = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        counter[0] += 1
    capture.release()


def measure(video: str, readers: int, busy_main: bool, interval_s: float, seconds: float) -> tuple[float, float]:
    """(frames/s of all readers, the busy main thread's rounds of Python work per second)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    stop = threading.Event()
    counters = [[0] for _ in range(readers)]
    threads = [threading.Thread(target=read_loop, args=(video, c, stop), daemon=True) for c in counters]
    try:
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        rounds = 0
        while time.perf_counter() - started < seconds:
            if busy_main:
                sum(i * i for i in range(1000))  # Python bytecode: holds the lock
                rounds += 1
            else:
                time.sleep(0.01)
        elapsed = time.perf_counter() - started
        return sum(c[0] for c in counters) / elapsed, rounds / elapsed
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(previous)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", default="4,16")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    video = str(shared_dir() / "data" / "vtest.avi")
    print("| readers | main thread | switch interval | frames/s | main thread's rounds/s |\n|---|---|---|---|---|")
    for readers in (int(r) for r in args.readers.split(",")):
        for busy in (False, True):
            for interval in (0.005, 0.001, 0.0005):
                fps, rounds = measure(video, readers, busy, interval, args.seconds)
                print(f"| {readers} | {'busy' if busy else 'idle'} | {interval * 1e3:g} ms | {fps:,.0f} | "
                      f"{rounds:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
