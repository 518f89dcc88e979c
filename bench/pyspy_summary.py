"""Where a run's threads spend their time, from py-spy's raw stacks (``py-spy record --format raw --threads``).

    python bench/pyspy_summary.py pyspy.txt [--top 40]

Prints the samples per thread, then for the busiest thread that runs the pipeline's steps (the main thread
of ``reidcam run`` inside ``MultiCameraPipeline.run``, so not the setup): each function's inclusive share
(the samples with it anywhere on the stack) and its self share (the samples with it on top), line numbers
merged.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

LINE_NUMBER = re.compile(r":\d+\)$")
PIPELINE_MARK = "MultiCameraPipeline.run"


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append(([LINE_NUMBER.sub(")", f) for f in frames.split(";")], int(count)))
    return stacks


def thread_of(frames: list[str]) -> str:
    """The thread element of a stack (py-spy puts the process, then the thread, at its root)."""
    return next((f for f in frames[:3] if f.startswith("thread")), frames[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    stacks = parse(args.raw)
    per_thread: Counter[str] = Counter()
    pipeline_threads: Counter[str] = Counter()
    for frames, count in stacks:
        per_thread[thread_of(frames)] += count
        if any(PIPELINE_MARK in f for f in frames):
            pipeline_threads[thread_of(frames)] += count
    print("samples per thread:")
    for thread, count in per_thread.most_common(12):
        print(f"  {count:8d}  {thread}")
    if not pipeline_threads:
        print(f"no stack contains {PIPELINE_MARK}")
        return
    main_thread = pipeline_threads.most_common(1)[0][0]
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        if thread_of(frames) != main_thread or not any(PIPELINE_MARK in f for f in frames):
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
    print(f"\npipeline thread {main_thread}: {total} samples inside {PIPELINE_MARK}")
    print("\ninclusive:")
    for frame, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print("\nself:")
    for frame, count in leaf.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {frame}")


if __name__ == "__main__":
    main()
