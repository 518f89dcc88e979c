"""mamba-ssm ("cuda") against pure-PyTorch ("torch") selective-scan backends on ReIDMamba-S.

    PYTHONPATH=. python bench/gpu_parity.py            # an H100 with mamba-ssm + causal-conv1d built
    PYTHONPATH=. python bench/gpu_parity.py --smoke    # CPU check: tiny model, batch 2, "naive" for "cuda"

1. Parity, float32 (TF32 off): forward output (features and logits) and the gradients of every
   parameter and of the input, candidate backend against the baseline; the worst relative error
   ||a - b|| / ||b|| must stay below 1e-3.
2. Training step, bf16 autocast, train mode, batch 64, 256x128 stride 16, 751 classes: forward +
   backward of a CE + feature-norm dummy loss; median of 20 timed steps (CUDA events) after
   warm-up, and peak memory (torch.cuda.max_memory_allocated).
3. Inference, bf16 autocast, eval mode, batch 256: images per second (median of 20).

Prints a markdown table at the end and writes it to $OUT/parity.md when $OUT is set. Needs only
torch (and mamba-ssm for the "cuda" backend); exits 1 if the parity check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from reidcam.reid.model import ReIDMamba, build_model
from reidcam.reid.model.scan import available_backends

PARITY_TARGET = 1e-3


@dataclass
class Settings:
    model: str
    overrides: dict
    device: torch.device
    parity_batch: int
    train_batch: int
    infer_batch: int
    warmup: int
    iters: int
    num_classes: int = 751
    num_cameras: int = 6


@dataclass
class Row:
    backend: str
    train_ms: float | None = None
    train_peak_gib: float | None = None
    infer_images_per_s: float | None = None
    infer_peak_gib: float | None = None
    notes: list[str] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, batch 2, few iterations")
    parser.add_argument(
        "--candidate", default=None, help="backend checked against the baseline (default cuda; smoke: naive)"
    )
    parser.add_argument("--baseline", default="torch")
    parser.add_argument("--extra-backends", default="", help="comma list timed too, e.g. triton")
    parser.add_argument("--img-size", default="256x128")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--iters", type=int, default=None)
    return parser.parse_args()


def settings_from(args: argparse.Namespace) -> Settings:
    height, width = (int(v) for v in args.img_size.lower().split("x"))
    if args.smoke:
        return Settings(
            model="reidmamba_tiny", overrides=dict(img_size=(128, 64), stride=args.stride, depth=4),
            device=torch.device("cpu"), parity_batch=2, train_batch=2, infer_batch=2, warmup=1, iters=args.iters or 2,
        )
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke on a CPU")
    return Settings(
        model="reidmamba_small", overrides=dict(img_size=(height, width), stride=args.stride),
        device=torch.device("cuda"), parity_batch=8, train_batch=64, infer_batch=256, warmup=5, iters=args.iters or 20,
    )


def make_model(s: Settings, seed: int = 0, **overrides) -> ReIDMamba:
    torch.manual_seed(seed)
    options = {**s.overrides, **overrides}
    return build_model(s.model, num_classes=s.num_classes, num_cameras=s.num_cameras, **options).to(s.device)


def fixed_inputs(s: Settings, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    height, width = s.overrides["img_size"]
    images = torch.randn(batch, 3, height, width, generator=gen)
    camids = torch.randint(0, s.num_cameras, (batch,), generator=gen)
    return images.to(s.device), camids.to(s.device)


# --------------------------------------------------------------------------------------------
# 1. parity
# --------------------------------------------------------------------------------------------


def outputs_and_grads(
    model: ReIDMamba, backend: str, images: torch.Tensor, camids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Features, logits and the gradients of a fixed random projection of them, all in float32."""
    model.set_scan_backend(backend)
    model.zero_grad(set_to_none=True)
    images = images.detach().clone().requires_grad_(True)
    out = model(images, camids)
    gen = torch.Generator().manual_seed(2)
    loss = images.new_zeros(())
    results: dict[str, torch.Tensor] = {}
    for b, (feature, logits) in enumerate(zip(out.features, out.logits)):
        results[f"out.features.{b}"] = feature.detach().float()
        results[f"out.logits.{b}"] = logits.detach().float()
        loss = loss + (feature * torch.randn(feature.shape, generator=gen).to(feature.device)).sum()
        loss = loss + (logits * torch.randn(logits.shape, generator=gen).to(logits.device)).sum()
    loss.backward()
    results["grad.input"] = images.grad.detach().float()
    for name, param in model.named_parameters():
        if param.grad is not None:
            results[f"grad.{name}"] = param.grad.detach().float().clone()
    return results


def parity(s: Settings, candidate: str, baseline: str) -> tuple[float, list[tuple[str, float]]]:
    """Worst relative error of candidate vs baseline over outputs and gradients, and the 5 worst tensors."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = make_model(s, drop_path=0.0).train()
        images, camids = fixed_inputs(s, s.parity_batch)
        want = outputs_and_grads(model, baseline, images, camids)
        got = outputs_and_grads(model, candidate, images, camids)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    missing = sorted(set(want) ^ set(got))
    if missing:
        raise RuntimeError(f"backends disagree on which tensors have gradients: {missing[:5]}")
    errors = {name: relative_error(got[name], want[name]) for name in want}
    worst = sorted(errors.items(), key=lambda item: item[1], reverse=True)[:5]
    return worst[0][1], worst


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------------------------
# 2., 3. speed and memory
# --------------------------------------------------------------------------------------------


def timed(s: Settings, step: Callable[[], None]) -> tuple[float, float | None]:
    """Median milliseconds of ``step`` after warm-up, and peak GiB allocated during the timed steps."""
    for _ in range(s.warmup):
        step()
    if s.device.type != "cuda":
        times = []
        for _ in range(s.iters):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(s.iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def autocast(s: Settings):
    return torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.device.type == "cuda")


def measure_training(s: Settings, backend: str) -> tuple[float, float | None]:
    model = make_model(s).train()
    model.set_scan_backend(backend)
    images, camids = fixed_inputs(s, s.train_batch)
    labels = torch.randint(0, s.num_classes, (s.train_batch,), generator=torch.Generator().manual_seed(3)).to(s.device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(s):
            out = model(images, camids)
            loss = sum(f.float().square().mean() for f in out.features)
            loss = loss + sum(F.cross_entropy(logits.float(), labels) for logits in out.logits)
        loss.backward()

    result = timed(s, step)
    del model
    return result


def measure_inference(s: Settings, backend: str) -> tuple[float, float | None]:
    model = make_model(s).eval()
    model.set_scan_backend(backend)
    images, camids = fixed_inputs(s, s.infer_batch)

    def step() -> None:
        with torch.inference_mode(), autocast(s):
            model(images, camids)

    milliseconds, peak = timed(s, step)
    del model
    return s.infer_batch / (milliseconds / 1000), peak


def measure(s: Settings, backend: str) -> Row:
    row = Row(backend)
    for label, fn in (("train", measure_training), ("inference", measure_inference)):
        try:
            value, peak = fn(s, backend)
        except torch.cuda.OutOfMemoryError:
            row.notes.append(f"{label}: out of memory")
            continue
        finally:
            if s.device.type == "cuda":
                torch.cuda.empty_cache()
        if label == "train":
            row.train_ms, row.train_peak_gib = value, peak
        else:
            row.infer_images_per_s, row.infer_peak_gib = value, peak
    return row


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(s: Settings, rows: list[Row], parity_line: str, worst: list[tuple[str, float]]) -> str:
    device = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else platform.processor() or "CPU"
    height, width = s.overrides["img_size"]
    lines = [
        f"## Selective-scan backends on {s.model} ({height}x{width}, stride {s.overrides['stride']})",
        "",
        f"Device: {device}; torch {torch.__version__}; {mamba_versions()}.",
        "",
        parity_line,
        "",
        f"| backend | train step, ms (bf16, batch {s.train_batch}) | train peak GiB "
        f"| inference images/s (bf16, batch {s.infer_batch}) | inference peak GiB | notes |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.backend} | {fmt(row.train_ms, '.1f')} | {fmt(row.train_peak_gib, '.2f')} | "
            f"{fmt(row.infer_images_per_s, '.0f')} | {fmt(row.infer_peak_gib, '.2f')} | {'; '.join(row.notes)} |"
        )
    if worst:
        lines += ["", "Worst tensors of the parity check: " + ", ".join(f"{n} {e:.2e}" for n, e in worst)]
    return "\n".join(lines) + "\n"


def mamba_versions() -> str:
    try:
        import causal_conv1d
        import mamba_ssm
    except ImportError:
        return "mamba-ssm not importable"
    return f"mamba-ssm {mamba_ssm.__version__}, causal-conv1d {causal_conv1d.__version__}"


def main() -> int:
    args = parse_args()
    s = settings_from(args)
    candidate = args.candidate or ("naive" if args.smoke else "cuda")
    have = available_backends()
    print(f"backends available: {have}", flush=True)
    failed = False
    worst: list[tuple[str, float]] = []
    if candidate in have and args.baseline in have:
        max_error, worst = parity(s, candidate, args.baseline)
        failed = not max_error < PARITY_TARGET
        parity_line = (
            f"Parity ({candidate} vs {args.baseline}, fp32, batch {s.parity_batch}, outputs and all gradients): "
            f"max relative error {max_error:.2e} (target < {PARITY_TARGET:g}): {'FAIL' if failed else 'PASS'}."
        )
    else:
        parity_line = f"Parity skipped: backend {candidate!r} or {args.baseline!r} not available."
    print(parity_line, flush=True)
    backends = [candidate, args.baseline] + [b for b in args.extra_backends.split(",") if b]
    rows = []
    for backend in backends:
        if backend not in have:
            rows.append(Row(backend, notes=["not available"]))
            continue
        print(f"timing {backend} ...", flush=True)
        rows.append(measure(s, backend))
    table = report(s, rows, parity_line, worst)
    print(table)
    if os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "parity.md").write_text(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
