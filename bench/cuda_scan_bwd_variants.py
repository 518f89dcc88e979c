"""Times the CUDA backward scan's compile-time variants on one GPU (scan_bwd.cu, cuda_scan.CudaScanBackward).

    PYTHONPATH=. python bench/cuda_scan_bwd_variants.py [--batches 64,256] [--tokens 140] [--no-triton]
    PYTHONPATH=. python bench/cuda_scan_bwd_variants.py --list [--all]   # compile only (no GPU): registers, spills

Each build is scan_bwd.cu with other tuning macros: block size (REIDCAM_THREADS), blocks per SM that ptxas must
fit (REIDCAM_MIN_BLOCKS, i.e. the register cap 65,536 / (threads * blocks)) and tokens between checkpoints
(REIDCAM_STEPS). Inputs: bf16, d_inner 768, d_state 16, dt_rank 24, the model's parameter ranges, seeded, the
same for every build. Prints ms per call (median of CUDA-event timings) of the whole
``CudaScanBackward.backward`` (as bench/speed_vs_vit.py times it: with the dt projection, the buffers and the
final sums) and of the kernel launch alone, each gradient's largest difference from the default build's
(max |a - b| / max |b|; dbc is summed by atomics, so ~1e-5 is expected there, 0 elsewhere), and Triton's
triton_scan.scan_backward on the same inputs as the reference line.

Kept builds (sm_90, d_state 16; NVRTC 13.0's ptxas report as in tests/test_kernels_cuda_scan_bwd.py; rerun
``--list`` to check): threads / min blocks per SM / steps -> registers, spills, shared memory (static, or dynamic:
design 3), blocks per SM. A kept build that spills on the machine's NVRTC is timed all the same, its line marked.

    default            256 / 2 / 4   128 registers, 0 B spill, 46,080 B smem (design 1, AHEAD 2; 2 blocks/SM: 16 warps)
    128 threads        128 / 4 / 4   128 registers, 0 B spill, 23,552 B smem (4 blocks/SM: 16 warps)
    ahead 1            256 / 2 / 4   128 registers, 0 B spill, 46,080 B smem
    design 0           256 / 2 / 4   128 registers, 0 B spill, 46,080 B smem (the default until session 8)
    design 3           256 / 3 / 4    80 registers, 0 B spill, 71,680 B dynamic (3 blocks/SM: 24 warps)
    design 3, 128 thr. 128 / 6 / 4    80 registers, 0 B spill, 36,352 B dynamic (6 blocks/SM: 24 warps)
    design 3, 128 x 5  128 / 5 / 4    96 registers, 0 B spill (bf16 8 B before session 10), 36,352 B dynamic
                                      (5 blocks/SM: 20 warps)
    design 3, 256 x 2  256 / 2 / 4   128 registers, 0 B spill, 71,680 B dynamic (2 blocks/SM: 16 warps; beside design 1)
    design 3, 128, no prefetch / checkpoints prefetched: as design 3, 128 threads

Design 1 (scan_bwd.cu's comment): the same arithmetic with the global loads issued ahead of their use. Pass 2's
loop, SASS per sub-chunk (4 tokens x 16 states) of the bf16 kernel: design 0 2,899 (45.3 per token, channel and
state), design 1 2,519 (39.4; the branches around the step inputs' loads gone); the checkpoint loads ~200
instead of ~40 instructions before their use, the 16 step-input loads issued together instead of 4-8 one after
another. Prediction: design 0 waits on ~20 global latencies per sub-chunk and warp, design 1 on about one, so the
kernel 0.93 -> 0.5-0.65 ms at batch 64 on an H200. AHEAD 4 spills (40 B), hence 2. Measured (H200, session 8,
kernel alone, batch 64 / 256): design 0 0.956 / 2.866 ms (128 threads 0.922 / 2.825, 64 threads 0.944 /
2.887); design 1 0.570 / 1.883 (128 threads 0.558 / 1.847; ahead 1 0.597 / 1.952), the same gradients. Design 1
is the default since. 64 threads spill as design 1 (16 B), so that build is now among the rejected.

Design 3 (scan_bwd.cu's comment): design 1 in 80 registers, for 24 warps per SM, since design 1 was latency-bound
at 16 and ran batch 64's 384 blocks in 1.45 waves (one wave of 396 slots at 3 blocks/SM). Pass 2's carry and dA
sums and dz_factor live in the thread's column of dynamic shared memory, the dB/dC transposition goes by columns,
one state index at a time (design 1's rotated rows cost 8 address registers at FLUSH 1), add_block_sums states its
trip count. Pass 2's loop, SASS per sub-chunk of the bf16 kernel (f32): design 1 2,519 (2,409), design 3 2,364
(2,236; 36.9 per token, channel and state) at 80 registers, 2,293 at 128 (256 x 2); LDS/STS 305 against 253. The
per-channel gradients equal design 1's bit for bit in the CPU emulation (dbc: another order of the warp sums).
The 8 B of the 96-register build: one value stored before pass 2 and loaded once per sub-chunk. Prediction: the
kernel 0.570 -> 0.40-0.48 ms at batch 64 (no half-empty second wave, 1.5x the warps against latency) and 1.883
-> 1.35-1.6 ms at batch 256; the risks are shared memory (3 blocks leave 28 KB of L1; ~20 % more LDS/STS) and
the 24 warps hiding less than their count says. Measured (H200, session 9): 0.538 against design 1's 0.597 at
batch 64, 1.952 against 1.907 at batch 256.

Design 3's address work (session 10, scan_bwd.cu's comment; the rows above time it, as "design 3"): the same
gradients bit for bit (dbc too: the CPU emulation of the old and new source), design 0's and 1's SASS unchanged.
The checkpoints tiled by channel block (a thread's states a compile-time stride apart: immediate offsets), the
step inputs' and outputs' rows from the sub-chunk's first by +-D instead of a 64-bit multiply per step and
tensor. SASS per sub-chunk of the bf16 kernel (f32), counted / on one thread's path (the old outputs' code had a
copy per direction): pass 2 2,364 (2,236) / 2,173 (2,092) -> 1,930 (1,860), 30.2 (29.1) per token, channel and
state; pass 1 552 (541) / 515 (504) -> 469 (461), 7.3 (7.2). Still 80 registers and no spill; the 128 x 5
build's 8 B of bf16 spill gone. Prediction 0.538 -> 0.49-0.52 ms at batch 64 (H200), for ~10 % fewer
instructions issued at ~56 % of the issue rate. Measured (session 10, H200, ``--earlier-source`` with the source
before the change, which times beside it: its (N, D) checkpoint layout fits the tiled scratch, no smaller):
0.514 -> 0.444 ms at batch 64, 1.923 -> 1.689 at 256; 128 threads 0.438 and 1.623 (design 1: 0.570, 1.883).

Design 3's L2 prefetch (session 11, scan_bwd.cu's REIDCAM_PREFETCH): Nsight Compute on the training step's
backward (128 threads, batch 64) showed 58 % of the issue rate, 5.3 of 6 warps per scheduler active, and of the 8.8
cycles between a warp's instructions 3.0 waiting on global loads (long scoreboard): pass 2's checkpoints and step
inputs come from HBM, the 214 MB scratch being far beyond L2. Each sub-chunk of pass 2 now prefetches into L2 the
block's checkpoint tile of the sub-chunk two ahead (8 KB, a 128-byte line per thread: no register, no scoreboard),
so its loads wait for L2, and in the 16-bit kernels its step inputs' rows too. Measured (two H200s, kernel alone,
batch 64 / 256): none 0.478 / 1.637 and 0.474 / 1.679 ms, checkpoints 0.444 / 1.582 and 0.465 / 1.635, checkpoints
and step inputs 0.450 / 1.533 and 0.446 / 1.567; the training step 27.3 -> 26.8 ms.

Design 4 (session 14, scan_bwd.cu's comment): design 3 with two adjacent channels a thread, so that the loads and
stores of a step, a state's B/C reads and checkpoint load and the dB/dC transposition serve two channels. Pass 2's
loop (bf16) 1,964 -> 1,425 instructions a sub-chunk and channel; 168 registers, 12 warps per SM. Measured (H200, the
kernel alone, batch 64 / 256, call 4): 0.372 / 1.404 ms against design 3's 0.418 / 1.442; 64-thread blocks 0.408 /
1.539; the checkpoints 2, 6 or 8 states ahead instead of 4: 0.377-0.380 / 1.413-1.432; the step inputs prefetched
too: 0.389 / 1.492. The training step 24.9 -> 23.8 ms.

Design 4 since session 15: pass 1 as a kernel of its own, and the dB/dC transposition every second state (FLUSH 2).
First form (pass 1 apart in design 4's pairs, 128 threads, 80 registers, 6 blocks an SM allowed), measured (H200,
call 2, batch 64 / 256): session 14's build 0.385 / 1.426 ms; FLUSH 2 0.378 / 1.376; pass 1 apart 0.392 / 1.390;
both 0.374 / 1.300; at 8 blocks (64 registers: it spills) 0.454 / 1.497. In the step's profile pass 1's kernel took
87.7 us and pass 2's 250.2 (the two in one kernel 349); the training step 23.7, 23.8 -> 23.4, 23.5 ms. Nsight Compute
on that pass 1: 2.6 active warps a scheduler, not the 6 blocks' 12: batch 64's grid is 384 blocks, 2.9 an SM. So pass
1 now runs a thread per channel (256 threads a block: twice the warps), its A in registers, 64 registers (4 blocks an
SM); "pass 1 apart at 3 blocks" is that kernel at 80 registers.

Rejected (``--list --all`` compiles them; design 1 with AHEAD 4 spills 40 B): every tighter register cap spills
design 1: 256 threads at 3 blocks/SM (80 registers) 556 B (632 with NVRTC 13.0), 128 at 5 (96) 356 B, 128 at 6
(80) 556 B, 64 at 10 (96) 432 B, 64 at 12 (80) 664 B; no cap (1 block/SM, 255 registers) spills too (256 threads:
196 B; 128: 216 B). 512 threads do not fit the 48 KB of static shared memory (a[N][THREADS] and the warp rows:
91 KB; designs 0 and 1 pass no dynamic shared memory); nor do 8 steps at 256 threads (70 KB); 8 steps at 128
threads fit (36,864 B) but spill 672 B at 128 registers. So every kept build of designs 0 and 1 runs 16 warps per
SM and 1.45 waves at batch 64 (384, 768 or 1,536 blocks on 132 SMs); design 3 runs 24 warps and one wave.

Measured (H200, session 7): kernel 0.954 / 0.951 / 0.972 ms at batch 64 and 2.933 / 2.905 / 2.971 at batch 256
for 256 / 128 / 64 threads; Triton's whole backward 2.266 and 7.944. A temporary macro for the state indices per
warp transposition (1, 2 or 4) changed the kernel by at most 4 % (0.913 at batch 64) and was not kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_CACHE_DISABLE", "1")  # NVRTC 12.9+'s cache would leave repeated builds without ptxas' report
import argparse
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from reidcam.reid.model.kernels import cuda_scan, triton_scan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cubin_tools import kernel_reports, kernel_static_shared  # noqa: E402  (tests/cubin_tools.py: ptxas' report)
from cuda_scan_variants import inputs as forward_inputs  # noqa: E402  (sibling bench scripts)
from cuda_scan_variants import median_ms  # noqa: E402
from speed_vs_vit import HBM_BYTES_PER_S  # noqa: E402

DIM, D_STATE, RANK = 768, 16, 24
SHARED_PER_SM, RESERVED_PER_BLOCK = 228 * 1024, 1024  # H100, H200: shared memory per SM, the driver's per block
GRAD_NAMES = ("dz", "dxc", "ddt", "dbc", "da_log", "d_skip", "dt_bias")
STORED_IN_COMPUTE_DTYPE = ("dz", "dxc", "ddt")  # bf16 here; the others fp32
VARIANT_TOLERANCE = 1e-5  # the same per-channel arithmetic in every build; dbc's sums differ in order (atomics)
TRITON_TOLERANCE = {name: 4e-3 if name in STORED_IN_COMPUTE_DTYPE else 2e-5 for name in GRAD_NAMES}  # the tests'


def _build(threads: int, min_blocks: int, steps: int = cuda_scan.BWD_STEPS, design: int | None = None,
           prefetch: int | None = None, **macros: int) -> tuple[int, int, dict]:
    """(threads, steps, macros); ``design`` and ``prefetch`` None: the source's defaults; ``macros``: more of
    scan_bwd.cu's, by name."""
    designs = {} if design is None else {"REIDCAM_BWD_DESIGN": design}
    prefetches = {} if prefetch is None else {"REIDCAM_PREFETCH": prefetch}
    return threads, steps, {"REIDCAM_MIN_BLOCKS": min_blocks, **designs, **prefetches, **macros}


# name: (threads per block, steps, macros). "default" passes nothing: the source's own defaults (256 / 2 / 4).
VARIANTS: dict[str, tuple[int, int, dict[str, int]]] = {
    "default": (cuda_scan.BWD_THREADS, cuda_scan.BWD_STEPS, {}),  # design 1 since session 8
    "128 threads": _build(128, 4),
    "ahead 1": (cuda_scan.BWD_THREADS, cuda_scan.BWD_STEPS, {"REIDCAM_AHEAD": 1}),
    # scan_bwd.cu's REIDCAM_BWD_DESIGN 0: the loads where they are needed (the default until session 8)
    "design 0": (cuda_scan.BWD_THREADS, cuda_scan.BWD_STEPS, {"REIDCAM_BWD_DESIGN": 0}),
    # design 3: design 1 in 80 registers, 24 warps per SM (dynamic shared memory); 96 and 128 registers beside
    "design 3": _build(256, 3, design=3),
    "design 3, 128 threads": _build(128, 6, design=3),
    # its L2 prefetch (scan_bwd.cu's REIDCAM_PREFETCH; the designed build, 2, prefetches the checkpoints and the
    # 16-bit kernels' step inputs)
    "design 3, 128, no prefetch": _build(128, 6, design=3, prefetch=0),
    "design 3, 128, checkpoints prefetched": _build(128, 6, design=3, prefetch=1),
    "design 3, 128 x 5": _build(128, 5, design=3),
    "design 3, 256 x 2": _build(256, 2, design=3),
    # design 4: design 3 with two adjacent channels a thread (168 registers, 3 blocks of 128 threads per SM: 12 warps;
    # the designed build prefetches the checkpoints only, REIDCAM_PREFETCH 1, and loads them 4 states ahead; since
    # session 15 its pass 1 runs as a kernel of its own, and it transposes dB/dC every second state)
    "design 4": _build(128, 3, design=4),
    "design 4, one state a transposition": _build(128, 3, design=4, REIDCAM_FLUSH=1),
    "design 4, pass 1 apart at 3 blocks": _build(128, 3, design=4, REIDCAM_CKPT_MIN_BLOCKS=3),
    "design 4, 64 threads": _build(64, 6, design=4),
    "design 4, step inputs prefetched": _build(128, 3, design=4, prefetch=2),
    "design 4, ahead 2": _build(128, 3, design=4, REIDCAM_AHEAD=2),
    "design 4, ahead 6": _build(128, 3, design=4, REIDCAM_AHEAD=6),
    "design 4, ahead 8": _build(128, 3, design=4, REIDCAM_AHEAD=8),
}
# compiled by --list --all only, to show why they are not timed (the docstring's numbers)
REJECTED: dict[str, tuple[int, int, dict[str, int]]] = {
    "64 threads": _build(64, 8),  # design 1 spills 16 B (f32: 84 B); as design 0 it was timed, 0.944 / 2.887 ms
    "256, 3 blocks (80 regs)": _build(256, 3),
    "256, no cap": _build(256, 1),
    "256, 8 steps": _build(256, 2, steps=8),
    "512 threads": _build(512, 1),
    "128, 5 blocks (96 regs)": _build(128, 5),
    "128, 6 blocks (80 regs)": _build(128, 6),
    "128, no cap": _build(128, 1),
    "128, 8 steps": _build(128, 4, steps=8),
    "64, 10 blocks (96 regs)": _build(64, 10),
    "64, 12 blocks (80 regs)": _build(64, 12),
    "ahead 4": (cuda_scan.BWD_THREADS, cuda_scan.BWD_STEPS, {"REIDCAM_AHEAD": 4}),
}


def blocks_per_sm(threads: int, registers: int, shared: int) -> int:
    """Resident blocks per SM of an H100/H200: registers allocated per warp by 256, shared memory with the
    driver's 1 KB per block, at most 64 warps and 32 blocks."""
    warps = threads // 32
    by_registers = 65536 // (-(-registers * 32 // 256) * 256) // warps
    return min(by_registers, SHARED_PER_SM // (shared + RESERVED_PER_BLOCK), 64 // warps, 32)


def compile_variant(build: tuple[int, int, dict[str, int]], arch: int) -> tuple[cuda_scan.CompiledSource | None, str]:
    """(cubin, or None where it did not compile; a one-line report): registers, spill bytes, static and dynamic
    shared memory and blocks per SM of the bf16 kernel (the f32 kernel's registers too when they differ), or why
    it did not compile. A build that spills ends its report with "-> spills"."""
    threads, steps, defines, *source = build
    try:
        compiled = cuda_scan.compile_scan_backward(arch, D_STATE, threads, steps, defines, *source)
    except cuda_scan.CudaKernelUnavailable as error:
        reason = re.search(r"(too much shared data \([^)]*\)|static assertion failed[^\n]*)", str(error))
        return None, f"does not compile: {reason.group(1) if reason else str(error)[:160]}"
    reports = kernel_reports(compiled.log)
    dynamic = cuda_scan.backward_dynamic_bytes(threads, D_STATE, steps, cuda_scan.backward_design(defines),
                                               cuda_scan.backward_flush(defines))
    bf16 = reports[cuda_scan.backward_kernel_name(torch.bfloat16)]
    static = kernel_static_shared(compiled.log)[cuda_scan.backward_kernel_name(torch.bfloat16)]  # pass 2's kernel
    f32 = reports[cuda_scan.backward_kernel_name(torch.float32)]
    blocks = blocks_per_sm(threads, max(bf16[0], f32[0]), static + dynamic)
    text = (f"{bf16[0]} registers, {bf16[1]} B spill, {static} B smem"
            + (f" + {dynamic} B dynamic" if dynamic else "") + f", {blocks} blocks/SM ({blocks * threads // 32} warps)")
    if f32 != bf16:
        text += f" (f32 kernel: {f32[0]} registers, {f32[1]} B spill)"
    return compiled, text + ("" if max(bf16[1], f32[1]) == 0 else "  -> spills")


def compile_all(builds: dict[str, tuple], arch: int) -> dict[str, tuple[cuda_scan.CompiledSource | None, str]]:
    """NVRTC in threads (ctypes lets go of the GIL), the order of ``builds`` kept."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda build: compile_variant(build, arch), builds.values())
        return dict(zip(builds, results))


def spills(text: str) -> bool:
    return text.endswith("-> spills")


def describe(build: tuple[int, int, dict[str, int]]) -> str:
    threads, steps, defines = build[:3]
    design = defines.get("REIDCAM_BWD_DESIGN", 1)
    return (f"threads {threads}, min blocks {defines.get('REIDCAM_MIN_BLOCKS', 2)}, steps {steps}, "
            f"design {design}, ahead {defines.get('REIDCAM_AHEAD', 4 if design == 4 else 2)}")


class PrecompiledBackward(cuda_scan.CudaScanBackward):
    """CudaScanBackward loading a cubin compiled beforehand (compile_all), so that each build compiles once."""

    def __init__(self, build: tuple[int, int, dict[str, int]], compiled: cuda_scan.CompiledSource, arch: int) -> None:
        threads, steps, defines = build[:3]
        super().__init__(threads, steps, defines)
        self.compiled, self.arch = compiled, arch

    def compile(self, arch: int, d_state: int) -> cuda_scan.CompiledSource:
        """The precompiled cubin; CudaScanBackward.kernels loads it (and allows its dynamic shared memory)."""
        assert (arch, d_state) == (self.arch, D_STATE), (arch, d_state)
        return self.compiled


def inputs(batch: int, tokens: int):
    """The forward bench's inputs (the same for every build; z a strided view of xz as in the model) and a
    bf16 grad_out (as speed_vs_vit's backward timings)."""
    xc, z, dbl, tables = forward_inputs(batch, tokens, DIM, D_STATE, RANK)
    device_gen = torch.Generator(device="cuda").manual_seed(1)
    grad_out = torch.randn(batch, tokens, DIM, device="cuda", generator=device_gen).to(torch.bfloat16)
    return xc, z, dbl, tables, grad_out


def differences(got: triton_scan.ScanGrads, want: dict[str, torch.Tensor]) -> dict[str, float]:
    """max |got - want| / max |want| of each gradient."""
    out = {}
    for name in GRAD_NAMES:
        a, b = getattr(got, name).float(), want[name]
        out[name] = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    return out


def summary(diffs: dict[str, float], tolerance: dict[str, float]) -> str:
    worst = max(diffs, key=lambda name: diffs[name] / tolerance[name])
    over = [name for name in GRAD_NAMES if diffs[name] > tolerance[name]]
    others = max((diffs[n] for n in GRAD_NAMES if n != "dbc"), default=0.0)
    return (f"max rel diff {diffs[worst]:.1e} ({worst}); dbc {diffs['dbc']:.1e}, others {others:.1e}; "
            + ("ok" if not over else "OVER TOLERANCE: " + ", ".join(f"{n} {diffs[n]:.1e}" for n in over)))


def list_builds(arch: int, with_rejected: bool) -> int:
    builds = {**VARIANTS, **(REJECTED if with_rejected else {})}
    results = compile_all(builds, arch)
    print(f"scan_bwd.cu for sm_{arch}, d_state {D_STATE}:")
    spilled = []
    for name, (compiled, text) in results.items():
        kept = name in VARIANTS
        print(f"  {'kept    ' if kept else 'rejected'} {name:<26} {describe(builds[name]):<64} {text}")
        if kept and (compiled is None or spills(text)):
            spilled.append(name)
    if spilled:
        print(f"kept builds that spill or fail on sm_{arch}: {', '.join(spilled)}")
    return 1 if spilled else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--tokens", type=int, default=140)
    parser.add_argument("--reps", type=int, default=20, help="timed calls per median")
    parser.add_argument("--no-triton", action="store_true", help="skip Triton's backward (its autotuning compiles)")
    parser.add_argument("--list", action="store_true", help="only compile the builds and print their registers")
    parser.add_argument("--all", action="store_true", help="with --list: the rejected builds too")
    parser.add_argument("--arch", type=int, default=90, help="with --list: the sm_ to compile for")
    parser.add_argument("--earlier-source", type=Path, default=None,
                        help="also time design 3 (128 threads, as the mixer builds it) from this copy of scan_bwd.cu "
                             "(an A/B against an edit)")
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    if args.earlier_source is not None:
        variants["design 3, earlier source"] = (*VARIANTS["design 3, 128 threads"], args.earlier_source)
    if args.list:
        return list_builds(args.arch, args.all)

    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    props = torch.cuda.get_device_properties(0)
    print(f"{torch.cuda.get_device_name()} ({props.multi_processor_count} SMs) | torch {torch.__version__}", flush=True)
    compiled = compile_all(variants, arch)
    scans = {}
    for name, (cubin, text) in compiled.items():
        print(f"  {name:<22} {describe(variants[name]):<64} sm_{arch}: {text}")
        if cubin is not None:
            scans[name] = PrecompiledBackward(variants[name], cubin, arch)
    if "default" not in scans or spills(compiled["default"][1]):
        print("the default build did not compile without spills: nothing to compare against")
        return 1
    batches = [int(b) for b in args.batches.split(",")]
    print(f"\nbackward scan, bf16, {args.tokens} tokens, d_inner {DIM}, d_state {D_STATE}, dt_rank {RANK}; "
          f"ms per call (median of {args.reps}), whole backward() and the kernel alone\n")
    print("| build | batch | blocks | backward() ms | kernel ms | gradients against the default build |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    data, references = {}, {}
    failed = 0
    for batch in batches:
        data[batch] = inputs(batch, args.tokens)
        for name, scan in scans.items():
            grads = scan.backward(*data[batch])
            torch.cuda.synchronize()
            if name == "default":
                references[batch] = {n: getattr(grads, n).float() for n in GRAD_NAMES}
                check = "(reference)"
            else:
                diffs = differences(grads, references[batch])
                check = summary(diffs, dict.fromkeys(GRAD_NAMES, VARIANT_TOLERANCE))
                failed += "OVER" in check
            del grads
            call_ms = median_ms(lambda: scan.backward(*data[batch]), args.reps)
            kernel_ms = median_ms(scan.launcher(*data[batch])[0], args.reps)
            blocks = -(-DIM // cuda_scan.backward_block_channels(scan.threads, scan.design)) * 2 * batch
            print(f"| {name} | {batch} | {blocks} | {call_ms:.3f} | {kernel_ms:.3f} | {check} |", flush=True)
    if not args.no_triton:
        for batch in batches:  # after the CUDA rows: the first call autotunes (compiles) Triton's kernel
            grads = triton_scan.scan_backward(*data[batch])
            check = summary(differences(grads, references[batch]), TRITON_TOLERANCE)
            del grads
            ms = median_ms(lambda: triton_scan.scan_backward(*data[batch]), args.reps)
            print(f"| Triton scan_backward | {batch} | - | {ms:.3f} | - | {check} |", flush=True)
    floors = ", ".join(f"batch {b} {2 * b * args.tokens * DIM * 2 * 7 / HBM_BYTES_PER_S * 1e3:.3f} ms" for b in batches)
    print(f"\nmemory floor as speed_vs_vit's (bf16 xc, pre, z, g read, dz, dxc, ddt written; "
          f"{HBM_BYTES_PER_S / 1e12:.2f} TB/s): {floors}")
    if failed:
        print(f"{failed} build(s) differ from the default beyond {VARIANT_TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
