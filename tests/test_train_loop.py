"""The training loop on generated Market-layout data: loss falls, outputs are written, resume works."""

from __future__ import annotations

import json

import pytest
import torch
from reid_fixtures import FAST_OVERRIDES, SMOKE_RECIPE, synthetic_market  # noqa: F401

from reidcam.errors import DataError, ReidcamError
from reidcam.reid.engine.train import initialise_from_checkpoint, train_from_recipe
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import load_reid_checkpoint


def read_log(output):
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_are_written(synthetic_market, tmp_path):
    output = tmp_path / "run"
    metrics = train_from_recipe(
        SMOKE_RECIPE, synthetic_market, output, epochs=4, device="cpu",
        overrides=[*FAST_OVERRIDES, "train.max_iters_per_epoch=4", "train.eval_every=0", "train.checkpoint_every=2"],
    )
    log = read_log(output)
    assert [entry["epoch"] for entry in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert all(2 <= entry["iterations"] <= 4 and entry["images_per_s"] > 0 for entry in log)
    assert set(log[0]) >= {"lr", "loss", "triplet", "id", "ratr_intra", "ratr_inter", "seconds"}
    assert "eval" in log[-1] and "eval" not in log[0]

    written = json.loads((output / "metrics.json").read_text())
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert 0.0 <= written[key] <= 100.0 and written[key] == pytest.approx(metrics[key])
    assert written["num_query"] == 6 and written["num_gallery"] == 20
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))
    assert (output / "recipe.yaml").is_file()

    model, extra = load_reid_checkpoint(output / "last.pt")
    assert extra["dataset"] == "market" and extra["num_cameras"] == 3 and extra["epoch"] == 4
    assert extra["recipe"]["model"]["img_size"] == [64, 32]
    assert model.config.num_classes == 8 and model.config.num_cameras == 3


def test_resume_gives_the_same_weights_as_one_run(synthetic_market, tmp_path):
    overrides = [*FAST_OVERRIDES, "train.max_iters_per_epoch=2", "train.eval_every=0"]
    train_from_recipe(SMOKE_RECIPE, synthetic_market, tmp_path / "straight", epochs=2, device="cpu",
                      overrides=overrides)
    train_from_recipe(SMOKE_RECIPE, synthetic_market, tmp_path / "resumed", epochs=1, device="cpu",
                      overrides=overrides)
    train_from_recipe(SMOKE_RECIPE, synthetic_market, tmp_path / "resumed", epochs=2, device="cpu",
                      resume=True, overrides=overrides)
    straight, _ = load_reid_checkpoint(tmp_path / "straight" / "last.pt")
    resumed, extra = load_reid_checkpoint(tmp_path / "resumed" / "last.pt")
    assert extra["epoch"] == 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert [e["epoch"] for e in read_log(tmp_path / "resumed")] == [1, 2]


def test_resume_without_a_previous_run(synthetic_market, tmp_path):
    with pytest.raises(ReidcamError, match="--resume"):
        train_from_recipe(SMOKE_RECIPE, synthetic_market, tmp_path / "new", device="cpu", resume=True,
                          overrides=FAST_OVERRIDES)


def test_missing_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        train_from_recipe(SMOKE_RECIPE, tmp_path / "absent", tmp_path / "out", device="cpu")


def test_fine_tuning_start_keeps_backbone_and_drops_classifier(tmp_path):
    from reidcam.reid.model.checkpoint import save_reid_checkpoint

    source = build_model("reidmamba_tiny", num_classes=5, num_cameras=2, img_size=(64, 32), dim=48, depth=3)
    save_reid_checkpoint(tmp_path / "source.pt", source)
    target = build_model("reidmamba_tiny", num_classes=5, num_cameras=4, img_size=(64, 32), dim=48, depth=3)
    classifier_before = target.branches[0].classifier.weight.clone()
    skipped = initialise_from_checkpoint(target, tmp_path / "source.pt")
    torch.testing.assert_close(target.pos_embed, source.pos_embed)
    torch.testing.assert_close(target.layers[0].mixer.A_log, source.layers[0].mixer.A_log)
    torch.testing.assert_close(target.branches[0].classifier.weight, classifier_before)
    assert "sie_embed" in skipped
