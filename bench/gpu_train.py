"""Train ReIDMamba on a GPU and report throughput, memory, the loss curve and final metrics.

Meant for an H100/H200 machine where reidcam is not installed::

    PYTHONPATH=. python bench/gpu_train.py --out "$OUT" --epochs 3                      # synthetic data
    PYTHONPATH=. python bench/gpu_train.py --data-root /data/Market1501 --epochs 10 --out "$OUT"
    PYTHONPATH=. torchrun --nproc_per_node 4 bench/gpu_train.py --out "$OUT" --epochs 3  # DDP

Without ``--data-root`` it writes a synthetic Market-layout set (``--ids`` identities x
``--images-per-id`` images at 256x128; no real benchmark is available offline). The model is
reidmamba_small at batch P x K = 16 x 4 = 64 (the paper's setting) unless overridden; extra
``key=value`` arguments override the recipe (e.g. ``train.amp=fp16 optim.lr=0.004``).

Prints a summary and writes ``$OUT/gpu_train_summary.json`` (plus the run's log.jsonl,
metrics.json, recipe.yaml; last.pt only with ``--keep-weights``).
Imports on the training path: torch, torchvision, numpy, pillow, pyyaml, pydantic
(+ pydantic-core, annotated-types, typing-inspection, typing-extensions), optionally tensorboard and rich.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REQUIRED = ("torch", "torchvision", "numpy", "PIL", "yaml", "pydantic")


def check_imports() -> None:
    missing = []
    for name in REQUIRED:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.exit(f"gpu_train: missing Python packages {missing}; carry their wheels (see the module docstring)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    parser.add_argument("--data-root", type=Path, default=None, help="Market-layout folder (default: synthetic)")
    parser.add_argument("--recipe", type=Path, default=Path("configs/reid/market1501_256.yaml"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ids", type=int, default=256, help="synthetic identities for training (as many for test)")
    parser.add_argument("--images-per-id", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none", "auto"])
    parser.add_argument("--keep-weights", action="store_true")
    parser.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    return parser.parse_args()


def synthetic_root(args: argparse.Namespace, work: Path) -> Path:
    from reidcam.reid.data.synthetic import write_synthetic_market

    root = work / "synthetic_market"
    marker = root / ".complete"
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not marker.exists():
        started = time.perf_counter()
        write_synthetic_market(root, num_train_ids=args.ids, num_test_ids=args.ids // 2,
                               images_per_id=args.images_per_id, num_cameras=6, size=(256, 128), seed=0)
        marker.write_text("ok")
        logging.info("synthetic data written to %s in %.1f s", root, time.perf_counter() - started)
    while not marker.exists():  # other ranks wait for rank 0
        time.sleep(0.5)
    return root


def summarise(run_dir: Path, wall_seconds: float, args: argparse.Namespace) -> dict:
    import torch

    epochs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steady = epochs[1:] or epochs  # the first epoch includes compilation / autotuning
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "recipe": str(args.recipe),
        "amp": args.amp,
        "overrides": args.overrides,
        "data": str(args.data_root) if args.data_root else f"synthetic {args.ids} ids x {args.images_per_id}",
        "epochs": len(epochs),
        "images_per_s_per_epoch": [round(e["images_per_s"], 1) for e in epochs],
        "images_per_s_steady": round(sum(e["images_per_s"] for e in steady) / len(steady), 1),
        "seconds_per_epoch": [round(e["seconds"], 1) for e in epochs],
        "iterations_per_epoch": [e["iterations"] for e in epochs],
        "peak_memory_mib": max((e.get("peak_memory_mib", 0.0) for e in epochs), default=0.0),
        "loss_curve": [{k: round(e[k], 4) for k in ("epoch", "loss", "triplet", "id", "ratr_intra", "ratr_inter", "lr")}
                       for e in epochs],
        "final_metrics": metrics,
        "wall_seconds": round(wall_seconds, 1),
    }


def main() -> None:
    check_imports()
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from reidcam.reid.engine.train import train_from_recipe

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "reidcam_gpu_train"
    data_root = args.data_root or synthetic_root(args, work)
    run_dir = work / "run"
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        "data.dataset=market", f"data.num_workers={args.num_workers}", f"train.amp={args.amp}",
        f"train.eval_every={args.epochs}", f"train.checkpoint_every={args.epochs}", "train.log_every=20",
        "optim.warmup_iters=100",  # the recipe's 1200 would leave a short benchmark inside the warm-up
        *args.overrides,
    ]
    started = time.perf_counter()
    train_from_recipe(args.recipe, data_root=data_root, output=run_dir, epochs=args.epochs, device="auto",
                      overrides=overrides)
    wall = time.perf_counter() - started
    if int(os.environ.get("RANK", "0")) != 0:
        return
    summary = summarise(run_dir, wall, args)
    for name in ("log.jsonl", "metrics.json", "recipe.yaml", *(["last.pt"] if args.keep_weights else [])):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, args.out / name)
    (args.out / "gpu_train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
