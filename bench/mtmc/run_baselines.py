"""Baselines of cross-camera association on the virtual-camera benchmark, in one harness.

    python bench/mtmc/run_baselines.py                       # all three, CPU, whole clips
    python bench/mtmc/run_baselines.py --max-frames 200 --only spacetime,appearance
    python bench/mtmc/run_baselines.py --reid-weights runs/market/last.pt --device cuda

Builds the benchmark (ground truth and clips, see build_benchmark.py), runs ``reidcam run`` once
per baseline on the same clips with the same detector and tracker, and scores each run with
``reidcam eval-mtmc``'s evaluator:

- ``spacetime``: association by position and time only (``association.mode: spacetime``, no ReID);
- ``appearance``: appearance only, OSNet x0.25 (MSMT17) ONNX from ../shared/models, no transit rules;
- ``combined``: reidcam's full association with ReIDMamba (``--reid-weights``; without it the
  model has random weights and the row says so).

Writes ``results.md`` (a markdown table) and ``results.json`` beside this script (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_benchmark  # noqa: E402

from reidcam.app.config import shared_dir  # noqa: E402
from reidcam.app.eval_mtmc import evaluate_run  # noqa: E402
from reidcam.tracking.mtmc_metrics import MtmcReport  # noqa: E402

HERE = Path(__file__).resolve().parent
OSNET = shared_dir() / "models" / "osnet-x0.25-msmt17" / "osnet_x0_25_msmt17.onnx"
BASELINES = ("spacetime", "appearance", "combined")

logger = logging.getLogger("run_baselines")


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    settings: dict  # merged into cams.yaml


def baselines(reid_weights: Path | None, reid_model: str) -> dict[str, Baseline]:
    combined_reid = {"model": reid_model}
    if reid_weights is not None:
        combined_reid["weights"] = str(reid_weights.resolve())
    is_onnx = reid_model.lower().endswith(".onnx")
    model_label = Path(reid_model).name if is_onnx else reid_model
    if is_onnx:
        weights_note = "ONNX"
    else:
        weights_note = f"weights {reid_weights.name}" if reid_weights else "random weights (no trained checkpoint)"
    return {
        "spacetime": Baseline("spacetime", "position and time only, no ReID", {"association": {"mode": "spacetime"}}),
        "appearance": Baseline(
            "appearance", "appearance only, OSNet x0.25 MSMT17 (ONNX)",
            {"association": {"mode": "appearance"}, "reid": {"model": str(OSNET)}},
        ),
        "combined": Baseline(
            "combined", f"reidcam full association, {model_label}, {weights_note}",
            {"association": {"mode": "combined"}, "reid": combined_reid},
        ),
    }


def write_config(clips: Path, baseline: Baseline, out_dir: Path) -> Path:
    """The clips' cams.yaml with the baseline's settings, camera sources made absolute."""
    document = yaml.safe_load((clips / "cams.yaml").read_text())
    for camera in document["cameras"]:
        camera["source"] = str((clips / camera["source"]).resolve())
    for key, value in baseline.settings.items():
        document[key] = {**document.get(key, {}), **value}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cams.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def truncated_gt(gt_dir: Path, max_frames: int, out_dir: Path) -> Path:
    """A copy of the ground truth cut to the first ``max_frames`` frames of every camera."""
    for camera_dir in sorted(p for p in gt_dir.iterdir() if p.is_dir() and p.name != "source"):
        rows = [line for line in (camera_dir / "gt.txt").read_text().splitlines()
                if line and int(line.split(",")[0]) <= max_frames]
        target = out_dir / camera_dir.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "gt.txt").write_text("\n".join(rows) + "\n")
        info = (camera_dir / "seqinfo.ini").read_text().splitlines()
        length = next(int(line.split("=")[1]) for line in info if line.startswith("seqLength="))
        (target / "seqinfo.ini").write_text("\n".join(
            f"seqLength={min(length, max_frames)}" if line.startswith("seqLength=") else line for line in info
        ) + "\n")
    (out_dir / "seqmap.txt").write_text((gt_dir / "seqmap.txt").read_text())
    return out_dir


def run_baseline(config: Path, out_dir: Path, device: str, max_frames: int | None) -> float:
    command = [sys.executable, "-m", "reidcam", "run", "--sources", str(config), "--out", str(out_dir),
               "--device", device]
    if max_frames:
        command += ["--max-frames", str(max_frames)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def markdown(results: dict[str, tuple[Baseline, MtmcReport, float]], frames: str, device: str) -> str:
    lines = [
        f"Virtual-camera benchmark (bench/mtmc), {frames}, device {device}. Per camera: the three cameras "
        "combined as TrackEval combines sequences, with global ids. Cross camera: all cameras as one "
        "sequence, global ids (DukeMTMC / AI City convention). Figures in %.",
        "",
        "| baseline | HOTA | MOTA | IDF1 | IDSW | cross IDF1 | cross IDP | cross IDR | pred ids (GT) | run time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for baseline, report, seconds in results.values():
        c, x = report.combined, report.cross_camera
        lines.append(
            f"| {baseline.name}: {baseline.description} | {100 * c.hota:.1f} | {100 * c.mota:.1f} | "
            f"{100 * c.idf1:.1f} | {c.id_switches} | {100 * x.idf1:.1f} | {100 * x.idp:.1f} | {100 * x.idr:.1f} | "
            f"{x.predicted_identities} ({x.gt_identities}) | {seconds:.0f} s |"
        )
    lines += ["", "Per camera (HOTA / MOTA / IDF1):", "",
              "| baseline | " + " | ".join(next(iter(results.values()))[1].cameras) + " |",
              "|---|" + "---|" * len(next(iter(results.values()))[1].cameras)]
    for baseline, report, _ in results.values():
        cells = [f"{100 * s.hota:.1f} / {100 * s.mota:.1f} / {100 * s.idf1:.1f}" for s in report.cameras.values()]
        lines.append(f"| {baseline.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "work" / "baselines")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each camera")
    parser.add_argument("--only", default=",".join(BASELINES), help="comma-separated subset of " + ", ".join(BASELINES))
    parser.add_argument("--reid-model", default="reidmamba_tiny",
                        help="ReIDMamba variant, or an .onnx model, of the combined baseline")
    parser.add_argument("--reid-weights", type=Path, default=None, help="checkpoint for the combined baseline")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.md and results.json")
    parser.add_argument("--reuse-runs", action="store_true", help="score runs already in --work again, do not rerun")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    clips = args.work / "clips"
    build_benchmark.main(["--clips", str(clips)])
    gt_dir = HERE / "gt"
    if args.max_frames:
        gt_dir = truncated_gt(gt_dir, args.max_frames, args.work / f"gt_first_{args.max_frames}")
    chosen = baselines(args.reid_weights, args.reid_model)
    results = {}
    for name in args.only.split(","):
        baseline = chosen[name.strip()]
        out_dir = args.work / baseline.name
        config = write_config(clips, baseline, out_dir)
        timing = out_dir / "run_seconds.txt"
        if args.reuse_runs and timing.exists() and (out_dir / "reidcam.db").exists():
            seconds = float(timing.read_text())
        else:
            (out_dir / "reidcam.db").unlink(missing_ok=True)
            seconds = run_baseline(config, out_dir, args.device, args.max_frames)
            timing.write_text(f"{seconds:.1f}\n")
        report = evaluate_run(gt_dir, str(out_dir / "reidcam.db"))
        results[baseline.name] = (baseline, report, seconds)
        logger.info("%s: cross-camera IDF1 %.1f, per-camera IDF1 %.1f (%.0f s)", baseline.name,
                    100 * report.cross_camera.idf1, 100 * report.combined.idf1, seconds)
    frames = f"first {args.max_frames} frames per camera" if args.max_frames else "whole clips (795/780/765 frames)"
    table = markdown(results, frames, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(
        {name: {"description": b.description, "run_seconds": s, **r.to_dict()} for name, (b, r, s) in results.items()},
        indent=2,
    ))
    print(table)


if __name__ == "__main__":
    main()
