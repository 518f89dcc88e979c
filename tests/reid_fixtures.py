"""Shared fixtures for the ReID data / training / evaluation tests (import them into a test module).

The data is generated (reidcam.reid.data.synthetic): no real ReID benchmark exists on these machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidcam.reid.data.synthetic import write_synthetic_market

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_RECIPE = REPO_ROOT / "configs" / "reid" / "smoke.yaml"
# Shrinks the smoke recipe's model further so a training iteration takes ~0.1 s on one core.
FAST_OVERRIDES = ["model.img_size=[64,32]", "model.options.dim=48", "model.options.depth=3"]
# Subprocesses: one BLAS/OpenMP thread (tiny tensors; threads only add contention on 2 cores).
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def touch_images(folder: Path, names: list[str]) -> None:
    """Empty files with image names: enough for layout parsing, which never opens them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


@pytest.fixture(scope="session")
def synthetic_market(tmp_path_factory) -> Path:
    """8 training ids x 4 images, 6 test ids, 3 cameras, 128x64 images, Market layout."""
    return write_synthetic_market(tmp_path_factory.mktemp("reid") / "market", seed=0)


def reidcam_command(*args: str) -> list[str]:
    """The real CLI entry point (``python -m reidcam``), with this interpreter."""
    return [sys.executable, "-m", "reidcam", *args]


def run_subprocess(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **SUBPROCESS_ENV}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)

