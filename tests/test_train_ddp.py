"""Training under torchrun on the CPU (gloo): one process equals a plain run (here, one thread
both); two processes finish and only rank 0 writes."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from reid_fixtures import FAST_OVERRIDES, SMOKE_RECIPE, run_subprocess, synthetic_market  # noqa: F401

from reidcam.reid.engine.train import train_from_recipe
from reidcam.reid.model.checkpoint import load_reid_checkpoint

pytestmark = pytest.mark.slow


def train_args(data_root, output) -> list[str]:
    return ["train", "--config", str(SMOKE_RECIPE), "--data-root", str(data_root), "--output", str(output),
            "--device", "cpu", "--epochs", "1", *FAST_OVERRIDES, "train.max_iters_per_epoch=3"]


def torchrun(processes: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "reidcam", *args]


def test_one_process_torchrun_equals_plain_run(synthetic_market, tmp_path):
    train_from_recipe(SMOKE_RECIPE, synthetic_market, tmp_path / "plain", epochs=1, device="cpu",
                      overrides=[*FAST_OVERRIDES, "train.max_iters_per_epoch=3"])
    distributed = run_subprocess(torchrun(1, *train_args(synthetic_market, tmp_path / "ddp")))
    assert distributed.returncode == 0, distributed.stderr[-2000:]
    assert "rank 0/1" in distributed.stderr

    plain_model, _ = load_reid_checkpoint(tmp_path / "plain" / "last.pt")
    ddp_model, _ = load_reid_checkpoint(tmp_path / "ddp" / "last.pt")
    for (name, a), (_, b) in zip(plain_model.state_dict().items(), ddp_model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    plain_log = json.loads((tmp_path / "plain" / "log.jsonl").read_text())
    ddp_log = json.loads((tmp_path / "ddp" / "log.jsonl").read_text())
    assert plain_log["loss"] == pytest.approx(ddp_log["loss"], rel=1e-6)


def test_two_process_gloo_run_completes(synthetic_market, tmp_path):
    output = tmp_path / "ddp2"
    result = run_subprocess(torchrun(2, *train_args(synthetic_market, output)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1/2" in result.stderr
    log = (output / "log.jsonl").read_text().splitlines()
    assert len(log) == 1  # only rank 0 writes
    assert json.loads(log[0])["images_per_s"] > 0
    assert (output / "last.pt").is_file() and (output / "metrics.json").is_file()
