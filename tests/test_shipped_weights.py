"""The ReID weights reidcam ships (reidcam/weights/reidmamba_default.pt) and how the pipeline picks them."""

from __future__ import annotations

import torch

from reidcam.app.config import ReidConfig
from reidcam.app.pipeline import create_embedder
from reidcam.reid.engine.train import initialise_from_checkpoint
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import load_reid_checkpoint
from reidcam.weights import DEFAULT_REID_MODEL, DEFAULT_REID_WEIGHTS


def shipped():
    model, extra = load_reid_checkpoint(DEFAULT_REID_WEIGHTS)
    return model, extra


def test_shipped_weights_are_small_complete_and_documented():
    assert DEFAULT_REID_WEIGHTS.is_file()
    assert DEFAULT_REID_WEIGHTS.stat().st_size <= 20 * 10**6
    assert (DEFAULT_REID_WEIGHTS.parent / "MODEL_CARD.md").is_file()
    model, extra = shipped()
    assert model.config.name == DEFAULT_REID_MODEL
    assert model.config.num_classes == 0 and model.config.num_cameras == 0
    assert extra["held_out_metrics"]["mAP"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_pipeline_embeds_with_the_shipped_weights_by_default_and_only_for_their_model():
    reference, _ = shipped()
    default = create_embedder(ReidConfig(), device="cpu")
    assert default.img_size == reference.config.img_size
    for (name, mine), (_, theirs) in zip(default.model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(mine.cpu(), theirs), name
    other = create_embedder(ReidConfig(model="reidmamba_small"), device="cpu")
    assert other.model.config.name == "reidmamba_small"


def test_fine_tuning_starts_from_every_shipped_tensor():
    reference, _ = shipped()
    config = reference.config
    model = build_model(config.name, num_classes=5, num_cameras=2, img_size=config.img_size)
    skipped = initialise_from_checkpoint(model, DEFAULT_REID_WEIGHTS)
    assert skipped == []
    target = model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(target[name], tensor), name


def test_the_mined_recipe_fine_tunes_from_the_shipped_weights(tmp_path):
    from pathlib import Path

    from reidcam.reid.engine.config import load_recipe
    from reidcam.reid.engine.train import build_training_model

    recipe = load_recipe(Path(__file__).parents[1] / "configs" / "reid" / "mined.yaml")
    assert recipe.model.init_from == "shipped"
    model = build_training_model(recipe, num_classes=7, num_cameras=3)
    reference, _ = shipped()
    target = model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(target[name], tensor), name
    assert model.config.num_classes == 7 and model.config.num_cameras == 3


def test_fine_tuning_starts_from_the_shipped_function_even_with_a_new_camera_embedding():
    from reidcam.reid.engine.config import load_recipe
    from reidcam.reid.engine.train import build_training_model

    recipe = load_recipe(DEFAULT_REID_WEIGHTS.parents[2] / "configs" / "reid" / "mined.yaml")
    assert recipe.model.options.get("sie_lambda", 3.0) > 0  # the camera embedding is on and will learn
    model = build_training_model(recipe, num_classes=7, num_cameras=3).eval()
    reference, _ = shipped()
    torch.manual_seed(0)
    images = torch.randn(3, 3, *reference.config.img_size)
    with torch.no_grad():
        torch.testing.assert_close(model(images, torch.tensor([0, 1, 2])), reference(images), rtol=0, atol=0)
