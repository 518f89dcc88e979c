"""The mixer core's small batched GEMMs at the training shapes, each as the core runs it and in other forms.

    PYTHONPATH=. python bench/mixer_gemms.py [--batch 64] [--tokens 140]

Why: the profile of the training step (BENCHMARKS.md, session 11) shows the core's batched matrix products with a
dimension of 24 or 56 (dt_rank, dt_rank + 2 d_state) taking 8-25 us each per block, several times what their
bytes need: the weight gradients sum over all B L tokens into an output of 56 x 768 or 768 x 24, too few output
tiles to fill 132 SMs. Each row is a form of one product; the forms of a product compute the same values (up to
fp32 summation order, checked). Times are of CUDA graphs replaying the op, so no launch overhead is counted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from reidcam.reid.model.fp32_products import product_fp32
from reidcam.reid.model.kernels.mixer_core import _weight_grad

from cuda_scan_variants import median_ms  # sibling bench scripts (run as ``python bench/mixer_gemms.py``)
from speed_vs_vit import _cuda_graph

REPEATS = 20


def graph_time_us(fn: Callable[[], torch.Tensor]) -> float:
    """GPU time of one call of fn: a CUDA graph of REPEATS calls, its replays' median over ten, divided."""
    replay = _cuda_graph(lambda: [fn() for _ in range(REPEATS)], torch.device("cuda"))
    return median_ms(replay, reps=10) * 1000 / REPEATS


def forms(batch: int, tokens_per_image: int, dim: int = 768, rank: int = 24, d_state: int = 16):
    device, dtype = torch.device("cuda"), torch.bfloat16
    tokens = batch * tokens_per_image
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    xc, ddt, dt = rand(2, tokens, dim), rand(2, tokens, dim), rand(2, tokens, rank)
    d_dbl = rand(2, tokens, rank + 2 * d_state)
    dt_weight = rand(2, dim, rank)
    x_proj = rand(2, rank + 2 * d_state, dim)
    dxc = rand(2, tokens, dim)
    strided_out = torch.empty(2, tokens, rank + 2 * d_state, device=device, dtype=dtype)
    normed, d_xz = rand(tokens, dim // 2), rand(tokens, 2 * dim)  # in_proj's input and output gradient
    y, d_out = rand(tokens, dim), rand(tokens, dim // 2)  # out_proj's input and output gradient

    def linear_weight_grad_chunked(grad: torch.Tensor, inputs: torch.Tensor, chunks: int) -> torch.Tensor:
        return _weight_grad(grad.unsqueeze(0), inputs.unsqueeze(0), chunks)[0]

    chunk_counts = [c for c in (2, 4, 16, 32) if tokens % c == 0]  # the core's count beside
    products = {
        "d_dt_proj = ddt^T dt (2, 768, 24), fp32": (
            lambda: _weight_grad(ddt, dt),
            {"as dt^T ddt, transposed": lambda: product_fp32(dt.transpose(1, 2), ddt).transpose(1, 2),
             "one product": lambda: product_fp32(ddt.transpose(1, 2), dt),
             **{f"{c} token chunks, summed": (lambda c=c: _weight_grad(ddt, dt, c)) for c in chunk_counts}}),
        "d_x_proj = d_dbl^T xc (2, 56, 768), fp32": (
            lambda: _weight_grad(d_dbl, xc),
            {"as xc^T d_dbl, transposed": lambda: product_fp32(xc.transpose(1, 2), d_dbl).transpose(1, 2),
             "one product": lambda: product_fp32(d_dbl.transpose(1, 2), xc),
             **{f"{c} token chunks, summed": (lambda c=c: _weight_grad(d_dbl, xc, c)) for c in chunk_counts}}),
        "d_dbl[..., :24] = ddt dt_weight (strided out)": (
            lambda: torch.bmm(ddt, dt_weight, out=strided_out[..., :rank]),
            {"contiguous out": lambda: torch.bmm(ddt, dt_weight)}),
        "pre = dt dt_proj^T (2, T, 768)": (
            lambda: torch.bmm(dt, dt_weight.transpose(1, 2)), {}),
        "dbl = xc x_proj^T (2, T, 56), fp32": (
            lambda: product_fp32(xc, x_proj.transpose(1, 2)),
            {"bf16 out": lambda: torch.bmm(xc, x_proj.transpose(1, 2))}),
        "dxc += d_dbl x_proj (in place)": (
            lambda: dxc.baddbmm_(d_dbl, x_proj), {}),
        "in_proj's weight gradient d_xz^T normed (1536, 384)": (
            lambda: d_xz.t() @ normed,  # autograd's, in the compute dtype (then cast to the fp32 parameter's)
            {f"{c} token chunks, fp32, summed": (lambda c=c: linear_weight_grad_chunked(d_xz, normed, c))
             for c in (2, 4, 8)}),
        "out_proj's weight gradient d_out^T y (384, 768)": (
            lambda: d_out.t() @ y,
            {f"{c} token chunks, fp32, summed": (lambda c=c: linear_weight_grad_chunked(d_out, y, c))
             for c in (2, 4, 8)}),
    }
    return products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=140)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | batch {args.batch}, {args.tokens} tokens")
    print("\n| product | form | us per call | max rel. difference to the core's form |\n|---|---|---|---|")
    for name, (current, others) in forms(args.batch, args.tokens).items():
        reference = current().float()
        print(f"| {name} | the core's | {graph_time_us(current):.1f} | |")
        for label, fn in others.items():
            diff = ((fn().float() - reference).abs().max() / reference.abs().max()).item()
            print(f"| | {label} | {graph_time_us(fn):.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
