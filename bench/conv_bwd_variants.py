"""Times the CUDA conv backward (conv_bwd.cu, cuda_scan.CudaConvBackward) at other tokens per warp, warps per block
and channels per lane, on one GPU.

    PYTHONPATH=. python bench/conv_bwd_variants.py [--batches 64,256] [--tokens 140] [--dim 768]

The designed build takes 16 tokens per warp (a window of 22 rows of x and 19 of each direction's gradient in
registers: 140 registers for bf16 c2, so 12 warps per SM) and up to 4 warps per block. Fewer tokens per warp hold
fewer rows (more warps per SM) but recompute more halo rows (3 of every TOKENS); more warps per block sum the weight
gradients of more chunks in shared memory before their atomics. Prints us per call of the kernel (the profiler's
kernel records, bench/add_rmsnorm_variants.kernel_us) for each build and channel count, ptxas' registers and
spills, and each build's largest gradient difference from the designed one (the weight gradients are atomic sums:
~1e-7 is expected there, 0 in dx).

Measured (session 13, H200, us at batch 64 / 256): the designed build 35.0 / 117.8 (with integer bf16 rounding, 132
registers: 36.5 / 123.8); one channel per lane 35.9 / 132.0; 8 tokens per warp 38.1 / 139.5; 16 tokens in blocks of
up to 8 warps 39.2 / 141.1; 32 tokens 43.6 / 161.3.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from reidcam.reid.model.kernels import cuda_scan
from reidcam.reid.model.kernels.triton_conv import ConvParams

from add_rmsnorm_variants import kernel_us  # a sibling bench script (run as ``python bench/conv_bwd_variants.py``)

# (tokens per warp, most warps per block)
BUILDS = [(16, 4), (8, 4), (8, 8), (16, 8), (32, 2), (32, 4)]


def conv_inputs(batch: int, tokens: int, dim: int):
    """x as in_proj's packed output's first half (row stride 2 dim), dxc (2, B, L, D), both directions' params."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    xz = torch.randn(batch, tokens, 2 * dim, device=dev, generator=gen).bfloat16()
    dxc = torch.randn(2, batch, tokens, dim, device=dev, generator=gen).bfloat16()
    params = [ConvParams(weight=0.3 * torch.randn(dim, 4, device=dev, generator=gen),
                         bias=0.1 * torch.randn(dim, device=dev, generator=gen)) for _ in range(2)]
    return xz[..., :dim], dxc, params


def conv_us(run) -> float:
    """GPU microseconds per call of the conv backward kernel in ``run`` (its zeroing and other kernels aside)."""
    return sum(us for key, us in kernel_us(run).items() if "conv_bwd" in key)


def registers(conv: cuda_scan.CudaConvBackward, arch: int, name: str) -> str:
    """ptxas' registers and spill bytes of kernel ``name`` in the build's compile log."""
    log = conv.compile(arch).log
    for entry, body in re.findall(r"Compiling entry function '(\w+)'(.*?)(?=Compiling entry|\Z)", log, re.S):
        if entry == name:
            spill = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", body))
            used = re.search(r"Used (\d+) registers", body).group(1)
            return f"{used} regs, {spill} B spill"
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--tokens", type=int, default=140)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--earlier-source", type=Path, default=None,
                        help="also time the designed build from this copy of conv_bwd.cu (an A/B against an edit)")
    args = parser.parse_args()
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    print(f"# {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    print("| batch | tokens per warp | max warps | source | channels | registers | kernel us | max rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    convs = {(*build, "this source"): cuda_scan.CudaConvBackward(tokens=build[0], max_warps=build[1])
             for build in BUILDS}
    if args.earlier_source is not None:
        convs[(*BUILDS[0], args.earlier_source.name)] = cuda_scan.CudaConvBackward(source=args.earlier_source)
    for batch in (int(b) for b in args.batches.split(",")):
        x, dxc, (pf, pb) = conv_inputs(batch, args.tokens, args.dim)
        reference = None
        for (tokens, warps, source), conv in convs.items():
            for channels in (2, 1):
                def run(conv=conv, channels=channels):
                    return conv.backward(x, dxc, pf, pb, channels=channels)

                dx, (dwf, dbf), (dwb, dbb) = run()
                grads = (dx, dwf, dbf, dwb, dbb)
                reference = reference or grads
                diff = max(((g.float() - r.float()).abs().max() / r.float().abs().max()).item()
                           for g, r in zip(grads, reference))
                regs = registers(conv, arch, cuda_scan.conv_backward_kernel_name(x.dtype, channels))
                print(f"| {batch} | {tokens} | {warps} | {source} | {channels} | {regs} | {conv_us(run):.1f} | "
                      f"{diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
