"""Random parameters of one scan direction, shared by the scan and kernel tests."""

from __future__ import annotations

import math

import torch

from reidcam.reid.model.scan import DirectionParams


def random_direction(
    dim: int, d_state: int, rank: int, gen: torch.Generator, dt_max: float = 0.1, perturbed: bool = False
) -> DirectionParams:
    """Parameters near Mamba's init (dt log-uniform in [1e-3, dt_max], S4D-real A, D = 1).

    ``perturbed`` adds noise to A_log and draws D at random, so that a kernel cannot lean on
    the init's structure; a large ``dt_max`` makes some decays reach ~0 too.
    """

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    dt = torch.exp(torch.rand(dim, generator=gen) * (math.log(dt_max) - math.log(1e-3)) + math.log(1e-3))
    a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(dim, 1)
    return DirectionParams(
        conv_weight=randn(dim, 4) * 0.5,
        conv_bias=randn(dim) * 0.1,
        x_proj_weight=randn(rank + 2 * d_state, dim) / math.sqrt(dim),
        dt_proj_weight=randn(dim, rank) / math.sqrt(rank),
        dt_proj_bias=dt + torch.log(-torch.expm1(-dt)),
        A_log=a_log + 0.3 * randn(dim, d_state) if perturbed else a_log,
        D=randn(dim) if perturbed else torch.ones(dim),
    )
