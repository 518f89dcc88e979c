"""Building blocks of the backbone: RMSNorm, DropPath, the bidirectional Mamba mixer and block.

Module and parameter names follow Vim / Mamba(R) checkpoints (``mixer.in_proj``,
``mixer.conv1d_b``, ``mixer.A_b_log``, ``norm.weight``...) so pretrained weights map by name.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from reidcam.reid.model.fp32_products import AutocastLinear
from reidcam.reid.model.scan import SCAN_ENV, DirectionParams, bidirectional_mixer_core_packed

DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 0.1, 1e-4


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable gain; computes in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        return (normed * self.weight.float()).to(out_dtype)


class DropPath(nn.Module):
    """Stochastic depth: zeroes whole samples with probability ``rate`` in training, rescales the rest."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        return x * self._keep_mask(x).to(x.dtype) / (1.0 - self.rate)

    def sample_scale(self, x: Tensor) -> Tensor | None:
        """The per-sample factor (batch,) fp32 that forward would multiply x by; None when inactive.

        Draws the mask exactly as forward does, so the fused add+norm path sees the same random numbers.
        """
        if self.rate == 0.0 or not self.training:
            return None
        return self._keep_mask(x).reshape(-1) / (1.0 - self.rate)

    def _keep_mask(self, x: Tensor) -> Tensor:
        """0 or 1 per sample, fp32 whatever x's dtype: the fused path takes it as it is (where a mask in x's
        bf16 cost a cast kernel a block, session 12's profile)."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return torch.empty(shape, device=x.device, dtype=torch.float32).bernoulli_(1.0 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer (Vim "v2"): shared in_proj / gate / out_proj, own SSM per direction."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, num_layers: int = 24) -> None:
        super().__init__()
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16)
        self.d_state = d_state
        self.scan_backend: str | None = None
        self.in_proj = AutocastLinear(dim, 2 * self.d_inner, bias=False)
        self.out_proj = AutocastLinear(self.d_inner, dim, bias=False)
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(num_layers)  # Mamba's prenorm-residual rescale
        for suffix in ("", "_b"):
            self._add_direction(suffix, d_conv)

    def _add_direction(self, suffix: str, d_conv: int) -> None:
        d_inner, dt_rank, d_state = self.d_inner, self.dt_rank, self.d_state
        conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
        x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        _init_dt_proj(dt_proj)
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        setattr(self, f"conv1d{suffix}", conv)
        setattr(self, f"x_proj{suffix}", x_proj)
        setattr(self, f"dt_proj{suffix}", dt_proj)
        setattr(self, f"A{suffix}_log", nn.Parameter(a_log))
        setattr(self, f"D{suffix}", nn.Parameter(torch.ones(d_inner)))

    def direction(self, suffix: str) -> DirectionParams:
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        return DirectionParams(
            conv_weight=conv.weight.squeeze(1),
            conv_bias=conv.bias,
            x_proj_weight=getattr(self, f"x_proj{suffix}").weight,
            dt_proj_weight=dt_proj.weight,
            dt_proj_bias=dt_proj.bias,
            A_log=getattr(self, f"A{suffix}_log"),
            D=getattr(self, f"D{suffix}"),
        )

    def forward(self, hidden: Tensor) -> Tensor:
        xz = self.in_proj(hidden)  # x then z, whole: the triton backend writes its gradient in one piece
        y = bidirectional_mixer_core_packed(xz, self.direction(""), self.direction("_b"), backend=self.scan_backend)
        return self.out_proj(y)


def _init_dt_proj(dt_proj: nn.Linear) -> None:
    """Mamba's dt init: weight U(+-rank^-0.5); bias = softplus^-1(dt), dt log-uniform in [DT_MIN, DT_MAX]."""
    rank = dt_proj.in_features
    with torch.no_grad():
        nn.init.uniform_(dt_proj.weight, -(rank**-0.5), rank**-0.5)
        log_dt = torch.rand(dt_proj.out_features) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = torch.exp(log_dt).clamp(min=DT_INIT_FLOOR)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class MambaBlock(nn.Module):
    """Pre-norm "Add -> RMSNorm -> Mixer" block on a (hidden, residual) stream; residual in float32.

    ``fused_add_norm``: None (default) runs the add and the norm as one Triton kernel
    (:mod:`reidcam.reid.model.kernels.add_rmsnorm`) exactly when the tensors are on CUDA and the scan
    backend is "triton"; True / False force the fused / plain path (True on the CPU needs
    ``TRITON_INTERPRET=1``). Both paths compute the same function.
    """

    def __init__(self, dim: int, drop_path: float, num_layers: int, eps: float = 1e-5, **mixer_kw: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.mixer = BiMambaMixer(dim, num_layers=num_layers, **mixer_kw)
        self.drop_path = DropPath(drop_path)
        self.fused_add_norm: bool | None = None

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        if use_fused_add_norm(self.fused_add_norm, self.mixer.scan_backend, hidden):
            normed, residual = fused_add_rms_norm(hidden, residual, self.drop_path, self.norm)
            return self.mixer(normed), residual
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        return self.mixer(self.norm(residual)), residual


def use_fused_add_norm(choice: bool | None, scan_backend: str | None, x: Tensor) -> bool:
    """The explicit choice, else: x on CUDA and the scan backend (argument, else env) is "triton"."""
    if choice is not None:
        return choice
    return x.is_cuda and (scan_backend or os.environ.get(SCAN_ENV) or "").lower() == "triton"


def fused_add_rms_norm(
    hidden: Tensor, residual: Tensor | None, drop_path: DropPath, norm: RMSNorm, out_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """(norm(stream), stream), stream = residual + drop_path(hidden) in fp32 (hidden when residual is None),
    in one Triton kernel. normed is in out_dtype (default: the autocast dtype, else fp32)."""
    from reidcam.reid.model.kernels.add_rmsnorm import add_rms_norm  # imports triton: only on this path

    scale = drop_path.sample_scale(hidden) if residual is not None else None
    return add_rms_norm(hidden, residual, norm.weight, norm.eps, scale, out_dtype)


def stochastic_depth_rates(depth: int, max_rate: float) -> list[float]:
    """Per-block drop-path rates as ReIDMamba sets them: ``([0] + linspace(0, max, depth))[i]``."""
    rates = [0.0] + torch.linspace(0, max_rate, depth).tolist()
    return rates[:depth]


def add_residual(hidden: Tensor, residual: Tensor | None, drop_path: nn.Module) -> Tensor:
    """The full stream ``residual + DropPath(hidden)`` (just ``hidden`` before the first block)."""
    if residual is None:
        return hidden.float()
    return residual + drop_path(hidden)
