"""Where ReIDMamba's GPU time goes: a torch.profiler table of the kernels of one forward and one training step.

    PYTHONPATH=. REIDCAM_SCAN=triton python bench/profile_model.py --out "$OUT"

ReIDMamba-S, 256x128 s16, bf16 autocast; inference at batch 256, a bare training step (forward,
cross-entropy on 751 classes, backward) and the trainer's step (camera embedding, the ReIDMamba loss,
gradient clipping) at batch 64, each profiled after warm-up. Prints, per
phase, the kernels sorted by GPU time (total, calls, mean) and the number of kernel launches,
and writes the tables to OUT/profile.txt. The scan backend comes from REIDCAM_SCAN.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from reidcam.reid.losses.reidmamba_loss import ReIDMambaLoss
from reidcam.reid.model import build_model

STARTED = time.perf_counter()


def inference(model, images):
    with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16):
        model(images)


def train_step(model, images, labels, optimizer):
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        output = model(images)
        loss = sum(F.cross_entropy(logits.float(), labels) for logits in output.logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def trainer_step(model, images, labels, camids, optimizer, criterion):
    """The step of reidcam's trainer (engine/train.py) at bf16: camera embedding, the ReIDMamba loss
    (triplet, ID, RATR over the branches) and gradient clipping on top of the bare step."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        output = model(images, camids)
    losses = criterion(output.features, output.logits, labels)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()


def autotuning_report() -> str:
    """What the scan autotuner measured for each tile config (ms), and what it chose, this process."""
    if not torch.cuda.is_available():
        return ""
    from reidcam.reid.model.kernels import triton_scan

    lines = ["## scan autotuning (ms per call of each tile config: BLOCK_T, BLOCK_D, warps)", ""]
    for name, tuner in (("forward", triton_scan._scan_fwd_tuned), ("backward", triton_scan._scan_bwd_tuned)):
        timings = getattr(tuner, "configs_timings", None) or {}
        for config, ms in timings.items():
            blocks = (config.kwargs.get("BLOCK_T"), config.kwargs.get("BLOCK_D"), config.num_warps)
            chosen = " (chosen)" if config in tuner.cache.values() else ""
            lines.append(f"- {name} {blocks}: {ms}{chosen}")
    return "\n".join(lines) + "\n"


def stage(text: str) -> None:
    """A timestamped line at once, so that a run cut short shows where it was."""
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {text}", file=sys.stderr, flush=True)


def _origin(event) -> str:
    """Where a CPU op ran from: its autograd node (a backward's) or else its outermost op, and its parent."""
    chain, parent = [], event.cpu_parent
    while parent is not None:
        chain.append(parent.name)
        parent = parent.cpu_parent
    node = next((n.split(": ", 1)[1] for n in chain if n.startswith("autograd::engine::evaluate_function")), None)
    outer = chain[-1] if chain else "-"
    return f"{node or outer} < {chain[0] if chain else '-'}"


def kernels_by_op(prof, repeats: int, rows: int, skip: tuple[str, ...] = ("bimamba", "nvjet")) -> str:
    """The GPU time of the kernels each (op, input shapes, origin) launched, for the kernels whose names hold
    none of ``skip``: which line of the model or its backward makes each small kernel (--by-op)."""
    groups: dict[tuple[str, str, str], list] = {}
    for event in prof.events():
        kernels = [k for k in getattr(event, "kernels", []) if not any(s in k.name for s in skip)]
        if not kernels:
            continue
        key = (event.name, str(event.input_shapes)[:70], _origin(event)[:110])
        entry = groups.setdefault(key, [0, 0.0, kernels[0].name[:50]])
        entry[0] += len(kernels)
        entry[1] += sum(k.duration for k in kernels)
    ordered = sorted(groups.items(), key=lambda item: item[1][1], reverse=True)
    lines = ["", f"### the small kernels by the op that launched them (names without {', '.join(skip)})", "",
             "| op | input shapes | origin | kernels per run | us per run | first kernel |", "|---|---|---|---|---|---|"]
    for (op, shapes, origin), (count, total, kernel) in ordered[:rows]:
        lines.append(f"| {op} | {shapes} | {origin} | {count / repeats:.0f} | {total / repeats:.0f} | {kernel} |")
    return "\n".join(lines) + "\n"


def profile_phase(name: str, run, repeats: int, rows: int, device: torch.device, by_op: bool = False) -> str:
    stage(f"{name}: warm-up (the first call compiles the Triton kernels)")
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    for _ in range(3):
        run()
    sync()
    stage(f"{name}: profiling {repeats} runs")
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    wall_ms = (time.perf_counter() - started) / repeats * 1e3
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU] if on_gpu else [ProfilerActivity.CPU],
                 record_shapes=by_op) as prof:
        for _ in range(repeats):
            run()
        sync()
    stage(f"{name}: summarising")
    wanted = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU

    def spent(event) -> float:  # GPU time of a kernel, or own CPU time of an op on the CPU
        return event.device_time_total if on_gpu else event.self_cpu_time_total

    events = [e for e in prof.key_averages() if e.device_type == wanted]
    events.sort(key=spent, reverse=True)
    total_us = sum(spent(e) for e in events)
    launches = sum(e.count for e in events)
    lines = [f"## {name}: {wall_ms:.1f} ms wall per run unprofiled, {total_us / repeats / 1e3:.1f} ms of "
             f"{'GPU' if on_gpu else 'CPU'} time per run, {launches / repeats:.0f} {'kernels' if on_gpu else 'ops'} per run",
             "",
             "| kernel | ms per run | share | calls per run | us per call |", "|---|---|---|---|---|"]
    for event in events[:rows]:
        lines.append(f"| {event.key[:90]} | {spent(event) / repeats / 1e3:.2f} | {spent(event) / total_us:.1%} "
                     f"| {event.count / repeats:.0f} | {spent(event) / event.count:.1f} |")
    return "\n".join(lines) + "\n" + (kernels_by_op(prof, repeats, rows) if by_op and on_gpu else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--model", default="reidmamba_small")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--by-op", action="store_true",
                        help="also the training step's small kernels grouped by the op and shapes that launched them")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: checks the script, not the GPU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.manual_seed(0)
    options = dict(depth=4, img_size=(64, 32)) if args.smoke else {}
    model = build_model(args.model, num_classes=751, **options).to(device)
    batch, train_batch = (4, 2) if args.smoke else (256, 64)
    images = torch.randn(batch, 3, *model.config.img_size, device=device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    header = (f"# {args.model} on {where}, scan backend "
              f"{os.environ.get('REIDCAM_SCAN', 'auto')}, torch {torch.__version__}\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    report = header

    def add_phase(name: str, run, repeats: int, by_op: bool = False) -> None:
        """Profile one phase and rewrite OUT/profile.txt, so a run cut short keeps the phases done."""
        nonlocal report
        report += profile_phase(name, run, repeats, args.rows, device, by_op) + "\n"
        (args.out / "profile.txt").write_text(report)

    model.eval()
    add_phase(f"inference, batch {batch}", lambda: inference(model, images), 3)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    labels = torch.randint(0, 751, (train_batch,), device=device)
    add_phase(f"training step, batch {train_batch}", lambda: train_step(model, images[:train_batch], labels, optimizer), 2,
              args.by_op)
    # P x K labels as the trainer's sampler draws them (16 identities x 4 images)
    pk_labels = torch.arange(train_batch, device=device) // 4
    camids = torch.arange(train_batch, device=device) % 6
    camera_model = build_model(args.model, num_classes=751, num_cameras=6, **options).to(device).train()
    camera_optimizer = torch.optim.SGD(camera_model.parameters(), lr=1e-3, momentum=0.9)
    criterion = ReIDMambaLoss()
    add_phase(f"trainer's step (camera embedding, ReIDMamba loss, clipping), batch {train_batch}",
              lambda: trainer_step(camera_model, images[:train_batch], pk_labels, camids, camera_optimizer, criterion), 2)
    report += autotuning_report()
    (args.out / "profile.txt").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
