"""Per-call time of the ReID embedder on the GPU against the batch size, padded to fixed shapes or not.

    PYTHONPATH=. REIDCAM_SCAN=triton python bench/gpu_embedder.py          # a GPU machine
    PYTHONPATH=. python bench/gpu_embedder.py --device cpu --sizes 1,3    # a quick CPU check

The main job embeds a different number of crops at every step. This times ``Embedder.embed`` on
the shipped ReIDMamba-T for a sequence of batch sizes, twice each (the first call at a new size
pays any kernel compilation, the second is the steady cost): padded to multiples of 16 and replayed
as CUDA graphs (the default on a GPU), padded and launched eagerly, and unpadded; plus the
preprocessing alone, and how far graphed embeddings are from eager ones. Rows go to stdout and to
``OUT/embedder.md`` as they come.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from reidcam.reid.embedder import Embedder, _resize_crop
from reidcam.weights import DEFAULT_REID_MODEL, DEFAULT_REID_WEIGHTS


def person_like_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random BGR crops of the sizes a 1080p camera gives (about 250-400 x 100-160 pixels)."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(250, 400)), int(rng.integers(100, 160)), 3), dtype=np.uint8)
        for _ in range(count)
    ]


def timed(run, device: torch.device) -> float:
    """Milliseconds of one call, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="1,3,7,12,16,23,31,40,64,5,9,17")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    crops = person_like_crops(max(sizes))
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "embedder.md").write_text("\n".join(lines) + "\n")

    started = time.perf_counter()
    padded = Embedder.create(DEFAULT_REID_WEIGHTS, DEFAULT_REID_MODEL, device=args.device, batch_size=64)
    emit(f"Embedder.create on {args.device} (loads, warms up every padded shape): "
         f"{time.perf_counter() - started:.1f} s; torch {torch.__version__}")
    height, width = padded.img_size
    levels = [(_resize_crop(c, height, width, padded.device).cpu() - _resize_crop(c, height, width, torch.device("cpu")))
              .abs() for c in crops]
    emit(f"crops resized on {args.device} vs the CPU: max {max(float(d.max()) for d in levels):.0f} levels apart, "
         f"{sum(int((d > 0).sum()) for d in levels) / sum(d.numel() for d in levels):.2%} of values differ")
    device = padded.device
    eager = Embedder(padded.model, device, batch_size=64, cuda_graphs=False)
    cameras = [i % 3 for i in range(len(crops))]
    apart = np.abs(padded.embed(crops, cameras) - eager.embed(crops, cameras)).max()
    emit(f"CUDA graphs ({len(padded._graphs)} captured) vs eager, {len(crops)} crops: max {apart:.2e} apart")
    emit("")
    emit("| variant | crops | first call ms | second call ms | per crop ms | preprocessing ms |")
    emit("|---|---|---|---|---|---|")
    variants = {
        "padded, CUDA graphs": padded,
        "padded, eager": eager,
        "unpadded, eager": Embedder(padded.model, device, batch_size=64, pad_to=1, cuda_graphs=False),
    }
    for name, embedder in variants.items():
        for size in sizes:
            batch = crops[:size]
            first = timed(lambda: embedder.embed(batch), device)
            second = timed(lambda: embedder.embed(batch), device)
            preprocessing = timed(lambda: embedder._preprocess(batch), device)
            emit(f"| {name} | {size} | {first:.1f} | {second:.1f} | {second / size:.2f} | {preprocessing:.1f} |")

if __name__ == "__main__":
    main()
