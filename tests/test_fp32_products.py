"""AutocastLinear: nn.Linear's values under autocast, with the weight gradient written in fp32 by the product."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autograd_nodes import graph_nodes
from reidcam.reid.model.fp32_products import AutocastLinear, product_fp32


def twin_linears(seed: int = 0) -> tuple[AutocastLinear, nn.Linear]:
    torch.manual_seed(seed)
    ours = AutocastLinear(24, 40, bias=False)
    theirs = nn.Linear(24, 40, bias=False)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_under_autocast_it_gives_nn_linears_values_and_gradients():
    ours, theirs = twin_linears()
    x = torch.randn(3, 7, 24).bfloat16()
    grad = torch.randn(3, 7, 40).bfloat16()
    results = []
    for layer in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(leaf)
        out.backward(grad)
        results.append((out, leaf.grad, layer.weight.grad))
    (out, dx, dw), (out_ref, dx_ref, dw_ref) = results
    assert out.dtype == torch.bfloat16 and torch.equal(out, out_ref)
    assert dx.dtype == torch.bfloat16 and torch.equal(dx, dx_ref)
    assert dw.dtype == torch.float32
    exact = grad.float().reshape(-1, 40).t() @ x.float().reshape(-1, 24)
    torch.testing.assert_close(dw, exact, rtol=1e-2, atol=1e-2)  # bf16 rounding of the product on the CPU
    torch.testing.assert_close(dw, dw_ref)


def test_its_backward_casts_no_weight_gradient():
    """nn.Linear under autocast leaves a ToCopyBackward (the cast of the bf16 weight gradient to fp32, a kernel
    each step); AutocastLinear's weight gradient comes out of its product in fp32."""
    ours, theirs = twin_linears()
    x = torch.randn(5, 24).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours_nodes, theirs_nodes = graph_nodes(ours(x)), graph_nodes(theirs(x))
    assert "ToCopyBackward0" in theirs_nodes
    assert ours_nodes == ["_AutocastLinearFnBackward", "AccumulateGrad", "AccumulateGrad"]


def test_outside_autocast_or_without_gradients_it_is_nn_linear():
    ours, theirs = twin_linears()
    x = torch.randn(4, 24)
    assert type(ours(x).grad_fn).__name__ == type(theirs(x).grad_fn).__name__ != "_AutocastLinearFnBackward"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ours(x.bfloat16()), theirs(x.bfloat16()))


def test_product_fp32_is_the_product_in_fp32():
    a, b = torch.randn(2, 5, 8).bfloat16(), torch.randn(2, 8, 3).bfloat16()
    got = product_fp32(a, b)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 3)
    torch.testing.assert_close(got, (a.float() @ b.float()), rtol=1e-2, atol=1e-2)
    assert product_fp32(a[0], b[0]).shape == (5, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_the_weight_gradient_is_accumulated_and_written_in_fp32():
    """cuBLAS writes the product of the bf16 gradient and input in fp32: it equals their exact fp32 product to
    fp32 accumulation error (~1e-6), where autocast's nn.Linear rounds it to bf16 (~1e-3)."""
    ours, theirs = (layer.cuda() for layer in twin_linears())
    x = torch.randn(64, 140, 24, device="cuda").bfloat16()
    grad = torch.randn(64, 140, 40, device="cuda").bfloat16()
    for layer in (ours, theirs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(x)
        out.backward(grad)
    exact = grad.double().reshape(-1, 40).t() @ x.double().reshape(-1, 24)

    def error(dw: torch.Tensor) -> float:
        return ((dw.double() - exact).norm() / exact.norm()).item()

    assert ours.weight.grad.dtype == torch.float32
    assert error(ours.weight.grad) < 1e-5 and error(theirs.weight.grad) > 1e-4
