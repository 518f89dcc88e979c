"""The fused residual-add + RMSNorm kernel against the model's own RMSNorm, in Triton's CPU interpreter."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from triton_interpreter import require_interpreter  # noqa: E402

require_interpreter()

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


def _outputs_and_grads(module, inputs, seed: int = 3):
    """Forward in train mode (DropPath active) with a fixed seed, then gradients w.r.t. every parameter and input."""
    torch.manual_seed(seed)
    outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(o.shape, generator=gen) for o in outputs]
    leaves = [*module.parameters(), *[x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]]
    grads = torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True)
    return [o.detach() for o in outputs], grads


@pytest.mark.parametrize("with_residual", [True, False])
def test_block_fused_add_norm_matches_the_plain_path(add_rms_norm, with_residual):
    from reidcam.reid.model.layers import MambaBlock

    torch.manual_seed(0)
    block = MambaBlock(16, drop_path=0.5, num_layers=2, d_state=2).train()
    block.mixer.scan_backend = "torch"
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 5, 16, generator=gen, requires_grad=True)
    residual = torch.randn(4, 5, 16, generator=gen, requires_grad=True) if with_residual else None
    results = {}
    for fused in (False, True):
        block.fused_add_norm = fused
        results[fused] = _outputs_and_grads(block, (hidden, residual))
    (out_plain, grads_plain), (out_fused, grads_fused) = results[False], results[True]
    for got, want in zip(out_fused, out_plain):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(grads_fused) == len(grads_plain)
    for got, want in zip(grads_fused, grads_plain):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_model_fused_add_norm_matches_the_plain_path(add_rms_norm):
    """The whole network in train mode (every block, the branches' final norms, stochastic depth)."""
    from reidcam.reid.model import build_model

    torch.manual_seed(0)
    model = build_model("reidmamba_tiny", depth=2, branch_depth=1, img_size=(32, 16), num_cls_tokens=4,
                        drop_path=0.5, num_classes=3).train()
    model.set_scan_backend("torch")
    images = torch.randn(3, 3, 32, 16, generator=torch.Generator().manual_seed(5))
    results = {}
    for fused in (False, True):
        model.set_fused_add_norm(fused)
        torch.manual_seed(3)
        features = model(images).features
        grads = torch.autograd.grad(sum((f * f).sum() for f in features), [p for p in model.parameters() if p.requires_grad],
                                    allow_unused=True)
        results[fused] = (features, grads)
    for got, want in zip(results[True][0], results[False][0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # fp32 rounding differences grow through the scan's backward: the plain path itself is ~1e-3 (in norm)
    # off a float64 run on the dt / x_proj gradients, so the bound is on the whole tensor; a wrong
    # gradient (a lost residual path, a wrong DropPath scale) is off by O(1)
    for got, want in zip(results[True][1], results[False][1]):
        assert (got is None) == (want is None)
        if want is not None:
            assert ((got - want).norm() / want.norm()).item() < 1e-2


def test_fused_add_norm_is_chosen_only_on_cuda_with_the_triton_backend():
    from reidcam.reid.model.layers import use_fused_add_norm

    cpu = torch.zeros(1)
    assert not use_fused_add_norm(None, "triton", cpu)
    assert use_fused_add_norm(True, "torch", cpu) and not use_fused_add_norm(False, "triton", cpu)
    if torch.cuda.is_available():
        cuda = cpu.cuda()
        assert use_fused_add_norm(None, "triton", cuda)
        assert not use_fused_add_norm(None, "torch", cuda) and not use_fused_add_norm(None, "cuda", cuda)
