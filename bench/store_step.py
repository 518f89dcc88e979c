"""The store's host cost per pipeline step, on a synthetic 16-camera workload (CPU only, no models).

Replays steps through the real recording code of ``MultiCameraPipeline`` (``_record``,
``_log_events``, ``_commit``) into a real ``Store`` on a SQLite file, and prints the milliseconds
of main-thread time those calls take per step (the pipeline's "store" stage), split into recording
(tracklets and sightings), identity events and commits. Detection, tracking, embedding and
association are not run: the tracks, embeddings and identity events are made up, deterministically
from ``--seed``, so two versions of the store see the same work and must write the same rows
(the printed digest of the database's contents, less its wall-clock columns, says whether they did).

The workload: every camera sees ``--tracks`` people in every frame (default 16 cameras × 8); a
track lives 40-400 steps (a person crossing a view at ~21 frames/s per camera) and is replaced by a
new local id; a tracklet is associated 10-60 steps after it starts (a create for about a third,
an assign to a recent identity otherwise), which gives a few events per step at the start and about
one per step later; an identity merge in about 1 step of 50 and a split in 1 of 100; every
tracklet gets an embedding; quiet tracks close after 2 s; a commit every 25 steps.

    PYTHONPATH=. python bench/store_step.py                     # 1000 steps, best of 3 runs
    PYTHONPATH=. python bench/store_step.py --steps 2000 --repeats 5

Timed around the store's calls only, in wall time (``perf_counter``) and in the main thread's CPU
time (``thread_time``, which other work on a shared box disturbs less); the best of the repeats is
the figure. To time another version of the store, run this file with that version's tree first on
``PYTHONPATH`` (the script uses only ``Store`` and the pipeline's recording methods).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import supervision as sv

from reidcam.app.config import CamsConfig
from reidcam.app.pipeline import MultiCameraPipeline, StageClock, TrackedFrame
from reidcam.detection.geometry import CameraGeometry
from reidcam.storage.repository import Store, database_url
from reidcam.tracking.association import IdentityEvent
from reidcam.tracking.tracklets import Tracklet

T0 = 1_768_467_600.0  # 2026-01-15 09:00 UTC
CAMERA_FPS = 340 / 16
EMBED_DIM = 256
PARTS = ("record", "events", "commit")
WALL_CLOCK_COLUMNS = {"runs": ("started_at", "finished_at"), "identity_events": ("logged_at",)}


@dataclass
class Track:
    local_id: int
    ends_at: int
    box: np.ndarray


@dataclass
class Workload:
    """Made-up tracks and identity decisions, the same for a given seed."""

    cameras: list[str]
    tracks_per_camera: int
    seed: int
    rng: random.Random = field(init=False)
    tracks: dict[str, list[Track]] = field(default_factory=dict)
    next_local: dict[str, int] = field(default_factory=dict)
    next_global: int = 1
    mature_at: dict[int, int] = field(default_factory=dict)  # id(tracklet) -> step

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for camera in self.cameras:
            self.next_local[camera] = 1
            self.tracks[camera] = [self._new_track(camera, 0) for _ in range(self.tracks_per_camera)]

    def _new_track(self, camera: str, step: int) -> Track:
        local_id = self.next_local[camera]
        self.next_local[camera] += 1
        x, y = self.rng.uniform(0, 1700), self.rng.uniform(0, 700)
        box = np.array([x, y, x + self.rng.uniform(40, 120), y + self.rng.uniform(120, 360)])
        return Track(local_id, step + self.rng.randint(40, 400), box)

    def frames(self, step: int) -> list[TrackedFrame]:
        image = np.zeros((1, 1, 3), dtype=np.uint8)
        frames = []
        for camera in self.cameras:
            live = self.tracks[camera]
            for index, track in enumerate(live):
                if track.ends_at <= step:
                    live[index] = track = self._new_track(camera, step)
                track.box += np.array([self.rng.uniform(-3, 3), self.rng.uniform(-2, 2)] * 2)
            detections = sv.Detections(
                xyxy=np.stack([t.box for t in live]).astype(np.float32),
                confidence=np.array([self.rng.uniform(0.3, 0.95) for _ in live], dtype=np.float32),
                tracker_id=np.array([t.local_id for t in live]),
            )
            frames.append(TrackedFrame(camera, step + 1, T0 + step / CAMERA_FPS, image, detections))
        return frames

    def embed(self, tracklets: list[Tracklet]) -> None:
        """One crop embedding per tracklet every 5 boxes, as the embedding stage would add."""
        for tracklet in tracklets:
            if tracklet.boxes % 5 == 1:
                vector = np.array([self.rng.gauss(0, 1) for _ in range(4)] * (EMBED_DIM // 4), dtype=np.float32)
                tracklet.add_embedding(vector, self.rng.uniform(0.2, 1.0))

    def associate(self, step: int, tracklets: list[Tracklet], identities: list[int]) -> list[IdentityEvent]:
        """Creates and assigns for tracklets coming of age; now and then a merge or a split."""
        events = []
        now = T0 + step / CAMERA_FPS
        for tracklet in tracklets:
            due = self.mature_at.setdefault(id(tracklet), step + self.rng.randint(10, 60))
            if tracklet.global_id is None and due <= step:
                events.append(self._decide(tracklet, now, identities))
        if len(identities) > 2 and self.rng.random() < 0.02:
            events.append(self._merge(now, tracklets, identities))
        assigned = [t for t in tracklets if t.global_id is not None]
        if assigned and self.rng.random() < 0.01:
            events.append(self._split(now, self.rng.choice(assigned), identities))
        return events

    def _decide(self, tracklet: Tracklet, now: float, identities: list[int]) -> IdentityEvent:
        if not identities or self.rng.random() < 0.35:
            tracklet.global_id = self._new_identity(identities)
            return IdentityEvent("create", tracklet.global_id, now, tracklet)
        tracklet.global_id = self.rng.choice(identities[-50:])
        return IdentityEvent("assign", tracklet.global_id, now, tracklet, distance=self.rng.uniform(0.05, 0.3))

    def _merge(self, now: float, tracklets: list[Tracklet], identities: list[int]) -> IdentityEvent:
        kept, absorbed = sorted(self.rng.sample(identities[-50:], 2))
        identities.remove(absorbed)
        for tracklet in tracklets:
            if tracklet.global_id == absorbed:
                tracklet.global_id = kept
        return IdentityEvent("merge", kept, now, None, other_global_id=absorbed, distance=self.rng.uniform(0, 0.2))

    def _split(self, now: float, tracklet: Tracklet, identities: list[int]) -> IdentityEvent:
        old = tracklet.global_id
        tracklet.global_id = self._new_identity(identities)
        return IdentityEvent("split", tracklet.global_id, now, tracklet, other_global_id=old, distance=0.8)

    def _new_identity(self, identities: list[int]) -> int:
        identities.append(self.next_global)
        self.next_global += 1
        return identities[-1]


class PartClock:
    """Wall seconds (``part``) and main-thread CPU seconds (``part_cpu``) per part of the store's work.

    The CPU time is the thread's own, which other work on a shared box changes less than the wall time.
    """

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - wall
            self.spent[f"{name}_cpu"] = self.spent.get(f"{name}_cpu", 0.0) + time.thread_time() - cpu


def make_pipeline(store: Store, cameras: list[str]) -> MultiCameraPipeline:
    """The real pipeline object, less the stages the store's calls do not touch."""
    homography = {"image_points": [[0, 1080], [1920, 1080], [1500, 300], [400, 300]],
                  "ground_points": [[0, 0], [20, 0], [20, 40], [0, 40]]}
    config = CamsConfig.model_validate({"cameras": [{"id": c, "source": f"{c}.mp4", "homography": homography}
                                                    for c in cameras]})
    detect_track = SimpleNamespace(
        clock=StageClock(),
        geometry={camera.id: CameraGeometry.from_config(camera) for camera in config.cameras},
        source=SimpleNamespace(streams=dict.fromkeys(cameras)),
    )
    return MultiCameraPipeline(config, detect_track, None, store, [])  # type: ignore[arg-type]


def replay(path: Path, steps: int, cameras: int, tracks: int, seed: int) -> dict[str, float]:
    """One run of the workload; seconds spent in each part of the store's work."""
    camera_ids = [f"cam{index:02d}" for index in range(cameras)]
    store = Store(database_url(path), commit_every=25)
    store.start_run("cams.yaml", "{}", "synthetic", "synthetic", "combined")
    store.add_cameras(SimpleNamespace(camera_id=c, source=c, fps=CAMERA_FPS, width=1920, height=1080,
                                      start_time=None) for c in camera_ids)
    pipeline = make_pipeline(store, camera_ids)
    workload = Workload(camera_ids, tracks, seed)
    identities: list[int] = []
    clock = PartClock()
    for step in range(steps):
        tracked = workload.frames(step)
        with clock.part("record"):
            pipeline._record(tracked)
        open_now = pipeline.book.open_tracklets()
        workload.embed(open_now)
        pipeline._closed_since_commit.extend(pipeline.book.close_quiet())
        events = workload.associate(step, open_now, identities)
        with clock.part("events"):
            pipeline._log_events(events)
        with clock.part("commit"):
            if store.commit_due():
                pipeline._commit()
    with clock.part("finish"):
        pipeline._closed_since_commit.extend(pipeline.book.close_all())
        pipeline._commit()
        store.finish("finished", pipeline.frames)
    store.close()
    return {**clock.spent, "events_logged": sum(pipeline.event_counts.values())}


def digest(path: Path) -> str:
    """A hash of every table's rows in id order, less the wall-clock columns."""
    hasher = hashlib.sha256()
    with sqlite3.connect(path) as connection:
        listing = connection.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        tables = [name for (name,) in listing]
        for table in tables:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            kept = [c for c in columns if c not in WALL_CLOCK_COLUMNS.get(table, ())]
            for row in connection.execute(f"SELECT {', '.join(kept)} FROM {table} ORDER BY id"):
                hasher.update(repr((table, row)).encode())
    return hasher.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--tracks", type=int, default=8, help="people per camera frame")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    runs, digests = [], set()
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            path = Path(folder) / f"run{repeat}.db"
            runs.append(replay(path, args.steps, args.cameras, args.tracks, args.seed))
            digests.add(digest(path))
            with sqlite3.connect(path) as connection:
                counts = {t: connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                          for t in ("sightings", "tracklets", "identities", "identity_events", "tracklet_embeddings")}
    print(f"{args.steps} steps × {args.cameras} cameras × {args.tracks} tracks; rows: {counts}")
    print(f"identity events: {int(runs[0]['events_logged'])} ({runs[0]['events_logged'] / args.steps:.2f} per step)")
    for suffix, what in (("", "wall"), ("_cpu", "main-thread CPU")):
        per_step = [1e3 * sum(r[part + suffix] for part in PARTS) / args.steps for r in runs]
        best = runs[per_step.index(min(per_step))]
        print(f"store ms/step ({what}): best {min(per_step):.3f}, median {statistics.median(per_step):.3f} "
              f"(runs: {', '.join(f'{v:.3f}' for v in per_step)})")
        parts = ", ".join(f"{part} {1e3 * best[part + suffix] / args.steps:.3f}" for part in PARTS)
        end = 1e3 * best["finish" + suffix]
        print(f"  best run, ms/step: {parts}; end of run (close all, commit, finish) {end:.1f} ms")
    print(f"database digest: {' '.join(sorted(digests))}")


if __name__ == "__main__":
    main()
