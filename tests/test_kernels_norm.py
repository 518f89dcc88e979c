"""The fused residual-add + RMSNorm kernel against the model's own RMSNorm, in Triton's CPU interpreter."""

from __future__ import annotations

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of the kernels

import pytest
import torch

pytest.importorskip("triton")

from reidcam.reid.model.layers import RMSNorm  # noqa: E402

MODULE = "reidcam.reid.model.kernels.add_rmsnorm"


@pytest.fixture(scope="module")
def add_rms_norm():
    os.environ["TRITON_INTERPRET"] = "1"
    module = importlib.reload(sys.modules[MODULE]) if MODULE in sys.modules else importlib.import_module(MODULE)
    return module.add_rms_norm


def reference(hidden, residual, norm: RMSNorm, scale):
    if residual is not None:
        hidden = hidden * scale[:, None, None] if scale is not None else hidden
        residual = residual + hidden
    else:
        residual = hidden
    residual = residual.float()
    return norm(residual), residual


@pytest.mark.parametrize("with_residual,with_scale", [(True, True), (True, False), (False, False)])
def test_fused_add_rmsnorm_matches_block_math(add_rms_norm, with_residual, with_scale):
    gen = torch.Generator().manual_seed(0)
    batch, tokens, channels = 3, 7, 40  # 21 rows: the last row block is partial; 40 channels pad to 64
    hidden = torch.randn(batch, tokens, channels, generator=gen, requires_grad=True)
    residual = torch.randn(batch, tokens, channels, generator=gen, requires_grad=True) if with_residual else None
    scale = torch.tensor([0.0, 1.25, 1.25]) if with_scale else None  # DropPath: sample 0 dropped
    norm = RMSNorm(channels)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(channels, generator=gen))
    d_normed = torch.randn(batch, tokens, channels, generator=gen)
    d_res = torch.randn(batch, tokens, channels, generator=gen)
    leaves = [hidden, norm.weight] + ([residual] if residual is not None else [])

    got = add_rms_norm(hidden, residual, norm.weight, norm.eps, scale)
    want = reference(hidden, residual, norm, scale)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    grads_got = torch.autograd.grad(got, leaves, (d_normed, d_res))
    grads_want = torch.autograd.grad(want, leaves, (d_normed, d_res))
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_normed_output_takes_the_autocast_dtype(add_rms_norm):
    hidden = torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        normed, residual = add_rms_norm(hidden, torch.randn(2, 3, 8), torch.ones(8), 1e-5)
    assert normed.dtype == torch.bfloat16 and residual.dtype == torch.float32
