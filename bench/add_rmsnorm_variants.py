"""Times the fused add + RMSNorm's backward (kernels/add_rmsnorm.py) at several row blockings, on one GPU.

    PYTHONPATH=. python bench/add_rmsnorm_variants.py [--batches 64,256] [--tokens 140] [--dim 384]

The backward kernel gives each program ``_BWD_ROW_BLOCKS`` blocks of ``_BWD_ROWS`` rows, in ``_BWD_WARPS`` warps;
each program's share of the weight gradient is one row (added into the gradient with atomics since session 12). At
the training shape (batch 64, 140 tokens: 8,960 rows) eight blocks of eight rows make 140 programs for 132 SMs, one
program of 4 warps per SM, and the profile showed 31 us a call against the forward's 10.5 over the same rows. Prints
us per backward (the kernel, and all its kernels) for each blocking, and each one's largest gradient difference from
the first. The times are the profiler's kernel records over REPEATS calls: one eager call is ~10x longer on the host
than on the GPU, so CUDA events around it would time the host.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from reidcam.reid.model.kernels import add_rmsnorm


REPEATS = 20
# (rows per block, blocks per program, warps per program)
BLOCKINGS = [(16, 1, 4), (8, 1, 4), (16, 1, 8), (32, 1, 8), (32, 1, 4), (8, 1, 2), (16, 1, 2), (64, 1, 8)]


def backward_of(batch: int, tokens: int, dim: int):
    """A callable running the backward of one add + norm with drop-path scales, and the gradients it gives."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(batch, tokens, dim, device=dev, generator=gen).bfloat16().requires_grad_()
    residual = torch.randn(batch, tokens, dim, device=dev, generator=gen).requires_grad_()
    weight = (1 + 0.1 * torch.randn(dim, device=dev, generator=gen)).requires_grad_()
    scale = torch.rand(batch, device=dev, generator=gen) + 0.5
    normed, res_out = add_rmsnorm.add_rms_norm(hidden, residual, weight, 1e-5, scale, torch.bfloat16)
    d_normed = torch.randn_like(normed)
    d_res = torch.randn_like(res_out)

    def run() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad((normed, res_out), (hidden, residual, weight), (d_normed, d_res), retain_graph=True)

    return run


def kernel_us(run, repeats: int = REPEATS) -> dict[str, float]:
    """GPU microseconds per call of ``run`` of each kernel it launches, from the profiler's kernel records over
    ``repeats`` calls after three untimed ones (bench/conv_bwd_variants.py uses it too)."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / repeats for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA}


def gpu_us(run) -> tuple[float, float]:
    """GPU microseconds per call of ``run``: the backward kernel's, and all of its kernels' (the weight gradient's
    zeroing with it)."""
    kernels = kernel_us(run)
    return sum(us for key, us in kernels.items() if "add_rmsnorm_bwd" in key), sum(kernels.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--tokens", type=int, default=140)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    print(f"# {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    print("| batch | rows per block | blocks per program | warps | programs | kernel us | all kernels us "
          "| max rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        run = backward_of(batch, args.tokens, args.dim)
        reference = None
        for rows, blocks, warps in BLOCKINGS:
            add_rmsnorm._BWD_ROWS, add_rmsnorm._BWD_ROW_BLOCKS, add_rmsnorm._BWD_WARPS = rows, blocks, warps
            grads = run()
            reference = reference or grads
            diff = max(((g.float() - r.float()).abs().max() / r.float().abs().max()).item()
                       for g, r in zip(grads, reference))
            programs = -(-batch * args.tokens // (rows * blocks))
            kernel, everything = gpu_us(run)
            print(f"| {batch} | {rows} | {blocks} | {warps} | {programs} | {kernel:.1f} | {everything:.1f} "
                  f"| {diff:.1e} |",
                  flush=True)


if __name__ == "__main__":
    main()
