"""Recipes, overrides, parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from reid_fixtures import REPO_ROOT
from torch import nn

from reidcam.errors import ConfigError
from reidcam.reid.data import canonical_dataset_name
from reidcam.reid.engine.config import OptimSection, load_recipe
from reidcam.reid.engine.optim import (
    WarmupCosineSchedule, build_optimizer, cosine_period, parameter_groups, uses_weight_decay,
)

RECIPES = sorted((REPO_ROOT / "configs" / "reid").glob("*.yaml"))


def test_every_recipe_parses_and_names_a_known_dataset():
    names = {path.stem for path in RECIPES}
    assert {"market1501_256", "market1501_384", "dukemtmc", "msmt17", "cuhk03_labeled", "cuhk03_detected",
            "occluded_duke", "smoke", "mined"} <= names
    for path in RECIPES:
        recipe = load_recipe(path)
        canonical_dataset_name(recipe.data.dataset)


def test_benchmark_recipes_carry_the_method_numbers():
    market = load_recipe(REPO_ROOT / "configs/reid/market1501_384.yaml")
    assert (market.model.img_size, market.model.stride) == ((384, 128), 12)
    assert (market.data.p, market.data.k) == (16, 4)
    assert (market.optim.lr, market.optim.momentum, market.optim.weight_decay) == (0.008, 0.9, 0.0)
    assert (market.optim.warmup_iters, market.optim.warmup_factor, market.optim.eta_min) == (1200, 0.01, 8e-6)
    assert (market.optim.grad_clip, market.train.seed, market.train.epochs) == (10.0, 777, 160)
    assert (market.loss.label_smoothing, market.loss.triplet_margin, market.loss.ratr_temperature) == (0.1, 1.2, 0.1)
    assert market.train.amp == "fp16" and market.train.flip_test
    small = load_recipe(REPO_ROOT / "configs/reid/market1501_256.yaml")
    assert (small.model.img_size, small.model.stride) == ((256, 128), 16)
    assert load_recipe(REPO_ROOT / "configs/reid/msmt17.yaml").optim.warmup_iters == 2500


def test_overrides_with_dotted_keys_and_yaml_values():
    recipe = load_recipe(REPO_ROOT / "configs/reid/smoke.yaml",
                         ["optim.lr=0.01", "data.p=8", "model.img_size=[64, 32]", "train.amp=none",
                          "model.options.depth=2", "optim.grad_clip=null"])
    assert recipe.optim.lr == 0.01 and recipe.data.p == 8 and recipe.model.img_size == (64, 32)
    assert recipe.train.amp == "none" and recipe.optim.grad_clip is None
    assert recipe.model.options == {"depth": 2, "dim": 96}


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
    ("trainer.epochs=3", "unknown key 'trainer'"),
    ("data.p=many", "'data.p'"),
    ("train.amp=fp8", "'train.amp'"),
    ("data", "expected key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(REPO_ROOT / "configs/reid/smoke.yaml", [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.01\n  warmup: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: unknown key 'optim.warmup'"
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.sie_embed = nn.Parameter(torch.zeros(3, 1, 8))
        self.proj = nn.Linear(8, 8)
        self.A_log = nn.Parameter(torch.zeros(8, 4))
        self.norm = nn.LayerNorm(8)


def test_weight_decay_groups():
    model = Toy()
    decayed = {name for name, p in model.named_parameters() if uses_weight_decay(name, p)}
    assert decayed == {"proj.weight"}
    optimizer = build_optimizer(model, OptimSection(weight_decay=1e-4))
    groups = {len(g["params"]): g["weight_decay"] for g in optimizer.param_groups}
    assert groups == {1: 1e-4, 6: 0.0}
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["lr"] == 0.008
    assert not optimizer.defaults["fused"]  # the fused kernel is the GPU's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_fused_gpu_optimizer_steps_as_the_multi_tensor_one():
    torch.manual_seed(0)
    fused_model = Toy().cuda()
    plain_model = Toy().cuda()
    plain_model.load_state_dict(fused_model.state_dict())
    section = OptimSection(weight_decay=1e-4)
    fused = build_optimizer(fused_model, section)
    plain = torch.optim.SGD(parameter_groups(plain_model, section.weight_decay), lr=section.lr,
                            momentum=section.momentum, nesterov=section.nesterov, foreach=True)
    assert fused.defaults["fused"]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in fused_model.parameters()]
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            for parameter, grad in zip(model.parameters(), grads):
                parameter.grad = grad.clone()
            optimizer.step()
    for (name, a), (_, b) in zip(fused_model.named_parameters(), plain_model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_schedule_reproduces_the_logged_learning_rates():
    """Market, 203 iterations/epoch: epoch 1 ends at 1.41e-3, epoch 6 at 8e-3, epoch 160 at 8.8e-6."""
    section = OptimSection()
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=section.lr)
    t_max = cosine_period(section, epochs=160, iterations_per_epoch=203)
    assert t_max == 155
    schedule = WarmupCosineSchedule(optimizer, section.warmup_iters, section.warmup_factor, t_max, section.eta_min)
    assert schedule.lr == pytest.approx(8e-5)
    end_of_epoch = []
    for _ in range(160):
        for _ in range(203):
            schedule.step_iteration()
        end_of_epoch.append(schedule.lr)
        schedule.step_epoch()
    assert end_of_epoch[0] == pytest.approx(1.41e-3, rel=0.01)
    assert end_of_epoch[5] == pytest.approx(8.0e-3, rel=0.01)
    assert end_of_epoch[159] == pytest.approx(8.8e-6, rel=0.01)
    assert all(a >= b for a, b in zip(end_of_epoch[6:], end_of_epoch[7:]))


def test_schedule_state_round_trip():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = WarmupCosineSchedule(optimizer, 10, 0.01, 5, 0.0)
    for _ in range(25):
        schedule.step_iteration()
    schedule.step_epoch()
    other = WarmupCosineSchedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), 10, 0.01, 5, 0.0)
    other.load_state_dict(schedule.state_dict())
    assert other.lr == schedule.lr == pytest.approx(0.05 * (1 + math.cos(math.pi / 5)))
