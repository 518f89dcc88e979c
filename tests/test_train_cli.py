"""`reidcam train` then `reidcam eval` through the real command line, and its error handling."""

from __future__ import annotations

import json
import sys

import pytest
from reid_fixtures import FAST_OVERRIDES, SMOKE_RECIPE, reidcam_command, run_subprocess, synthetic_market  # noqa: F401

METRIC_KEYS = {"mAP", "rank1", "rank5", "rank10", "mINP", "num_query", "num_gallery"}


@pytest.mark.slow
def test_train_then_eval_end_to_end(synthetic_market, tmp_path):
    output = tmp_path / "out"
    trained = run_subprocess(reidcam_command(
        "train", "--config", str(SMOKE_RECIPE), "--data-root", str(synthetic_market), "--output", str(output),
        "--device", "cpu", *FAST_OVERRIDES,
    ))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert {"last.pt", "metrics.json", "log.jsonl", "train_state.pt"} <= {p.name for p in output.iterdir()}
    assert METRIC_KEYS <= set(json.loads((output / "metrics.json").read_text()))

    evaluated = run_subprocess(reidcam_command(
        "eval", "--weights", str(output / "last.pt"), "--data-root", str(synthetic_market), "--json", "--device", "cpu",
    ))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    lines = evaluated.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == METRIC_KEYS
    assert (result["num_query"], result["num_gallery"]) == (6, 20)
    assert all(0.0 <= result[key] <= 100.0 for key in ("mAP", "rank1", "rank5", "rank10", "mINP"))
    final = json.loads((output / "metrics.json").read_text())
    assert result["mAP"] == pytest.approx(final["mAP"], abs=1e-3)  # same weights, same flip setting


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The console entry point in this process (the subprocess test above covers the real spawn)."""
    from reidcam.app.cli import main

    monkeypatch.setattr(sys, "argv", ["reidcam", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code, capsys.readouterr().err


def test_missing_dataset_folder_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, "train", "--config", str(SMOKE_RECIPE),
                            "--data-root", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reidcam: error: market: dataset folder")
    assert not (tmp_path / "o").exists()


def test_unknown_override_exits_2(synthetic_market, tmp_path, monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, "train", "--config", str(SMOKE_RECIPE),
                            "--data-root", str(synthetic_market), "--output", str(tmp_path / "o"), "optim.lrate=0.1")
    assert code == 2
    assert stderr.strip() == "reidcam: error: override 'optim.lrate=0.1': unknown key 'optim.lrate'"


def test_unknown_recipe_exits_2(tmp_path, monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, "train", "--config", str(tmp_path / "none.yaml"),
                            "--data-root", str(tmp_path), "--output", str(tmp_path / "o"))
    assert code == 2 and "none.yaml does not exist" in stderr
