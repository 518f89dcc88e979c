"""What tracking costs the main thread: in-process trackers against ``TrackerPool`` with 1, 2 and 4 workers.

    PYTHONPATH=. python bench/tracker_pool.py                    # 16 cameras x 8 people, 200 steps
    PYTHONPATH=. python bench/tracker_pool.py --cameras 8 --steps 400 --workers 2 4

Synthetic people walk across each camera's 1920x1080 frame (ByteTrack, cams.yaml's defaults), one step
holding every camera's frame, as ``DetectTrack`` hands them over. For each setting it prints, per step:
wall milliseconds, the main thread's own CPU milliseconds (``time.thread_time``: what the run's main
thread pays, the number that matters on a many-core host where the workers have cores of their own), and
the CPU of all the processes (the main one, all its threads, and the workers). First it times the wire formats the pool
could use: a step's request (16 cameras' detections) and reply (track rows and ids), pickled and
unpickled as whole ``sv.Detections``, as bare numpy arrays, and as the raw bytes the pool sends, and the
main thread's rebuilding of the tracks from the reply's rows.
On a machine with fewer cores than workers + 1 the workers compete with the main thread: read the wall
column there as an upper bound. Linux (the workers' CPU is read from /proc).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import supervision as sv

from reidcam.app.config import TrackerConfig
from reidcam.tracking.tracker import TrackerSpec
from reidcam.tracking.tracker_pool import CameraTrackers, LocalTrackers, TrackerPool, TrackInput, _pack

logger = logging.getLogger("bench.tracker_pool")

FPS = 25.0
WARM_UP_STEPS = 20


def walking_people(seed: int, steps: int, people: int) -> list[sv.Detections]:
    """One camera's detections: ``people`` boxes walking and bouncing off the frame's edges, a few missed."""
    rng = np.random.default_rng(seed)
    size = rng.uniform([50, 120], [110, 300], (people, 2))
    position = rng.uniform([0, 0], [1920, 1080], (people, 2)) - size / 2
    velocity = rng.uniform(-8, 8, (people, 2))
    frames = []
    for _ in range(steps):
        position += velocity
        out = (position < 0) | (position + size > [1920, 1080])
        velocity[out] *= -1
        seen = rng.random(people) > 0.05
        corner = position[seen] + rng.normal(0, 1.0, (seen.sum(), 2))
        count = int(seen.sum())
        frames.append(sv.Detections(
            xyxy=np.hstack([corner, corner + size[seen]]).astype(np.float32),
            confidence=rng.uniform(0.35, 0.95, count).astype(np.float32),
            class_id=np.zeros(count, dtype=int),
            data={"class_name": np.array(["person"] * count)},
        ))
    return frames


def make_steps(cameras: int, steps: int, people: int) -> list[list[TrackInput]]:
    detections = [walking_people(seed, steps, people) for seed in range(cameras)]
    return [
        [TrackInput(f"cam{camera}", detections[camera][step], step / FPS) for camera in range(cameras)]
        for step in range(steps)
    ]


def per_call_us(make: Callable[[], object], repeats: int = 2000) -> tuple[float, int]:
    """Microseconds to pickle and unpickle what ``make`` builds (building included), and its size in bytes."""
    started = time.thread_time()
    for _ in range(repeats):
        data = pickle.dumps(make(), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
    return (time.thread_time() - started) / repeats * 1e6, len(data)


def wire_formats(step: list[TrackInput]) -> list[tuple[str, float, int]]:
    found = [item.detections for item in step]
    rows = [(np.arange(len(d) - 1), np.arange(1, len(d))) for d in found]
    return [
        ("request: sv.Detections", *per_call_us(lambda: [(i.camera_id, i.timestamp, i.detections) for i in step])),
        ("request: numpy arrays", *per_call_us(
            lambda: [(i.camera_id, i.timestamp, i.detections.xyxy, i.detections.confidence, i.detections.class_id)
                     for i in step])),
        ("request: raw bytes (the pool's)", *per_call_us(
            lambda: [(i.camera_id, i.timestamp, _pack(i.detections.xyxy), _pack(i.detections.confidence),
                      _pack(i.detections.class_id)) for i in step])),
        ("reply: tracked sv.Detections", *per_call_us(lambda: found)),
        ("reply: numpy rows and ids", *per_call_us(lambda: rows)),
        ("reply: raw bytes (the pool's)", *per_call_us(lambda: [(_pack(r), _pack(t)) for r, t in rows])),
        ("tracks rebuilt from rows, found[rows] (no pickling)", rebuild_us(found, rows), 0),
    ]


def rebuild_us(found: list[sv.Detections], rows: list[tuple[np.ndarray, np.ndarray]], repeats: int = 2000) -> float:
    """Microseconds the main thread spends turning a step's replies into tracks (``sv.Detections.select``)."""
    started = time.thread_time()
    for _ in range(repeats):
        for detections, (kept, _) in zip(found, rows):
            detections[kept]
    return (time.thread_time() - started) / repeats * 1e6


def cpu_seconds(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from /proc: Linux."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_cpu_seconds(trackers: CameraTrackers) -> float:
    """CPU seconds of this process (all its threads) and of the pool's workers, if any."""
    pids = trackers.pids if isinstance(trackers, TrackerPool) else []
    return time.process_time() + sum(cpu_seconds(pid) for pid in pids)


def time_trackers(make: Callable[[], CameraTrackers], steps: list[list[TrackInput]]) -> tuple[float, float, float]:
    """Wall, main-thread CPU and all processes' CPU milliseconds per step, past the warm-up steps."""
    trackers = make()
    try:
        for inputs in steps[:WARM_UP_STEPS]:
            trackers.track(inputs)
        wall, thread, everything = time.perf_counter(), time.thread_time(), all_cpu_seconds(trackers)
        for inputs in steps[WARM_UP_STEPS:]:
            trackers.track(inputs)
        wall, thread = time.perf_counter() - wall, time.thread_time() - thread
        everything = all_cpu_seconds(trackers) - everything
    finally:
        trackers.close()
    counted = len(steps) - WARM_UP_STEPS
    return wall / counted * 1e3, thread / counted * 1e3, everything / counted * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--people", type=int, default=8, help="people per camera")
    parser.add_argument("--steps", type=int, default=200, help="timed steps (after 20 warm-up steps)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    steps = make_steps(args.cameras, args.steps + WARM_UP_STEPS, args.people)
    boxes = np.mean([sum(len(item.detections) for item in step) / args.cameras for step in steps])
    logger.info("%s, %d CPUs, Python %s; %d cameras x %.1f boxes, %d steps",
                platform.processor() or platform.machine(), os.cpu_count(), platform.python_version(),
                args.cameras, boxes, args.steps)
    logger.info("\n| wire format, one step of %d cameras | pickle + unpickle us | bytes |\n|---|---|---|", args.cameras)
    for label, micros, size in wire_formats(steps[0]):
        logger.info("| %s | %.1f | %d |", label, micros, size)

    spec = TrackerSpec.from_config(TrackerConfig())
    rates = {f"cam{camera}": FPS for camera in range(args.cameras)}
    settings: list[tuple[str, Callable[[], CameraTrackers]]] = [("in the main thread", lambda: LocalTrackers(spec, rates))]
    for workers in args.workers:
        label = f"{workers} worker process{'es' if workers > 1 else ''}"
        settings.append((label, lambda workers=workers: TrackerPool(spec, rates, workers)))
    logger.info("\n| trackers | wall ms/step | main thread CPU ms/step | all processes CPU ms/step |\n|---|---|---|---|")
    for label, make in settings:
        wall, thread, tree = time_trackers(make, steps)
        logger.info("| %s | %.2f | %.2f | %.2f |", label, wall, thread, tree)


if __name__ == "__main__":
    main()
