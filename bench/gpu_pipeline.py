"""Throughput of the whole main job against the number of cameras (issue 6): 1, 4 and 16 cameras of 1080p.

    PYTHONPATH=. python bench/gpu_pipeline.py --device cuda --detector yolov8n.pt            # a GPU machine
    PYTHONPATH=. python bench/gpu_pipeline.py --device cpu --cameras 1 --frames 10 --scale 0.5   # a quick CPU check

Each camera is vtest.avi cut to 16:9 (768x432) and scaled (2.5: 1920x1080), starting at its own
frame so that cameras show different moments; the clips are written once into ``--work``. With
``--clocks together`` (the default since session 8) every camera films at once, as the issue's 16 cameras
do, so a step holds a frame of each; ``--clocks staggered`` starts each camera's clock at its clip's moment
of the source (4.7 s apart), which leaves 2-3 cameras overlapping and steps of ~2 frames: every pipeline
number before session 8 was measured so. The "frames per step" column shows which. After an
untimed warm-up run of one camera (first use compiles the GPU kernels), ``reidcam run`` runs
in-process on all cameras (``reidcam.app.bench.time_pipeline``: scratch output, batched detection
and ReID across cameras) and the script prints, per camera count, frames/s end to end and each
stage's share of the wall time, and writes ``OUT/pipeline.md`` when $OUT is set. "2nd half frames/s" is the rate over the second half
of the run's steps, past the first-use compilations and graph captures of the first.

``--overlap`` / ``--no-overlap`` set ``detector.overlap`` (detection and tracking of the next step in
a background thread while the main thread handles this one); without either, the cams.yaml value
(off by default). ``--detector-graphs`` / ``--no-detector-graphs`` set ``detector.cuda_graphs``; ``--decode thread|process`` sets
``streams.decode`` (each camera decoded in a thread
of the run, or in a process of its own into shared memory); ``--tracker-processes N|auto`` sets
``tracker.processes`` (0: every camera's tracker in the main thread). ``--switch-interval`` sets Python's GIL
switch interval for the whole run. Each row says whether it overlapped; when it did, the shares add up to more
than 100 %, as detect and track ran beside the other stages.

The detector is ``--detector`` (any weights Ultralytics loads; default: the INT8 TFLite model of
../shared, which runs on the CPU whatever ``--device`` says); ReID is reidcam's default (the
shipped ReIDMamba-T weights) on ``--device``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from reidcam.app.bench import STAGE_UNITS, time_pipeline
from reidcam.app.config import shared_dir
from reidcam.app.virtual_cameras import DEFAULT_SOURCE, VirtualCamera, make_virtual_cameras

DEFAULT_DETECTOR = shared_dir() / "models" / "yolov8n-coco-int8" / "yolov8n_int8.tflite"
WINDOW_16_9 = (0, 72, 768, 504)
SOURCE_FRAMES = 795
OVERLAP_NAMES = {None: "as cams.yaml (default off)", True: "on", False: "off"}
GRAPH_NAMES = {None: "as cams.yaml (default on)", True: "on", False: "off"}


def write_cameras(count: int, frames: int, scale: float, folder: Path, detector: str, stride: int = 47) -> Path:
    """``count`` cameras of ``frames`` frames each, at staggered start frames; returns cams.yaml."""
    cameras = [
        VirtualCamera(f"cam{i:02d}", WINDOW_16_9, start_frame=(i * stride) % (SOURCE_FRAMES - frames),
                      num_frames=frames, scale=scale)
        for i in range(count)
    ]
    cams_yaml = make_virtual_cameras(DEFAULT_SOURCE, folder, cameras)
    document = yaml.safe_load(cams_yaml.read_text())
    document["detector"] = {**document.get("detector", {}), "weights": detector}
    cams_yaml.write_text(yaml.safe_dump(document, sort_keys=False))
    return cams_yaml


def cameras_once(count: int, frames: int, scale: float, folder: Path, detector: str) -> Path:
    """cams.yaml of ``write_cameras`` in ``folder``, written only if that folder has none yet."""
    cams_yaml = folder / "cams.yaml"
    return cams_yaml if cams_yaml.is_file() else write_cameras(count, frames, scale, folder, detector)


def with_settings(cams_yaml: Path, settings: dict[tuple[str, str], object], clocks: str = "together") -> Path:
    """cams.yaml with each ``(section, key)`` set to its value, or removed for None (reidcam's default), and
    with the cameras' clocks together (every start_time the first camera's: all cameras film at once, and a
    step holds a frame of each) or staggered (each camera's clock starts at its clip's moment of the source)."""
    document = yaml.safe_load(cams_yaml.read_text())
    cameras = document["cameras"]
    if clocks == "together":
        for camera in cameras:
            camera["start_time"] = cameras[0]["start_time"]
    for (section, key), value in settings.items():
        keys = document.setdefault(section, {})
        keys.pop(key, None)
        if value is not None:
            keys[key] = value
    run_yaml = cams_yaml.with_name(f"cams_run_{clocks}.yaml")  # beside the clips; the written cams.yaml stays
    run_yaml.write_text(yaml.safe_dump(document, sort_keys=False))
    return run_yaml


def report_row(count: int, timing) -> str:
    summary = timing.summary
    wall = summary.wall_seconds
    shares = " | ".join(
        f"{100 * summary.stages[s].seconds / wall:.0f} %" if s in summary.stages and wall > 0 else "-"
        for s in STAGE_UNITS
    )
    reid = summary.stages.get("reid")
    crops = f"{reid.items / reid.seconds:.0f}" if reid and reid.seconds > 0 else "-"
    rate = summary.total_frames / wall if wall > 0 else 0.0
    overlap = "on" if summary.overlap else "off"
    late_rate = getattr(summary, "late_rate", None)  # absent in older packages, which A/B runs time
    late = f"{late_rate:.1f}" if late_rate else "-"
    steps = getattr(summary, "steps", 0)
    per_step = f"{summary.total_frames / steps:.1f}" if steps else "-"
    return (
        f"| {count} | {summary.total_frames} | {per_step} | {wall:.1f} | {rate:.1f} | {late} | {rate / count:.1f} | {crops} "
        f"| {shares} | {overlap} |"
    )


def _processes(text: str) -> int | str:
    """``--tracker-processes``: "auto" or a count of at least 0."""
    if text == "auto":
        return text
    count = int(text)
    if count < 0:
        raise argparse.ArgumentTypeError("a count of at least 0, or auto")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="1,4,16", help="comma-separated camera counts")
    parser.add_argument("--frames", type=int, default=200, help="frames per camera")
    parser.add_argument("--scale", type=float, default=2.5, help="2.5 = 1920x1080")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--detector", default=str(DEFAULT_DETECTOR))
    parser.add_argument("--warmup-frames", type=int, default=30,
                        help="frames of one camera run first, untimed (first use compiles the GPU kernels)")
    parser.add_argument("--decoder-threads", type=int, default=None,
                        help="FFmpeg threads per camera (streams.decoder_threads; default: cores / cameras)")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                        help="detector.overlap: detect and track in a background thread (default: the cams.yaml "
                        "value, off)")
    parser.add_argument("--detector-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="detector.cuda_graphs (default: the cams.yaml value, on)")
    parser.add_argument("--decode", choices=["thread", "process"], default=None,
                        help="streams.decode (default: the cams.yaml value, auto: processes on a GPU)")
    parser.add_argument("--tracker-processes", default=None, type=_processes,
                        help="tracker.processes: a count (0: trackers in the main thread) or auto (default: the "
                             "cams.yaml value, auto)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval (s): how long a thread may hold the GIL when another asks")
    parser.add_argument("--clocks", choices=["together", "staggered"], default="together",
                        help="together: every camera films at once (a step holds a frame of each camera); "
                        "staggered: each camera's clock starts at its clip's moment of vtest.avi, 4.7 s apart, so "
                        "that only 2-3 cameras overlap (the bench's only mode before session 8)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "reidcam_gpu_pipeline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    width, height = round(768 * args.scale), round(432 * args.scale)
    header = [
        f"reidcam run, {width}x{height} cameras of vtest.avi, {args.frames} frames each, detector "
        f"{Path(args.detector).name}, device {args.device}, decoder threads per camera "
        f"{args.decoder_threads or 'cores / cameras'}, clocks {args.clocks}, decode in {args.decode or 'auto'}, detector graphs {GRAPH_NAMES[args.detector_graphs]}, tracker processes "
        f"{'as cams.yaml (default auto)' if args.tracker_processes is None else args.tracker_processes}, overlap {OVERLAP_NAMES[args.overlap]}, GIL switch "
        f"interval {sys.getswitchinterval() * 1e3:g} ms",
        "",
        "| cameras | frames | frames per step | wall s | frames/s | 2nd half frames/s | per camera | ReID crops/s | "
        + " | ".join(STAGE_UNITS) + " | overlap |",
        "|---" * (9 + len(STAGE_UNITS)) + "|",
    ]
    lines = list(header)
    if args.warmup_frames > 0:
        warmup = args.work / f"warmup_{args.warmup_frames}f_{width}"
        time_pipeline(cameras_once(1, args.warmup_frames, args.scale, warmup, args.detector), device=args.device)
    for count in (int(c) for c in args.cameras.split(",")):
        folder = args.work / f"{count}cams_{args.frames}f_{width}"
        settings = {("streams", "decoder_threads"): args.decoder_threads, ("streams", "decode"): args.decode,
                    ("detector", "overlap"): args.overlap, ("detector", "cuda_graphs"): args.detector_graphs,
                    ("tracker", "processes"): args.tracker_processes}
        cams_yaml = with_settings(cameras_once(count, args.frames, args.scale, folder, args.detector), settings,
                                  args.clocks)
        timing = time_pipeline(cams_yaml, device=args.device)
        if len(lines) == len(header):
            lines[0] += f"; {timing.machine}"
        lines.append(report_row(count, timing))
        print(lines[-1], flush=True)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
