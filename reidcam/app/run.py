"""``reidcam run``: cams.yaml in; a database, ``OUT/trajectories.csv`` and optional pictures out.

Each call is a new run in the database (one database can hold many). Defaults: the output
folder is ``--out``, else the ``out`` key of cams.yaml, else ``./out``; the database is
``--db`` (a URL or a file path), else ``storage.db`` of cams.yaml, else ``OUT/reidcam.db``.

Stopping: Ctrl-C or SIGTERM ends the run at once; the database keeps everything up to the last
commit, the run is marked ``interrupted`` and the CSV is written from what was committed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from reidcam.app.config import CamsConfig, load_config
from reidcam.app.pipeline import (
    DetectTrack,
    EmbeddingStage,
    MultiCameraPipeline,
    RunSummary,
    StageClock,
    StepObserver,
    build_detector,
    create_embedder,
    late_frame_rate,
)
from reidcam.app.progress import make_progress
from reidcam.app.sources import MultiCameraSource, open_cameras
from reidcam.devices import resolve_device
from reidcam.storage.export import export_run_csv
from reidcam.storage.repository import Store, database_url

logger = logging.getLogger(__name__)

CSV_NAME = "trajectories.csv"
DEFAULT_OUT = Path("out")
DB_NAME = "reidcam.db"


def run_from_config(
    sources: Path,
    db_url: str | None = None,
    out_dir: Path | None = None,
    device: str = "auto",
    max_frames: int | None = None,
    write_video: bool = False,
    write_contact_sheets: bool = False,
    show_progress: bool = True,
) -> RunSummary:
    """The main job. Bad input raises ``ReidcamError``; Ctrl-C and SIGTERM raise ``KeyboardInterrupt``."""
    config = load_config(Path(sources))
    out = Path(out_dir) if out_dir is not None else Path(config.out) if config.out else DEFAULT_OUT
    url = database_url(db_url or config.storage.db or out / DB_NAME)
    device = str(resolve_device(device))
    detects_on_gpu = resolve_device(config.detector.device or device).type == "cuda"
    with ExitStack() as stack:  # whatever was opened is closed, the last opened first, however the run ends
        source = open_cameras(
            config.cameras, config.streams, datetime.now(timezone.utc), max_frames, config.sync_tolerance_s,
            gpu=detects_on_gpu,
        )
        stack.callback(source.close)
        detect_track, embedding, observers = _build_stages(
            config, source, device, out, write_video, write_contact_sheets, show_progress
        )
        stack.callback(detect_track.close)
        store = stack.enter_context(closing(Store(url, commit_every=config.storage.commit_every)))
        return _run(config, Path(sources), store, detect_track, embedding, observers, out, write_contact_sheets)


def _run(
    config: CamsConfig,
    sources: Path,
    store: Store,
    detect_track: DetectTrack,
    embedding: EmbeddingStage,
    observers: list[StepObserver],
    out: Path,
    write_contact_sheets: bool,
) -> RunSummary:
    run_id = store.start_run(
        config_path=str(sources.resolve()),
        config_json=config.to_json(),
        detector=getattr(detect_track.detector, "weights", ""),
        reid_model=config.reid.model,
        mode=config.association.mode,
    )
    store.add_cameras(detect_track.source.infos)
    pipeline = MultiCameraPipeline(config, detect_track, embedding, store, observers)
    started = time.perf_counter()
    logger.info("run %d: %d cameras -> %s", run_id, len(detect_track.source.streams), store.url)
    try:
        with _sigterm_as_interrupt():
            pipeline.run()
    except KeyboardInterrupt:
        _stop(store, detect_track, observers, "interrupted")
        logger.warning("run %d interrupted; the database holds everything up to its last commit", run_id)
        _export_csv(store, run_id, out)
        raise
    except Exception:
        _stop(store, detect_track, observers, "failed")
        raise
    store.finish("finished", pipeline.frames)
    clock = detect_track.clock
    decode_wall, decode_cpu = detect_track.source.decode_seconds()
    clock.add("decode", decode_wall, sum(pipeline.frames.values()), decode_cpu)
    csv_path = _export_csv(store, run_id, out)
    if write_contact_sheets:
        from reidcam.app.visualize import write_contact_sheets as write_sheets

        write_sheets(pipeline.gallery, out / "contact_sheets")
    summary = RunSummary(
        run_id=run_id,
        db_url=store.url,
        csv_path=csv_path,
        frames=dict(pipeline.frames),
        tracklets=len(pipeline.book.tracklets),
        identities=len(pipeline.gallery.active()),
        events=dict(pipeline.event_counts),
        wall_seconds=time.perf_counter() - started,
        stages=clock.stages,
        overlap=pipeline.overlap,
        late_rate=late_frame_rate(pipeline.step_marks),
        steps=len(pipeline.step_marks),
    )
    logger.info(
        "run %d: %d frames in %.1f s (%.1f fps), %d tracklets, %d identities; %s",
        run_id,
        summary.total_frames,
        summary.wall_seconds,
        summary.total_frames / max(summary.wall_seconds, 1e-9),
        summary.tracklets,
        summary.identities,
        csv_path,
    )
    return summary


def _build_stages(
    config: CamsConfig,
    source: MultiCameraSource,
    device: str,
    out: Path,
    write_video: bool,
    write_contact_sheets: bool,
    show_progress: bool,
) -> tuple[DetectTrack, EmbeddingStage, list[StepObserver]]:
    clock = StageClock()
    detector = build_detector(config, device, [(info.height, info.width, 3) for info in source.infos])
    embedder = create_embedder(config.reid, device) if config.association.mode != "spacetime" else None
    keep_crops = config.reid.crops_per_tracklet_kept if write_contact_sheets else 0
    camera_indices = {camera.id: index for index, camera in enumerate(config.cameras)}
    embedding = EmbeddingStage(embedder, config.reid, camera_indices, keep_crops, clock)
    observers: list[StepObserver] = []
    if show_progress:
        observers.append(make_progress(list(source.streams)))
    if write_video:
        from reidcam.app.visualize import AnnotatedVideos

        observers.append(AnnotatedVideos(out / "videos", {info.camera_id: info.fps for info in source.infos}))
    detect_track = DetectTrack(config, detector, source, clock)  # last: it may start tracker processes
    return detect_track, embedding, observers


def _export_csv(store: Store, run_id: int, out: Path) -> Path:
    path = out / CSV_NAME
    rows = export_run_csv(store.engine, run_id, path)
    logger.info("wrote %d trajectory rows to %s", rows, path)
    return path


def _stop(store: Store, detect_track: DetectTrack, observers: list[StepObserver], status: str) -> None:
    """After an interruption or a failure: stop the readers, keep the last commit, mark the run."""
    detect_track.source.close()
    store.abandon(status)
    for observer in observers:
        try:
            observer.close()
        except Exception:  # closing a display must not hide why the run stopped
            logger.exception("closing %s failed", type(observer).__name__)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C does (only the main thread can install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
