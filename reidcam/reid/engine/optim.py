"""SGD with the recipe's parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from reidcam.reid.engine.config import OptimSection

NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "pos_embed_cls", "sie_embed", "A_log", "D", "A_b_log", "D_b"})


def uses_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """False for embeddings/tokens, SSM A and D parameters, biases and every 1-D parameter."""
    leaf = name.rsplit(".", 1)[-1]
    return not (leaf in NO_DECAY_NAMES or leaf == "bias" or parameter.ndim <= 1)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups, with and without weight decay (the original puts each parameter in its own group
    with the same settings, which is equivalent but defeats the optimizer's multi-tensor kernels)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if uses_weight_decay(name, parameter) else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, section: OptimSection) -> torch.optim.SGD:
    """SGD; on the GPU its fused kernel, one pass over the parameters, gradients and momenta where the multi-tensor
    form makes four (GradScaler supports it, clipping first included)."""
    groups = parameter_groups(model, section.weight_decay)
    on_gpu = all(parameter.is_cuda for group in groups for parameter in group["params"])
    return torch.optim.SGD(
        groups,
        lr=section.lr,
        momentum=section.momentum,
        nesterov=section.nesterov,
        fused=on_gpu or None,
    )


class WarmupCosineSchedule:
    """Linear warm-up per iteration from ``warmup_factor * lr`` to ``lr`` over ``warmup_iters``
    iterations, then cosine annealing to ``eta_min`` over ``t_max`` epochs, stepped once per epoch
    (the original's SequentialLR of a per-iteration LinearLR and a per-epoch CosineAnnealingLR).

    Call ``step_iteration()`` after every optimizer step and ``step_epoch()`` after every epoch; an
    epoch counts towards the cosine only if warm-up had finished by its end.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_iters: int, warmup_factor: float, t_max: int, eta_min: float
    ) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup_iters, self.warmup_factor = warmup_iters, warmup_factor
        self.t_max, self.eta_min = t_max, eta_min
        self.iteration = 0
        self.cosine_steps = 0
        self._apply()

    def lr_for(self, base_lr: float) -> float:
        if self.iteration < self.warmup_iters:
            progress = self.iteration / self.warmup_iters
            return base_lr * (self.warmup_factor + (1.0 - self.warmup_factor) * progress)
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.cosine_steps / self.t_max))
        return self.eta_min + (base_lr - self.eta_min) * cosine

    def _apply(self) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_for(base_lr)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step_iteration(self) -> None:
        self.iteration += 1
        self._apply()

    def step_epoch(self) -> None:
        if self.iteration >= self.warmup_iters:
            self.cosine_steps += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "cosine_steps": self.cosine_steps, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.cosine_steps = state["iteration"], state["cosine_steps"]
        self.base_lrs = list(state["base_lrs"])
        self._apply()


def cosine_period(section: OptimSection, epochs: int, iterations_per_epoch: int) -> int:
    """``t_max`` from the recipe, or epochs - warm-up epochs + 1 (155 for Market's 160 epochs)."""
    if section.t_max is not None:
        return section.t_max
    warmup_epochs = math.ceil(section.warmup_iters / max(iterations_per_epoch, 1))
    return max(1, epochs - warmup_epochs + 1)


def build_schedule(
    optimizer: torch.optim.Optimizer, section: OptimSection, epochs: int, iterations_per_epoch: int
) -> WarmupCosineSchedule:
    return WarmupCosineSchedule(
        optimizer,
        warmup_iters=section.warmup_iters,
        warmup_factor=section.warmup_factor,
        t_max=cosine_period(section, epochs, iterations_per_epoch),
        eta_min=section.eta_min,
    )
