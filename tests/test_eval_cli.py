"""`reidcam eval`: checkpoint in, metrics out (table or JSON), camera mapping, errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from reid_fixtures import synthetic_market  # noqa: F401

from reidcam.reid.data import load_dataset
from reidcam.reid.engine.evaluate import camera_map_for, evaluate_checkpoint
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import save_reid_checkpoint

METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny model for the synthetic set's 3 cameras (labels 1, 2, 3)."""
    model = build_model("reidmamba_tiny", num_classes=8, num_cameras=3, img_size=(64, 32), dim=48, depth=3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_reid_checkpoint(path, model, extra={"dataset": "market", "num_cameras": 3, "camera_labels": [1, 2, 3]})
    return path


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from reidcam.app.cli import main

    monkeypatch.setattr(sys, "argv", ["reidcam", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    captured = capsys.readouterr()
    return caught.value.code, captured.out, captured.err


def test_json_output(tiny_checkpoint, synthetic_market, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "eval", "--weights", str(tiny_checkpoint),
                            "--data-root", str(synthetic_market), "--json", "--device", "cpu")
    assert code == 0
    result = json.loads(out)
    assert set(result) == {*METRICS, "num_query", "num_gallery"}
    assert all(0 <= result[key] <= 100 for key in METRICS)
    assert result["rank1"] <= result["rank5"] <= result["rank10"]


def test_table_output(tiny_checkpoint, synthetic_market, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "eval", "--weights", str(tiny_checkpoint),
                            "--data-root", str(synthetic_market), "--no-flip", "--rerank", "--device", "cpu")
    assert code == 0
    assert all(key in out for key in METRICS) and "re-ranked" in out


def test_result_does_not_depend_on_batch_size(tiny_checkpoint, synthetic_market):
    plain = evaluate_checkpoint(tiny_checkpoint, synthetic_market, flip=False, device="cpu", batch_size=7)
    flipped = evaluate_checkpoint(tiny_checkpoint, synthetic_market, flip=True, device="cpu")
    assert (plain["num_query"], plain["num_gallery"]) == (flipped["num_query"], flipped["num_gallery"]) == (6, 20)
    again = evaluate_checkpoint(tiny_checkpoint, synthetic_market, flip=False, device="cpu", batch_size=32)
    assert again == pytest.approx(plain)  # batch size does not change the result


def test_missing_weights_exit_2(synthetic_market, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "eval", "--weights", str(tmp_path / "none.pt"),
                            "--data-root", str(synthetic_market))
    assert code == 2 and err.strip().count("\n") == 0 and "none.pt" in err


def test_missing_dataset_exit_2(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "eval", "--weights", str(tiny_checkpoint),
                            "--data-root", str(tmp_path / "gone"), "--dataset", "dukemtmc")
    assert code == 2 and err.startswith("reidcam: error: dukemtmc: dataset folder") and err.count("\n") == 1


def test_camera_mapping_keeps_training_indices_and_marks_unseen_cameras(synthetic_market):
    data = load_dataset("market", synthetic_market)  # cameras 1, 2, 3
    np.testing.assert_array_equal(camera_map_for(data, [0, 1, 2, 3], 4), [1, 2, 3])
    np.testing.assert_array_equal(camera_map_for(data, [2, 3], 2), [-1, 0, 1])
    np.testing.assert_array_equal(camera_map_for(data, None, 2), [0, 1, -1])


def as_msmt17_release(market_root, target):
    """The synthetic Market-layout set rewritten in MSMT17's original layout (list files + folders)."""
    import shutil

    data = load_dataset("market", market_root)
    lists = {"list_train.txt": [], "list_val.txt": [], "list_query.txt": [], "list_gallery.txt": []}
    splits = (("train", data.train, "list_train.txt"), ("test", data.query, "list_query.txt"),
              ("test", data.gallery, "list_gallery.txt"))
    for folder, samples, list_name in splits:
        for index, sample in enumerate(samples):
            if folder == "test" and sample.pid == 0:
                continue  # MSMT17 has no distractor ids
            camera = data.cameras[sample.camid]
            relative = f"{sample.pid:04d}/{sample.pid:04d}_{index:03d}_{camera:02d}_0303morning_0001_0.jpg"
            (target / folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(sample.path, target / folder / relative)
            name = "list_val.txt" if list_name == "list_train.txt" and index % 4 == 0 else list_name
            lists[name].append(f"{relative} {sample.pid}")
    for name, lines in lists.items():
        (target / name).write_text("\n".join(lines) + "\n")
    return target


def test_default_dataset_falls_back_to_the_checkpoints_layout(synthetic_market, tmp_path):
    root = as_msmt17_release(synthetic_market, tmp_path / "MSMT17_V1")
    model = build_model("reidmamba_tiny", num_classes=8, num_cameras=3, img_size=(64, 32), dim=48, depth=3)
    checkpoint = tmp_path / "msmt.pt"
    save_reid_checkpoint(checkpoint, model, extra={"dataset": "msmt17", "num_cameras": 3, "camera_labels": [1, 2, 3]})
    result = evaluate_checkpoint(checkpoint, root, device="cpu")
    assert (result["num_query"], result["num_gallery"]) == (6, 18)
    assert load_dataset("msmt17", root).num_train_pids == 8
