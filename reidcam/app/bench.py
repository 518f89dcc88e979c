"""``reidcam bench``: the main job on the user's cameras, timed stage by stage on their machine.

Runs ``reidcam run`` on the given cams.yaml into a scratch folder (nothing of the user's output or
database is touched) and reports, per stage, wall seconds, process CPU seconds, the items handled
(frames; crops for the ReID stage) and the rates, then end to end. Decoding runs in the reader
threads, in parallel with the other stages. Detection and tracking run in a background thread
when ``detector.overlap`` is on (off by default), overlapping the stages after them, which
run one after the other; the table then says that stage times add up to more than the wall time.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reidcam.app.pipeline import RunSummary

STAGE_UNITS = {
    "decode": "frames",
    "detect": "frames",
    "track": "frames",
    "reid": "crops",
    "associate": "frames",
    "store": "frames",
}


@dataclass(frozen=True)
class PipelineTiming:
    """What one timed run gives: the run's summary, process CPU seconds, and the machine it ran on."""

    summary: RunSummary
    cpu_seconds: float
    device: str
    machine: str


def machine_description(device: str) -> str:
    processor = platform.processor() or platform.machine()
    text = f"{processor}, {os.cpu_count()} cores"
    if device.startswith("cuda"):
        import torch

        text += f", {torch.cuda.get_device_name()}"
    return text


def time_pipeline(sources: Path, device: str = "auto", max_frames: int | None = None) -> PipelineTiming:
    """Runs the main job on ``sources`` into a temporary folder and database (whatever cams.yaml's
    ``out`` and ``storage.db`` say) and returns its timings."""
    from reidcam.app.run import run_from_config
    from reidcam.devices import resolve_device

    resolved = str(resolve_device(device))
    with tempfile.TemporaryDirectory(prefix="reidcam-bench-") as scratch:
        cpu_started = time.process_time()
        summary = run_from_config(
            Path(sources), db_url=str(Path(scratch) / "bench.db"), out_dir=Path(scratch), device=resolved,
            max_frames=max_frames, show_progress=False,
        )
        cpu_seconds = time.process_time() - cpu_started
    return PipelineTiming(summary, cpu_seconds, resolved, machine_description(resolved))


def _rate(items: int, seconds: float) -> str:
    return f"{items / seconds:10.1f}" if seconds > 0 else f"{'-':>10}"


def format_stage_table(summary: RunSummary, cpu_seconds: float) -> str:
    """A plain-text table: one row per stage, then end to end, then cameras and identities."""
    lines = [f"{'stage':<10} {'wall s':>8} {'cpu s':>8} {'items':>7} {'unit':<7} {'/s wall':>10} {'/s cpu':>10}"]
    for stage, unit in STAGE_UNITS.items():
        entry = summary.stages.get(stage)
        if entry is None:
            continue
        lines.append(
            f"{stage:<10} {entry.seconds:8.2f} {entry.cpu_seconds:8.2f} {entry.items:7d} {unit:<7} "
            f"{_rate(entry.items, entry.seconds)} {_rate(entry.items, entry.cpu_seconds)}"
        )
    frames = summary.total_frames
    lines.append(
        f"{'end-to-end':<10} {summary.wall_seconds:8.2f} {cpu_seconds:8.2f} {frames:7d} {'frames':<7} "
        f"{_rate(frames, summary.wall_seconds)} {_rate(frames, cpu_seconds)}"
    )
    if summary.late_rate is not None:
        lines.append(f"{'2nd half':<10} {'':>8} {'':>8} {'':>7} {'frames':<7} {summary.late_rate:10.1f}"
                     "   (steps of the run's second half: no first-use compilation)")
    if summary.steps:
        lines.append(f"steps: {summary.steps}, {frames / summary.steps:.1f} frames each (a step batches the frames "
                     "the cameras have at one moment: cameras whose clocks do not overlap batch nothing)")
    per_camera = ", ".join(f"{camera} {count}" for camera, count in summary.frames.items())
    lines.append(f"cameras: {per_camera}; tracklets {summary.tracklets}; identities {summary.identities}")
    lines.append(overlap_note(summary))
    return "\n".join(lines)


def overlap_note(summary: RunSummary) -> str:
    """Says whether detect and track overlapped the other stages, and what that does to the stage times."""
    if not summary.overlap:
        return "overlap off: the stages run one after the other (decode beside them, in the reader threads)"
    return (
        "overlap on: detect and track ran in a background thread beside the later stages, so stage times add up "
        "to more than the wall time, and a stage's CPU seconds include the other thread's"
    )


def bench_cli(sources: Path, device: str, max_frames: int | None) -> str:
    """The report ``reidcam bench`` prints."""
    timing = time_pipeline(sources, device=device, max_frames=max_frames)
    header = f"reidcam pipeline on {timing.machine}, device {timing.device}, {len(timing.summary.frames)} cameras"
    return header + "\n" + format_stage_table(timing.summary, timing.cpu_seconds)
