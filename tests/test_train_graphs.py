"""The training step as a CUDA graph (engine/graphed_step.py): the same training as the eager step.

The eager path runs everywhere; capture and replay need a GPU (run on the device, BENCHMARKS.md session 8).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reid_fixtures import FAST_OVERRIDES, SMOKE_RECIPE, synthetic_market  # noqa: F401

from reidcam.reid.engine.graphed_step import GraphedStep, graphs_usable
from reidcam.reid.engine.train import train_from_recipe
from reidcam.reid.model import build_model
from reidcam.reid.model.checkpoint import load_reid_checkpoint

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_model(device: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("reidmamba_tiny", num_classes=7, img_size=(64, 32), dim=48, depth=3, drop_path=0.0)
    return model.to(device).train()


def forward_backward_of(model: torch.nn.Module):
    def body(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = sum(F.cross_entropy(logits.float(), labels) for logits in model(images).logits)
        loss.backward()
        return loss.detach()

    return body


def batches(count: int, size: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 3, 64, 32, generator=generator).to(device),
         torch.randint(0, 7, (size,), generator=generator).to(device))
        for _ in range(count)
    ]


def train(model: torch.nn.Module, data, graphs: bool) -> tuple[list[float], GraphedStep]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = GraphedStep(forward_backward_of(model), list(model.parameters()), enabled=graphs, warmup=2)
    losses = []
    for images, labels in data:
        losses.append(float(step(images, labels)))
        optimizer.step()
    return losses, step


def test_the_eager_step_does_not_accumulate_gradients():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = small_model(device)
    images, labels = batches(1, 4, device)[0]
    step = GraphedStep(forward_backward_of(model), list(model.parameters()), enabled=False)
    step(images, labels)
    once = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    step(images, labels)
    twice = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(once) == len(twice) > 0
    for a, b in zip(once, twice):
        torch.testing.assert_close(a, b)
    assert not step.captured


def test_graphs_are_refused_where_they_cannot_run():
    assert graphs_usable(torch.device("cpu"), distributed=False) == "not on a CUDA device"
    assert graphs_usable(torch.device("cuda", 0), distributed=True) == "distributed training"
    assert graphs_usable(torch.device("cuda", 0), distributed=False) is None


@gpu
def test_replayed_steps_train_as_the_eager_steps():
    data = batches(3, 8, "cuda") * 3  # three batches seen three times: the loss on each must fall
    eager_losses, _ = train(small_model("cuda"), data, graphs=False)
    graphed_losses, step = train(small_model("cuda"), data, graphs=True)
    assert step.captured and step.calls == 9
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-3)
    assert graphed_losses[6] < 0.8 * graphed_losses[0]


@gpu
def test_a_batch_of_another_shape_runs_eagerly_after_capture():
    model = small_model("cuda")
    step = GraphedStep(forward_backward_of(model), list(model.parameters()), warmup=1)
    for images, labels in batches(2, 8, "cuda"):
        step(images, labels)
    assert step.captured
    images, labels = batches(1, 4, "cuda")[0]
    loss = float(step(images, labels))
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    loss_again = float(forward_backward_of(model)(images, labels))  # the parameters are unchanged
    assert loss == pytest.approx(loss_again, rel=1e-5)
    assert all(torch.isfinite(g).all() for g in grads)


@gpu
def test_the_trainer_with_graphs_trains_as_without(synthetic_market, tmp_path):
    overrides = [*FAST_OVERRIDES, "train.max_iters_per_epoch=6", "train.eval_every=0", "train.amp=none",
                 "model.options.drop_path=0.0", "data.num_workers=0"]
    weights = {}
    for graphs in (False, True):
        output = tmp_path / f"graphs_{graphs}"
        train_from_recipe(SMOKE_RECIPE, synthetic_market, output, epochs=2, device="cuda",
                          overrides=[*overrides, f"train.cuda_graphs={str(graphs).lower()}"])
        weights[graphs] = load_reid_checkpoint(output / "last.pt")[0].state_dict()
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-3, atol=1e-4, msg=name)
