"""CPU speed of the main job on the demo: frames per second per stage and end to end.

Makes the demo's virtual cameras (unless they exist), runs ``reidcam run`` on them in-process
and prints a table: seconds spent in each stage, the items it handled (frames, or crops for the
ReID stage) and its throughput, then the end-to-end rate over all cameras. Decoding runs in the
reader threads, in parallel with the rest; the other stages run one after the other. Each stage
has a wall-clock and a CPU-time column (process CPU, all threads): where other work shares the
machine, the CPU column is the stage's own cost. End-to-end wall time starts after the models
are loaded; CPU end to end includes loading.

    python bench/cpu_pipeline.py                       # demo preset, default cams.yaml settings
    python bench/cpu_pipeline.py --preset benchmark --threads 2 --reid-model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import yaml

from reidcam.app.bench import format_stage_table, time_pipeline
from reidcam.app.virtual_cameras import DEFAULT_SOURCE, PRESETS, make_virtual_cameras


def prepare_cameras(preset: str, folder: Path) -> Path:
    cams_yaml = folder / "cams.yaml"
    if not cams_yaml.is_file():
        make_virtual_cameras(DEFAULT_SOURCE, folder, PRESETS[preset].cameras, extra_config=PRESETS[preset].extra_config)
    return cams_yaml


def with_overrides(cams_yaml: Path, scratch: Path, reid_model: str | None, mode: str | None) -> Path:
    """A copy of cams.yaml in ``scratch`` with the ReID model or association mode changed."""
    if reid_model is None and mode is None:
        return cams_yaml
    document = yaml.safe_load(cams_yaml.read_text())
    for camera in document["cameras"]:
        camera["source"] = str((cams_yaml.parent / camera["source"]).resolve())
    if reid_model is not None:
        document.setdefault("reid", {})["model"] = str(Path(reid_model).resolve())
    if mode is not None:
        document.setdefault("association", {})["mode"] = mode
    changed = scratch / "cams.bench.yaml"
    changed.write_text(yaml.safe_dump(document, sort_keys=False))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--cameras", type=Path, help="folder for the clips (default: a temporary folder)")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default: all cores)")
    parser.add_argument("--reid-model", help="an .onnx ReID model instead of cams.yaml's")
    parser.add_argument("--mode", choices=("combined", "appearance", "spacetime"))
    parser.add_argument("--max-frames", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.cameras or Path(scratch) / args.preset
        cams_yaml = with_overrides(prepare_cameras(args.preset, folder), Path(scratch), args.reid_model, args.mode)
        timing = time_pipeline(cams_yaml, device="cpu", max_frames=args.max_frames)
    print(f"reidcam CPU pipeline, preset {args.preset}: {timing.machine}, python {sys.version.split()[0]}")
    print(format_stage_table(timing.summary, timing.cpu_seconds))


if __name__ == "__main__":
    main()
