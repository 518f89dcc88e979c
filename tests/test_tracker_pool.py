"""Tracking in worker processes (``tracker.processes``): real trackers in real spawned processes give the
tracks the main thread's trackers give, a worker that dies or fails is a one-line error, and the workers
end with the pool."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import supervision as sv

from reidcam.app.config import TrackerConfig
from reidcam.errors import WorkerError
from reidcam.tracking.tracker import TrackerSpec
from reidcam.tracking.tracker_pool import LocalTrackers, TrackerPool, TrackInput, open_trackers, worker_count

CAMERAS = {"a": 10.0, "b": 10.0, "c": 25.0, "d": 10.0, "e": 15.0}


def walkers(camera_seed: int, steps: int, people: int = 8) -> list[sv.Detections]:
    """A camera's detections of people walking across a 1920x1080 frame: some enter late or leave early,
    a few boxes are missed or scored low (ByteTrack's second stage), as a detector's are."""
    rng = np.random.default_rng(camera_seed)
    start = rng.uniform([0, 200], [1600, 800], (people, 2))
    velocity = rng.uniform(-12, 12, (people, 2))
    size = rng.uniform([40, 100], [90, 260], (people, 2))
    visible = np.sort(rng.integers(0, steps, (people, 2)), axis=1)
    frames = []
    for step in range(steps):
        seen = (visible[:, 0] <= step) & (step <= visible[:, 1]) & (rng.random(people) > 0.1)
        corner = start[seen] + velocity[seen] * step + rng.normal(0, 1.5, (seen.sum(), 2))
        xyxy = np.hstack([corner, corner + size[seen]]).astype(np.float32)
        count = len(xyxy)
        frames.append(sv.Detections(
            xyxy=xyxy,
            confidence=np.where(rng.random(count) < 0.15, 0.3, rng.uniform(0.55, 0.95, count)).astype(np.float32),
            class_id=np.zeros(count, dtype=int),
            data={"class_name": np.array(["person"] * count)},
        ))
    return frames


def step_inputs(steps: int) -> list[list[TrackInput]]:
    """Each step's inputs; a camera sits a step out now and then, as cameras of other frame rates do."""
    detections = {camera_id: walkers(seed, steps) for seed, camera_id in enumerate(CAMERAS)}
    return [
        [
            TrackInput(camera_id, detections[camera_id][step], step / CAMERAS[camera_id])
            for number, camera_id in enumerate(CAMERAS)
            if (step + number) % 7
        ]
        for step in range(steps)
    ]


def spec(kind: str = "bytetrack", **params) -> TrackerSpec:
    return TrackerSpec.from_config(TrackerConfig(type=kind, params=params))


def assert_same_tracks(got: sv.Detections, expected: sv.Detections) -> None:
    assert got == expected  # xyxy, mask, confidence, class_id, tracker_id, data, metadata
    for field in ("xyxy", "confidence", "class_id", "tracker_id"):
        got_field, expected_field = getattr(got, field), getattr(expected, field)
        assert (got_field is None) == (expected_field is None), field
        if got_field is not None:
            assert got_field.dtype == expected_field.dtype, field


def test_the_pool_tracks_every_camera_as_the_main_thread_does():
    """ByteTrack (the default) hands its tracks out in matching order, not in its input's: the rows say which."""
    steps = step_inputs(60)
    local = LocalTrackers(spec(), CAMERAS)
    confirmed = 0
    with TrackerPool(spec(), CAMERAS, workers=2) as pool:
        for inputs in steps:
            expected = local.track(inputs)
            got = pool.track(inputs)
            assert len(got) == len(inputs)
            for pooled, in_process in zip(got, expected):
                assert_same_tracks(pooled, in_process)
                confirmed += len(in_process)
    assert confirmed > 200  # the comparison saw real tracks (some 600 boxes), not only empty frames


def test_workers_leave_ctrl_c_to_the_run_end_with_the_pool_and_a_killed_one_is_a_one_line_error():
    pool = TrackerPool(spec(), CAMERAS, workers=2)
    steps = step_inputs(4)
    pids = pool.pids
    os.kill(pids[0], signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    assert len(pool.track(steps[0])) == len(steps[0])
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(WorkerError, match=r"^tracker process 1 \(cameras b, d\): ended unexpectedly \(killed by SIGKILL\)$"):
        pool.track(steps[1])
    pool.close()
    for pid in pids:
        assert not _alive(pid)


def test_a_stuck_worker_is_a_one_line_error_and_closing_kills_it(monkeypatch):
    monkeypatch.setattr("reidcam.tracking.tracker_pool.STEP_TIMEOUT_S", 0.5)
    monkeypatch.setattr("reidcam.tracking.tracker_pool.JOIN_S", 0.2)
    pool = TrackerPool(spec(), {"a": 10.0, "b": 10.0}, workers=1)
    os.kill(pool.pids[0], signal.SIGSTOP)
    inputs = [TrackInput("a", walkers(0, 1)[0], 0.0), TrackInput("b", walkers(1, 1)[0], 0.0)]
    with pytest.raises(WorkerError, match=r"^tracker process 0 \(cameras a, b\): no answer to its step within 0.5 s$"):
        pool.track(inputs)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 1.0
    assert not _alive(pool.pids[0])


def test_a_tracker_that_raises_in_a_worker_is_a_one_line_error_naming_its_camera():
    with TrackerPool(spec(), {"a": 10.0, "c": 10.0}, workers=1) as pool:
        bad = [TrackInput("c", walkers(0, 1)[0], "not a time")]  # the tracker's clock arithmetic fails
        with pytest.raises(WorkerError, match=r"^tracker process 0 \(cameras a, c\): camera c: TypeError: "):
            pool.track(bad)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("processes", "cameras", "cpus", "workers"), [
    ("auto", 16, 16, 4), ("auto", 16, 2, 0), ("auto", 7, 64, 0), ("auto", 8, 8, 2), ("auto", 64, 128, 4),
    ("auto", 12, 8, 2), (0, 16, 16, 0), (3, 16, 2, 3), (8, 2, 16, 2),
])
def test_auto_tracks_in_the_main_thread_on_small_setups(processes, cameras, cpus, workers):
    assert worker_count(processes, cameras, cpus) == workers


def test_a_tracker_that_reads_the_frame_stays_in_the_main_thread():
    assert isinstance(open_trackers(spec("botsort", enable_cmc=True), CAMERAS, 2), LocalTrackers)
    assert isinstance(open_trackers(spec("bytetrack"), CAMERAS, 0), LocalTrackers)
    assert not spec("botsort").uses_frame  # cams.yaml's default BoT-SORT has no motion compensation
