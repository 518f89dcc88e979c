"""mAP / CMC of ReID models on a held-out-persons split (bench/mtmc/make_reid_split.py), side by side.

    .venv/bin/python bench/mtmc/reid_split_scores.py --split .gpu/reid_vtest_person \\
        --weights reidcam/weights/reidmamba_default.pt --onnx ../shared/models/osnet-x0.25-msmt17/*.onnx

Rows: each ``--weights`` checkpoint; ReIDMamba with random weights (the same architecture and input
size as the first checkpoint, ``--random-seeds`` initialisations, mean and spread); each ``--onnx``
model (e.g. the OSNet x0.25 baseline). All under the standard protocol (same-camera matches of the
query's person are ignored), cosine distance, flip averaging for ReIDMamba as in ``reidcam eval``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import cv2
import numpy as np
import torch

from reidcam.reid.data import load_dataset
from reidcam.reid.engine.evaluate import Embeddings, extract_embeddings, score_embeddings
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import load_reid_checkpoint
from reidcam.reid.onnx_embedder import OnnxEmbedder

METRICS = ("mAP", "rank1", "rank5", "mINP")


def reidmamba_scores(model, img_size, dataset) -> dict[str, float]:
    device = torch.device("cpu")
    embed = dict(img_size=img_size, device=device, batch_size=64, flip=True, num_workers=0)
    return score_embeddings(extract_embeddings(model, dataset.query, **embed),
                            extract_embeddings(model, dataset.gallery, **embed))


def onnx_scores(path: Path, dataset) -> dict[str, float]:
    embedder = OnnxEmbedder(str(path))

    def embed(samples) -> Embeddings:
        features = embedder.embed([cv2.imread(str(s.path)) for s in samples])  # unit rows already
        return Embeddings(features, np.array([s.pid for s in samples]), np.array([s.camid for s in samples]))

    return score_embeddings(embed(dataset.query), embed(dataset.gallery))


def row(name: str, scores: list[dict[str, float]]) -> str:
    cells = []
    for key in METRICS:
        values = [s[key] for s in scores]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        cells.append(f"{statistics.mean(values):.1f}{spread}")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--weights", type=Path, nargs="*", default=[])
    parser.add_argument("--onnx", type=Path, nargs="*", default=[])
    parser.add_argument("--random-seeds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    dataset = load_dataset("mined", args.split)
    print(f"{args.split}: {len(dataset.query)} queries, {len(dataset.gallery)} gallery images\n")
    print("| model | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    reference = None
    for path in args.weights:
        model, _ = load_reid_checkpoint(path)
        reference = reference or model.config
        print(row(f"{path.name} ({model.config.name}, {model.config.img_size[0]}x{model.config.img_size[1]})",
                  [reidmamba_scores(model, model.config.img_size, dataset)]), flush=True)
    name, img_size = (reference.name, reference.img_size) if reference else ("reidmamba_tiny", (128, 64))
    random_runs = []
    for seed in range(args.random_seeds):
        torch.manual_seed(seed)
        random_runs.append(reidmamba_scores(build_model(name, img_size=img_size).eval(), img_size, dataset))
    if random_runs:
        print(row(f"{name} {img_size[0]}x{img_size[1]}, random weights ({args.random_seeds} seeds)", random_runs),
              flush=True)
    for path in args.onnx:
        print(row(path.name, [onnx_scores(path, dataset)]), flush=True)


if __name__ == "__main__":
    main()
