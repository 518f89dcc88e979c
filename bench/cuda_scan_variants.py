"""Times the CUDA forward scan's compile-time variants on one GPU (issue 6, bench/NOTES-speed.md attempt 31).

    PYTHONPATH=. python bench/cuda_scan_variants.py [--batches 32,64,128,256] [--tokens 140,1164]

First the split kernels (the two directions in parallel threads) against the unsplit ones, side by side per
batch, with what REIDCAM_SCAN_FWD_SPLIT=auto picks there. Then each build: scan_fwd.cu with other tuning
macros (block size, register caps, tokens staged per barrier), each of its bf16 kernels timed: c1 (one channel
per thread), c2 (two); the "split" builds time the split kernels, the others the unsplit ones.
Inputs: bf16, d_inner 768, d_state 16, dt_rank 24, the model's parameter ranges. Prints ms per call
(median of CUDA-event timings) and the output's largest difference from the default variant's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from reidcam.reid.model.kernels import cuda_scan, triton_scan

from speed_vs_vit import random_direction  # a sibling bench script (run as ``python bench/cuda_scan_variants.py``)


def _variant(threads: int, min_blocks_c1: int, min_blocks_c2: int, **more: int) -> tuple[int, dict[str, int]]:
    return threads, {"REIDCAM_MIN_BLOCKS_C1": min_blocks_c1, "REIDCAM_MIN_BLOCKS_C2": min_blocks_c2, **more}


# name: (threads per block, macros); min blocks per SM cap the registers (65,536 / (threads * blocks))
VARIANTS: dict[str, tuple[int, dict[str, int]]] = {
    "default": (cuda_scan.THREADS, {}),
    "chunk 16": (cuda_scan.THREADS, {"REIDCAM_CHUNK": 16}),
    "chunk 8": (cuda_scan.THREADS, {"REIDCAM_CHUNK": 8}),
    "128 threads, 7/4 blocks": _variant(128, 7, 4),
    # the split kernels: 16-token chunks by default; 32 spills 8 bytes in c1 (a per-chunk reload), 8 stages less
    "split": (cuda_scan.THREADS, {}),
    "split, chunk 32": (cuda_scan.THREADS, {"REIDCAM_SPLIT_CHUNK": 32}),
    "split, chunk 8": (cuda_scan.THREADS, {"REIDCAM_SPLIT_CHUNK": 8}),
}


def inputs(batch: int, tokens: int, dim: int = 768, d_state: int = 16, rank: int = 24):
    """The same inputs for every variant: speed_vs_vit's parameters near Mamba's init, seeded."""
    gen = torch.Generator().manual_seed(0)
    device_gen = torch.Generator(device="cuda").manual_seed(0)
    params = [random_direction(dim, d_state, rank, gen) for _ in range(2)]
    scan = [triton_scan.ScanParams(p.dt_proj_weight.cuda(), p.dt_proj_bias.cuda(), p.A_log.cuda(), p.D.cuda())
            for p in params]
    xc = torch.randn(2, batch, tokens, dim, device="cuda", generator=device_gen).to(torch.bfloat16)
    z = torch.randn(batch, tokens, 2 * dim, device="cuda", generator=device_gen).to(torch.bfloat16)[..., dim:]
    dbl = torch.randn(2, batch * tokens, rank + 2 * d_state, device="cuda", generator=device_gen)
    return xc, z, dbl, triton_scan.scan_tables(dbl, scan[0], scan[1], torch.bfloat16)


def median_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def split_table(shapes: list[tuple[int, int]]) -> None:
    """Per shape: the unsplit and split kernels of each variant, and what auto picks (the variant is the faster
    one, as CudaScan times them; split or not by use_split)."""
    scans = {split: cuda_scan.CudaScan(split=split) for split in ("off", "on", "auto")}
    variants = cuda_scan.VARIANTS[torch.bfloat16]
    print("| batch, tokens | blocks (unsplit c1) / wave | " +
          " | ".join(f"{v} unsplit | {v} split" for v in variants) + " | auto splits c1 |")
    print("| --- | --- |" + " --- | --- |" * len(variants) + " --- |")
    for batch, tokens in shapes:
        xc, z, dbl, tables = inputs(batch, tokens)
        cells = []
        for variant in variants:
            for split in ("off", "on"):
                scan = scans[split]
                scan.kernels(xc.device, 16).choice[(xc.dtype, batch, tokens, 768)] = variant
                cells.append(f"{median_ms(lambda: scan.forward(xc, z, dbl, tables)):.3f} ms")
        kernels = scans["auto"].kernels(xc.device, 16)
        blocks = -(-768 // cuda_scan.THREADS) * batch
        wave = kernels.waves[cuda_scan.kernel_name(torch.bfloat16, "c1")]
        auto = scans["auto"].splits(kernels, "c1", xc, z)
        print(f"| {batch}, {tokens} | {blocks} / {wave} | " + " | ".join(cells) + f" | {'yes' if auto else 'no'} |",
              flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--tokens", default="140,1164")
    parser.add_argument("--sources", nargs="*", type=Path, default=[],
                        help="other scan_fwd.cu files (e.g. an earlier commit's) timed as builds of their own")
    args = parser.parse_args(argv)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)
    shapes = [(b, t) for t in map(int, args.tokens.split(",")) for b in map(int, args.batches.split(","))
              if b * t <= 256 * 1164]
    split_table(shapes)
    print()
    scans = {name: cuda_scan.CudaScan(threads, defines, split="on" if name.startswith("split") else "off")
             for name, (threads, defines) in VARIANTS.items()}
    scans.update({f"source {path.name}": cuda_scan.CudaScan(source=path, split="off") for path in args.sources})
    print("| build | kernel | " + " | ".join(f"batch {b}, {t} tokens" for b, t in shapes) + " |")
    print("| --- | --- |" + " --- |" * len(shapes))
    reference = {}
    for name, scan in scans.items():
        for variant in cuda_scan.VARIANTS[torch.bfloat16]:
            cells = []
            for batch, tokens in shapes:
                xc, z, dbl, tables = inputs(batch, tokens)
                try:
                    kernels = scan.kernels(xc.device, 16)
                except cuda_scan.CudaScanUnavailable as error:
                    cells.append(f"failed: {str(error)[:80]}")
                    continue
                kernels.choice[(xc.dtype, batch, tokens, 768)] = variant
                try:
                    out = scan.forward(xc, z, dbl, tables)
                    ms = median_ms(lambda: scan.forward(xc, z, dbl, tables))
                except cuda_scan.CudaScanUnavailable as error:
                    cells.append(f"failed: {error}")
                    continue
                ref = reference.setdefault((batch, tokens), out.float())
                diff = (out.float() - ref).abs().max().item()
                cells.append(f"{ms:.3f} ms (max diff {diff:.1e})")
            print(f"| {name} | {variant} | " + " | ".join(cells) + " |", flush=True)
    xc, z, dbl, tables = inputs(256, 140)
    triton_ms = median_ms(lambda: triton_scan.scan_forward(xc, z, dbl, tables))
    print(f"\nTriton forward scan, batch 256, 140 tokens: {triton_ms:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
