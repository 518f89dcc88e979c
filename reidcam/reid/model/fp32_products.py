"""Matrix products of 16-bit inputs written in fp32, and the Linear whose weight gradient is one.

Under autocast, a product whose result feeds an fp32 tensor (a parameter's gradient, the scan's fp32 inputs)
would be written in bf16 and cast after: one more kernel each. cuBLAS can write fp32 directly from bf16 or
fp16 inputs (torch's ``out_dtype``, on CUDA), which spares the cast and its rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def product_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b (2-D, or batched 3-D) in fp32: written so by cuBLAS where it can, else computed and cast."""
    product = torch.bmm if a.dim() == 3 else torch.mm
    if a.dtype != torch.float32 and a.is_cuda:
        try:
            return product(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without out_dtype for these inputs
            pass
    return product(a, b).float()


class _AutocastLinearFn(torch.autograd.Function):
    """x @ weight^T for x in the autocast dtype and an fp32 weight: the product in x's dtype, as autocast's
    Linear runs it; the backward's weight gradient written in fp32 (product_fp32)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        low = weight.to(x.dtype)
        ctx.save_for_backward(x, low)
        return F.linear(x, low)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        x, low = ctx.saved_tensors
        grad = grad.to(x.dtype)
        dx = grad @ low if ctx.needs_input_grad[0] else None
        dw = product_fp32(grad.reshape(-1, grad.shape[-1]).t(), x.reshape(-1, x.shape[-1])) \
            if ctx.needs_input_grad[1] else None
        return dx, dw


class AutocastLinear(nn.Linear):
    """nn.Linear (the same parameters and state dict) whose weight gradient under autocast is written in fp32.

    Why: under autocast nn.Linear casts its fp32 weight for the product, and autograd casts the 16-bit weight
    gradient back to fp32 after it: a cast kernel per Linear and step (in_proj's and out_proj's, 57 in
    ReIDMamba-S's training step, ~0.2 ms on an H200: session 12's profile). Elsewhere (no autocast, fp32 input,
    a bias, no gradient wanted) it is nn.Linear."""

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None and self._autocast_training(x):
            return _AutocastLinearFn.apply(x, self.weight)
        return super().forward(x)

    def _autocast_training(self, x: Tensor) -> bool:
        device = x.device.type
        return (torch.is_grad_enabled() and self.weight.requires_grad and self.weight.dtype == torch.float32
                and torch.is_autocast_enabled(device) and x.dtype == torch.get_autocast_dtype(device))
