"""The ReIDMamba network: size, gradients, output contract, SIE, stochastic depth, backends."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from reidcam.errors import ConfigError
from reidcam.reid.model import ReIDMambaConfig, ReIDOutput, build_model

ANALYTIC_SMALL_PARAMS = 29.83e6  # method doc, table of 2g: ReIDMamba-S 256x128 s16, inference



def small_tiny(**overrides):
    """The tiny model on 64x32 crops with 4 class tokens and 4 blocks: runs in well under a second."""
    options = dict(depth=4, img_size=(64, 32), num_cls_tokens=4)
    options.update(overrides)
    return build_model("reidmamba_tiny", **options)


def test_small_model_has_the_analytic_parameter_count():
    model = build_model("reidmamba_small")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - ANALYTIC_SMALL_PARAMS) / ANALYTIC_SMALL_PARAMS < 0.01, count
    assert model.embed_dim == 3456
    assert model.config.feature_dim == 1152


def test_block_matches_the_mamba_r_layout():
    model = build_model("reidmamba_small", depth=3, branch_depth=2)
    block = model.layers[0]
    per_block = sum(p.numel() for p in block.parameters())
    assert per_block == 1_043_328  # method doc 2a
    mixer = block.mixer
    assert mixer.dt_rank == 24 and mixer.d_inner == 768
    assert mixer.x_proj.weight.shape == (24 + 32, 768) and mixer.x_proj_b.weight.shape == (56, 768)
    torch.testing.assert_close(mixer.A_log.detach().exp()[0], torch.arange(1, 17, dtype=torch.float32))
    assert torch.equal(mixer.D_b, torch.ones(768))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = 24**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound


def test_stochastic_depth_schedule():
    model = build_model("reidmamba_tiny")
    rates = [block.drop_path.rate for block in model.layers] + [b.drop_path.rate for b in model.branches[1].layers]
    expected = [0.0] + [0.3 * i / 23 for i in range(23)]
    assert rates == pytest.approx(expected)
    assert model.drop_path.rate == 0.3


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = small_tiny(num_classes=5, num_cameras=2, drop_path=0.0).train()
    images = torch.randn(3, 3, 64, 32)
    out = model(images, torch.tensor([0, 1, 1]))
    assert isinstance(out, ReIDOutput) and len(out.features) == 3 and len(out.logits) == 3
    labels = torch.tensor([0, 1, 2])
    loss = sum(f.square().mean() for f in out.features) + sum(F.cross_entropy(lg, labels) for lg in out.logits)
    loss.backward()
    missing = [
        name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == [f"branches.{b}.bottleneck.bias" for b in range(3)]


def test_gem_fusion_learns_its_exponent():
    torch.manual_seed(0)
    model = small_tiny(fusion="gem", drop_path=0.0).train()
    sum(f.sum() for f in model(torch.randn(2, 3, 64, 32)).features).backward()
    assert model.branches[1].fusion.p.grad is not None and model.branches[2].fusion.p.grad.abs() > 0


def test_train_output_without_classes_has_no_logits():
    model = small_tiny().train()
    out = model(torch.randn(2, 3, 64, 32))
    assert out.logits is None
    assert [tuple(f.shape) for f in out.features] == [(2, 4 * 192 // 4)] * 3


def test_small_eval_embedding_is_3456_unit_norm():
    torch.manual_seed(0)
    model = build_model("reidmamba_small", depth=2, img_size=(128, 64)).eval()
    with torch.no_grad():
        embedding = model(torch.randn(2, 3, 128, 64))
    assert embedding.shape == (2, 3456)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))


def test_eval_embedding_is_the_normalised_concatenation_of_normalised_branch_features():
    torch.manual_seed(0)
    model = small_tiny().eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        embedding = model(images)
        parts = [F.normalize(f, dim=1) for f in model.branch_features(images)]
    torch.testing.assert_close(embedding, F.normalize(torch.cat(parts, 1), dim=1))


def test_flip_embedding_averages_with_the_mirror_image():
    torch.manual_seed(0)
    model = small_tiny().eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        plain, mirrored = model(images), model(images.flip(-1))
    with_flip = model.embed(images, flip=True)
    torch.testing.assert_close(with_flip, F.normalize(plain + mirrored, dim=1))
    torch.testing.assert_close(with_flip.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.embed(images.flip(-1), flip=True), with_flip, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.embed(images, flip=False), plain)
    assert not torch.allclose(with_flip, plain)


def test_camera_embedding():
    torch.manual_seed(0)
    model = small_tiny(num_cameras=3).eval()
    images = torch.randn(2, 3, 64, 32).repeat(2, 1, 1, 1)
    with torch.no_grad():
        no_sie = model(images)
        unseen = model(images, torch.tensor([-1, -1, -1, -1]))
        cams = model(images, torch.tensor([0, 0, 2, 2]))
    torch.testing.assert_close(unseen, no_sie)
    assert not torch.allclose(cams[:2], cams[2:])  # same images, other cameras
    assert not torch.allclose(cams[:2], no_sie[:2])
    with pytest.raises(ValueError):
        model(images, torch.tensor([0, 1, 2, 3]))


def test_config_is_serialisable_and_validated():
    model = small_tiny(num_classes=7)
    values = asdict(model.config)
    assert ReIDMambaConfig.from_dict(values) == model.config
    assert values["num_classes"] == 7 and values["img_size"] == (64, 32)
    with pytest.raises(ConfigError):
        build_model("reidmamba_huge")
    with pytest.raises(ConfigError):
        build_model("reidmamba_tiny", no_such_option=1)
    with pytest.raises(ConfigError):
        build_model("reidmamba_tiny", num_cls_tokens=6)  # 6 tokens cannot be grouped by 4
    with pytest.raises(ConfigError):
        build_model("reidmamba_tiny", fusion="median")


def test_reset_classifier():
    model = small_tiny(num_classes=3)
    model.reset_classifier(11)
    assert model.config.num_classes == 11
    out = model.train()(torch.randn(2, 3, 64, 32))
    assert [tuple(lg.shape) for lg in out.logits] == [(2, 11)] * 3


def test_torch_and_naive_backends_give_the_same_model_output():
    torch.manual_seed(0)
    model = small_tiny().eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        model.set_scan_backend("torch")
        fast = model(images)
        model.set_scan_backend("naive")
        reference = model(images)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [16, 12])
def test_patch_embedding_as_a_matmul_equals_the_conv(stride):
    from reidcam.reid.model.reidmamba import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(3, 48, patch_size=16, stride=stride)
    images = torch.randn(2, 3, 64, 40)
    conv = embed(images)  # on the CPU: the conv
    assert torch.allclose(embed.as_matmul(images), conv, atol=1e-5)
    assert conv.shape == (2, ((64 - 16) // stride + 1) * ((40 - 16) // stride + 1), 48)
