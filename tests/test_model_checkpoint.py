"""ReID checkpoints (save/load) and the Vim / Mamba(R) ImageNet backbone loader."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from reidcam.errors import DataError
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import (
    export_inference_checkpoint,
    load_pretrained_backbone,
    load_reid_checkpoint,
    resample_pos_embed,
    save_reid_checkpoint,
)



def tiny(**overrides):
    options = dict(depth=4, img_size=(64, 32), num_cls_tokens=4)
    options.update(overrides)
    return build_model("reidmamba_tiny", **options)


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = tiny(num_classes=6, num_cameras=2).eval()
    images, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 1])
    path = tmp_path / "run" / "last.pt"
    save_reid_checkpoint(path, model, extra={"epoch": 3, "camera_labels": ["c1", "c2"]})
    loaded, extra = load_reid_checkpoint(path)
    assert extra == {"epoch": 3, "camera_labels": ["c1", "c2"]}
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, cams), model(images, cams), rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_drop_classifier(tmp_path):
    model = tiny(num_classes=6)
    save_reid_checkpoint(tmp_path / "m.pt", model)
    loaded, extra = load_reid_checkpoint(tmp_path / "m.pt", drop_classifier=True)
    assert extra is None and loaded.config.num_classes == 0
    assert not any("classifier" in k or "bottleneck" in k for k in loaded.state_dict())


def test_inference_export_is_half_the_size_without_classifiers_and_embeds_alike(tmp_path):
    torch.manual_seed(0)
    model = tiny(num_classes=50, num_cameras=2).eval()
    source = tmp_path / "last.pt"
    save_reid_checkpoint(source, model, extra={"epoch": 9})
    shipped = export_inference_checkpoint(source, tmp_path / "ship" / "default.pt", extra={"data": "mined"})
    assert shipped.stat().st_size < 0.55 * source.stat().st_size
    stored = torch.load(shipped, weights_only=True)["state_dict"]
    assert not any("classifier" in key for key in stored)
    assert {str(v.dtype) for k, v in stored.items() if k.endswith(("A_log", ".D"))} == {"torch.float32"}
    assert stored["patch_embed.proj.weight"].dtype == torch.float16
    loaded, extra = load_reid_checkpoint(shipped)
    assert extra == {"data": "mined"} and loaded.config.num_classes == 0
    images, cams = torch.randn(3, 3, 64, 32), torch.tensor([0, 1, 1])
    with torch.no_grad():
        reference, half = model(images, cams), loaded(images, cams)
    cosine = F.cosine_similarity(reference, half, dim=1)
    assert cosine.min() > 0.999


def test_inference_export_drops_a_camera_embedding_that_was_switched_off(tmp_path):
    torch.manual_seed(0)
    model = tiny(num_classes=5, num_cameras=3, sie_lambda=0.0).eval()
    save_reid_checkpoint(tmp_path / "last.pt", model)
    loaded, _ = load_reid_checkpoint(export_inference_checkpoint(tmp_path / "last.pt", tmp_path / "ship.pt", half=False))
    assert loaded.config.num_cameras == 0 and loaded.sie_embed is None
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images, torch.tensor([0, 2])), rtol=0, atol=0)


def test_missing_corrupt_and_foreign_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_reid_checkpoint(tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 a truncated archive")
    with pytest.raises(DataError) as info:
        load_reid_checkpoint(corrupt)
    assert "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(DataError, match="not a reidcam ReID checkpoint"):
        load_reid_checkpoint(foreign)


# --------------------------------------------------------------------------------------------
# Vim / Mamba(R) backbone
# --------------------------------------------------------------------------------------------


def vim_checkpoint(dim: int, depth: int, template_block: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Mamba(R)-format state dict: 14x14 pos-embed, 12 registers, pretraining neck and head."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(depth):
        for name, tensor in template_block.state_dict().items():
            state[f"layers.{i}.{name}"] = torch.randn(tensor.shape, generator=gen)
    state["patch_embed.proj.weight"] = torch.randn(dim, 3, 16, 16, generator=gen)
    state["patch_embed.proj.bias"] = torch.randn(dim, generator=gen)
    state["pos_embed"] = torch.randn(1, 196, dim, generator=gen)
    state["cls_token"] = torch.randn(1, 12, dim, generator=gen)
    state["pos_embed_cls"] = torch.randn(1, 12, dim, generator=gen)
    state["norm_f.weight"] = torch.randn(dim, generator=gen)
    state["neck.weight"] = torch.randn(dim // 2, dim, generator=gen)
    state["norm_neck.weight"] = torch.randn(12 * dim // 2, generator=gen)
    state["head.weight"] = torch.randn(1000, 12 * dim // 2, generator=gen)
    state["head.bias"] = torch.randn(1000, generator=gen)
    return state


def test_pretrained_backbone_from_a_vim_format_file(tmp_path):
    model = build_model("reidmamba_tiny", depth=4, img_size=(256, 128), num_cls_tokens=12, num_cameras=3)
    source = vim_checkpoint(192, 4, model.layers[0])
    path = tmp_path / "mambar_tiny.pth"
    torch.save({"model": source, "args": argparse.Namespace(lr=1e-3), "epoch": 299}, path)

    not_loaded = load_pretrained_backbone(model, path)
    state = model.state_dict()

    for i in range(2):  # shared blocks 0, 1 <- checkpoint blocks 0, 1
        assert torch.equal(state[f"layers.{i}.mixer.A_b_log"], source[f"layers.{i}.mixer.A_b_log"])
        assert torch.equal(state[f"layers.{i}.norm.weight"], source[f"layers.{i}.norm.weight"])
    for b in range(3):  # every branch <- checkpoint blocks 2, 3 (the last two) and norm_f
        for j in range(2):
            for name in ("mixer.in_proj.weight", "mixer.conv1d_b.weight", "mixer.dt_proj.bias", "mixer.D"):
                assert torch.equal(state[f"branches.{b}.layers.{j}.{name}"], source[f"layers.{2 + j}.{name}"])
        assert torch.equal(state[f"branches.{b}.norm_f.weight"], source["norm_f.weight"])
    assert torch.equal(state["cls_token"], source["cls_token"])
    assert torch.equal(state["pos_embed_cls"], source["pos_embed_cls"])
    assert torch.equal(state["patch_embed.proj.weight"], source["patch_embed.proj.weight"])
    assert state["pos_embed"].shape == (1, 16 * 8, 192)
    expected_pos = F.interpolate(
        source["pos_embed"].reshape(1, 14, 14, 192).permute(0, 3, 1, 2), size=(16, 8),
        mode="bicubic", antialias=True, align_corners=False,
    ).permute(0, 2, 3, 1).reshape(1, 128, 192)
    torch.testing.assert_close(state["pos_embed"], expected_pos)

    assert "sie_embed" in not_loaded
    assert {f"branches.{b}.neck.weight" for b in range(3)} <= set(not_loaded)
    assert not any(k.startswith("layers.") or ".layers." in k for k in not_loaded)
    assert not any(k.startswith(("neck", "head", "norm_neck")) for k in state)


def test_pretrained_backbone_copies_the_first_class_tokens_in_order():
    model = tiny()  # 4 class tokens
    source = vim_checkpoint(192, 4, model.layers[0])
    load_pretrained_backbone(model, source)
    assert torch.equal(model.cls_token.data, source["cls_token"][:, :4])


def test_pretrained_backbone_of_another_width_is_refused():
    model = tiny()
    other = build_model("reidmamba_small", depth=4)
    with pytest.raises(DataError, match="does not fit"):
        load_pretrained_backbone(model, vim_checkpoint(384, 4, other.layers[0]))


def test_pos_embed_resampling_keeps_smooth_fields():
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    constant = torch.full((1, 196, 3), 0.7)
    torch.testing.assert_close(resample_pos_embed(constant, (21, 10)), torch.full((1, 210, 3), 0.7))
    field = torch.stack([rows, cols, rows * 0 + 1], dim=-1).reshape(1, 196, 3)
    same = resample_pos_embed(field, (14, 14))
    assert torch.equal(same, field)
    upsampled = resample_pos_embed(field, (28, 7)).reshape(28, 7, 3)
    # A linear ramp stays a ramp, at the new cell centres (away from the clamped borders).
    centres = (torch.arange(28.0) + 0.5) * 14 / 28 - 0.5
    torch.testing.assert_close(upsampled[4:-4, 3, 0], centres[4:-4], rtol=0, atol=1e-4)
    assert (upsampled[:, :, 1].diff(dim=1) > 0).all()  # columns still increase after downsampling
