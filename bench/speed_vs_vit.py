"""ReIDMamba-S against ViT-B/16 on one GPU (issue 6): speed first, then correctness of the "triton" backend.

    PYTHONPATH=. timeout 300 python bench/speed_vs_vit.py --timing-only --backends triton --no-autotune --quick
    PYTHONPATH=. python bench/speed_vs_vit.py                 # everything
    PYTHONPATH=. python bench/speed_vs_vit.py --quick         # 256x128 s16 only, then correctness
    PYTHONPATH=. python bench/speed_vs_vit.py --checks-only   # correctness only
    PYTHONPATH=. python bench/speed_vs_vit.py --smoke         # CPU, TRITON_INTERPRET=1, tiny shapes

Every stage prints a line "[seconds since start] stage" at once, so a run cut short shows where it was
(the first call of each triton kernel compiles it: tens of seconds with autotuning, which compiles and
times every tile config; --no-autotune launches one fixed config per kernel).
1. The table of the issue: per input size (256x128 s16 first), images/s of ViT-B/16 (timm, fused
   attention), then of ReIDMamba-S per scan backend at batch 256 (bf16 autocast, eval), and train-step
   time and peak memory at batch 64. Medians of CUDA-event timings after warm-up. Variant "triton" is
   the model as it runs with that backend (fused add+RMSNorm on); "triton-plain-norm" forces the
   unfused add + RMSNorm, to show what the fusion buys. Written to $OUT/speed.md when $OUT is set,
   after every measurement, so a run cut short keeps what it measured.
2. The mixer core alone, kernel by kernel, against the memory floor (forward at batch 256, forward +
   backward at batch 64), and which tile configs the autotuner picked (--skip-core skips it).
3. Correctness (skipped with --timing-only) of the mixer core at the small model's shapes (d_inner 768,
   d_state 16, dt_rank 24, 140 tokens): output and every gradient of the triton backend against the
   torch backend (and the mamba-ssm "cuda" backend when it imports), fp32 and bf16, all measured against
   a float64 run; then whole-model embeddings. Any failure ends the run with "ERROR: ..." and exit 1.
Needs torch (+ triton on CUDA); timm and mamba-ssm are optional (a built-in ViT-B/16 stands in for timm).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton kernels

import torch
import torch.nn.functional as F
from torch import nn

from reidcam.reid.engine.graphed_step import GraphedStep
from reidcam.reid.model import build_model
from reidcam.reid.model.fp32_products import product_fp32
from reidcam.reid.model.scan import (
    DirectionParams, available_backends, bidirectional_mixer_core_packed, new_weight_memo, weight_memo,
)

FIELDS = ("conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D")
ALL_SIZES = ("256x128s16", "256x128s12", "384x128s12", "512x256s16", "768x384s16")
HBM_BYTES_PER_S = 3.35e12  # H100 SXM HBM3 peak; the floors below use it
SFU_OPS_PER_S = 132 * 16 * 1.98e9  # H100 SXM: 16 MUFU results per clock per SM at the boost clock


@dataclass(frozen=True)
class Size:
    height: int
    width: int
    stride: int

    @classmethod
    def parse(cls, text: str) -> Size:
        dims, stride = text.lower().split("s")
        height, width = dims.split("x")
        return cls(int(height), int(width), int(stride))

    @property
    def label(self) -> str:
        return f"{self.height}x{self.width} s{self.stride}"

    @property
    def grid(self) -> tuple[int, int]:
        return (self.height - 16) // self.stride + 1, (self.width - 16) // self.stride + 1


@dataclass
class Settings:
    device: torch.device
    smoke: bool
    infer_batch: int = 256
    train_batch: int = 64
    num_classes: int = 751
    core_shape: tuple[int, int, int, int, int] = (4, 140, 768, 16, 24)  # batch, tokens, d_inner, d_state, rank
    backends: list[str] = field(default_factory=list)
    timed: tuple[str, ...] = ("triton", "cuda")
    plain_norm: bool = True  # also time triton with the unfused add + RMSNorm
    triton_fwd: bool = True  # also time triton with the Triton forward scan instead of the CUDA one
    started: float = field(default_factory=time.perf_counter)

    def stage(self, text: str) -> None:
        """One progress line, "[seconds since start] text", flushed at once."""
        print(f"[{time.perf_counter() - self.started:7.1f} s] {text}", flush=True)


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], settings: Settings, warmup: int = 2, min_reps: int = 3,
              max_reps: int = 30, budget_s: float = 1.5) -> float:
    """Median wall time of fn in ms (CUDA events on a GPU), repeated until budget_s or max_reps.

    A smoke run only checks that everything runs: one warm-up, one timed call.
    """
    device = settings.device
    if settings.smoke:
        warmup, min_reps, max_reps = 1, 1, 1
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start_all < budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# 1. correctness of the mixer core
# ------------------------------------------------------------------------------------------------


def random_direction(dim: int, d_state: int, rank: int, gen: torch.Generator) -> DirectionParams:
    """Parameters near Mamba's init (dt in [1e-3, 0.1], S4D-real A), slightly perturbed."""
    dt = torch.exp(torch.rand(dim, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return DirectionParams(
        conv_weight=torch.randn(dim, 4, generator=gen) * 0.5,
        conv_bias=torch.randn(dim, generator=gen) * 0.1,
        x_proj_weight=torch.randn(rank + 2 * d_state, dim, generator=gen) / math.sqrt(dim),
        dt_proj_weight=(torch.rand(dim, rank, generator=gen) * 2 - 1) / math.sqrt(rank),
        dt_proj_bias=dt + torch.log(-torch.expm1(-dt)),
        A_log=torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(dim, 1)
        + 0.1 * torch.randn(dim, d_state, generator=gen),
        D=torch.ones(dim) + 0.1 * torch.randn(dim, generator=gen),
    )


def core_outputs(backend: str, xz: torch.Tensor, fwd: DirectionParams, bwd: DirectionParams, grad_out: torch.Tensor,
                 dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Output and gradients (w.r.t. xz and every parameter) of the mixer core, as float64 on the CPU.

    Leaves are float64 for the exact run and fp32 otherwise; a bf16 run feeds bf16 x, z under autocast,
    as the model does.
    """
    leaf_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = {"xz": xz.to(device, leaf_dtype).requires_grad_(True)}
    params = []
    for tag, p in (("fwd", fwd), ("bwd", bwd)):
        values = {f: getattr(p, f).to(device, leaf_dtype).requires_grad_(True) for f in FIELDS}
        leaves.update({f"{tag}.{f}": v for f, v in values.items()})
        params.append(DirectionParams(**values))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = bidirectional_mixer_core_packed(leaves["xz"].to(dtype), params[0], params[1], backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(device, out.dtype), allow_unused=True)
    result = {"out": out.detach().double().cpu()}
    for (name, leaf), g in zip(leaves.items(), grads):
        result[name] = (torch.zeros_like(leaf) if g is None else g).double().cpu()
    return result


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def check_core(settings: Settings) -> list[str]:
    """Compares the triton backend with the references; returns the failures (empty when all pass)."""
    device = settings.device
    batch, length, dim, d_state, rank = settings.core_shape
    gen = torch.Generator().manual_seed(0)
    fwd, bwd = random_direction(dim, d_state, rank, gen), random_direction(dim, d_state, rank, gen)
    xz = torch.randn(batch, length, 2 * dim, generator=gen)
    grad_out = torch.randn(batch, length, dim, generator=gen)
    exact = core_outputs("naive", xz.double(), _to64(fwd), _to64(bwd), grad_out.double(), torch.float64, device)
    refs = [b for b in ("torch", "cuda") if b in settings.backends]
    failures: list[str] = []
    # bf16: as close to float64 as the references within a few roundings; the interpreter truncates
    # fp32 -> bf16 instead of rounding to nearest, which about doubles its bf16 errors
    bf16_factor = 5.0 if settings.smoke else 3.0
    for dtype in (torch.float32, torch.bfloat16):
        errors = {}
        for label, kernels in _scan_kernels(settings):
            with _scan_kernel_env(kernels):
                errors[label] = _errors(core_outputs("triton", xz, fwd, bwd, grad_out, dtype, device), exact)
        for ref in refs:
            try:
                errors[ref] = _errors(core_outputs(ref, xz, fwd, bwd, grad_out, dtype, device), exact)
            except Exception:  # a broken reference is not a failure of the triton backend
                traceback.print_exc()
                print(f"  reference backend {ref!r} failed at {dtype}; left out of the comparison")
        _print_errors(dtype, errors)
        refs_ok = [b for b in refs if b in errors]
        if not refs_ok:
            failures.append(f"{dtype}: no reference backend ran")
            continue
        for label, _ in _scan_kernels(settings):
            for name, err in errors[label].items():
                ref_err = max(errors[b][name] for b in refs_ok)
                if dtype == torch.float32:
                    # the bound (1e-3), or as close to float64 as the references themselves
                    ok = err < 1e-3 or err <= 2.0 * ref_err
                else:
                    ok = err <= bf16_factor * ref_err + 1e-3
                if not ok:
                    failures.append(f"{dtype} {name}: {label} err {err:.2e} vs reference err {ref_err:.2e}")
    return failures


def _scan_kernels(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """(label, {REIDCAM_SCAN_FWD, REIDCAM_SCAN_BWD, REIDCAM_CONV_BWD}) of each choice of kernels to check: on a GPU
    the CUDA forward with the Triton backwards and with the CUDA backwards (scan and conv; strict, so a kernel that
    fails to compile is a failure), and the Triton forward; in the interpreter only Triton."""
    triton = {"REIDCAM_SCAN_FWD": "triton", "REIDCAM_SCAN_BWD": "triton", "REIDCAM_CONV_BWD": "triton"}
    if settings.smoke:
        return [("triton", triton)]
    return [("triton", {**triton, "REIDCAM_SCAN_FWD": "cuda"}),
            ("triton-cbwd", {"REIDCAM_SCAN_FWD": "cuda", "REIDCAM_SCAN_BWD": "cuda", "REIDCAM_CONV_BWD": "cuda"}),
            ("triton-tfwd", triton)]


class _scan_kernel_env:
    """The scan kernels' environment variables set for a block, then restored."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def __enter__(self) -> None:
        self.saved = {name: os.environ.get(name) for name in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _to64(p: DirectionParams) -> DirectionParams:
    return DirectionParams(**{f: getattr(p, f).double() for f in FIELDS})


def _errors(got: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: rel_err(got[name], exact[name]) for name in exact}


def _print_errors(dtype: torch.dtype, errors: dict[str, dict[str, float]]) -> None:
    backends = list(errors)
    print(f"\nmixer core, {dtype}: relative error against float64 (output, then gradients)")
    print(f"  {'tensor':<22}" + "".join(f"{b:>12}" for b in backends))
    for name in errors[backends[0]]:
        print(f"  {name:<22}" + "".join(f"{errors[b][name]:>12.2e}" for b in backends))


def run_checks(settings: Settings) -> list[str]:
    """Correctness of the triton backend; returns the problems found (empty when all is well)."""
    settings.stage("correctness: mixer core fp32 and bf16 against float64 (compiles the fp32 kernels)")
    with _no_tf32():
        problems = _check_or_error(settings)
        if not problems:
            print("\ncorrectness: triton backend OK (fp32 and bf16, forward and all gradients)")
        problems += check_model(settings)
    return problems


def check_model(settings: Settings) -> list[str]:
    """Embeddings of the whole network (fp32, eval): triton (with the fused add+norm), and triton with
    the plain add + RMSNorm, against the torch backend."""
    size = Size(32, 16, 16) if settings.smoke else Size(256, 128, 16)
    torch.manual_seed(0)
    model = make_reidmamba(size, 0, settings.smoke).to(settings.device).eval()
    images = torch.randn(2, 3, size.height, size.width, device=settings.device)
    embeddings = {}
    for variant in ("torch", "triton", "triton-plain-norm"):
        select_variant(model, variant, settings)
        with torch.no_grad():
            embeddings[variant] = attempt(f"model embedding, {variant}", lambda: model(images).double(), [])
    problems = []
    for variant in ("triton", "triton-plain-norm"):
        got = embeddings[variant]
        err = float("inf") if got is None else rel_err(got, embeddings["torch"])
        print(f"model embeddings, fp32, {variant} vs torch backend: rel err {err:.2e}")
        if not err < 1e-3:
            problems.append(f"model embeddings with {variant} differ from the torch backend: {err:.2e}")
    return problems


def _check_or_error(settings: Settings) -> list[str]:
    try:
        return check_core(settings)
    except Exception:  # a kernel that does not compile or run is a failed check, reported in full
        traceback.print_exc()
        return ["the triton backend raised (traceback above)"]


def attempt(label: str, fn: Callable[[], object], problems: list[str]) -> object | None:
    """fn(), or None after printing the traceback and noting the problem: one broken part of the
    benchmark must not cost the measurements of the others."""
    try:
        return fn()
    except Exception:
        traceback.print_exc()
        problems.append(f"{label} raised (traceback above)")
        print(f"  {label}: FAILED", flush=True)
        return None


class _no_tf32:
    """fp32 comparisons need true fp32 convolutions and matmuls."""

    def __enter__(self) -> None:
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


# ------------------------------------------------------------------------------------------------
# 2. the mixer core alone
# ------------------------------------------------------------------------------------------------


def core_microbench(settings: Settings) -> list[str]:
    """Kernel-by-kernel times of the triton mixer core at 256x128 s16 shapes; returns report lines."""
    from reidcam.reid.model.kernels import cuda_scan, mixer_core, triton_conv, triton_scan

    device = settings.device
    length = 140 if not settings.smoke else 11
    dim, d_state, rank = (768, 16, 24) if not settings.smoke else (16, 4, 2)
    batch = settings.infer_batch
    gen = torch.Generator().manual_seed(1)
    fwd, bwd = (random_direction(dim, d_state, rank, gen) for _ in range(2))
    fwd, bwd = (DirectionParams(**{f: getattr(p, f).to(device) for f in FIELDS}) for p in (fwd, bwd))
    xz = torch.randn(batch, length, 2 * dim, device=device, dtype=torch.bfloat16)
    x, z = xz.chunk(2, dim=-1)
    elems = batch * length * dim
    lines = [f"mixer core, bf16, batch {batch}, {length} tokens, d_inner {dim}, d_state {d_state}:"]

    conv = [triton_conv.ConvParams(p.conv_weight, p.conv_bias) for p in (fwd, bwd)]
    scan = [triton_scan.ScanParams(p.dt_proj_weight, p.dt_proj_bias, p.A_log, p.D) for p in (fwd, bwd)]
    wx = torch.stack([fwd.x_proj_weight, bwd.x_proj_weight]).to(torch.bfloat16)
    xc = triton_conv.biconv_forward(x, *conv)
    dbl = product_fp32(xc.view(2, -1, dim), wx.transpose(1, 2))
    tables = triton_scan.scan_tables(dbl, *scan, torch.bfloat16)
    exp_floor_ms = 2 * elems * d_state / SFU_OPS_PER_S * 1e3  # one exp2 per (token, channel, state, direction)
    pieces = {
        # name: (fn, minimum HBM bytes)
        "biconv x -> xc (Triton)": (lambda: triton_conv.biconv_forward(x, *conv), 2 * elems * 3),
    }
    if cuda_scan.conv_supports(x, *conv):  # each kernel that fits x (a view of xz), the default first
        for ch in cuda_scan.conv_channel_options(x):
            pieces[f"biconv x -> xc (CUDA c{ch})"] = (
                lambda ch=ch: mixer_core._CUDA_CONV.forward(x, *conv, channels=ch), 2 * elems * 3)
    pieces["x_proj bmm (both dirs)"] = (lambda: product_fp32(xc.view(2, -1, dim), wx.transpose(1, 2)), 2 * elems * 2)
    pieces["fused bi-scan (Triton)"] = (lambda: triton_scan.scan_forward(xc, z, dbl, tables), 2 * elems * 4)
    if cuda_scan.supports(xc, tables):
        pieces["fused bi-scan (CUDA)"] = (lambda: mixer_core._CUDA_SCAN.forward(xc, z, dbl, tables), 2 * elems * 4)
    for name, (fn, floor_bytes) in pieces.items():
        ms = median_ms(fn, settings)
        lines.append(f"  {name:<28} {ms:8.3f} ms   memory floor {floor_bytes / HBM_BYTES_PER_S * 1e3:6.3f} ms"
                     f"   ({floor_bytes / (ms * 1e-3) / 1e9:7.0f} GB/s)")
    lines.append(f"  {'':<28} {'':>8}      exp floor of the scan {exp_floor_ms:6.3f} ms (MUFU)")
    lines += _backward_scan_times(settings, fwd, bwd, scan, wx, length, dim)
    lines += _conv_backward_times(settings, fwd, bwd, length, dim)
    lines += _norm_times(settings, batch, length)
    with torch.inference_mode(), weight_memo(new_weight_memo()):  # as the embedder runs it
        for backend in [b for b in ("triton", "cuda") if b in settings.backends]:
            ms = median_ms(lambda: bidirectional_mixer_core_packed(xz, fwd, bwd, backend=backend), settings)
            lines.append(f"  whole core fwd, {backend:<14} {ms:8.3f} ms")
    lines += _core_train_times(settings, fwd, bwd, length, dim)
    lines.append(f"  autotuned scan configs: fwd {_best(triton_scan._scan_fwd_tuned)}  bwd {_best(triton_scan._scan_bwd_tuned)}")
    return lines


def _backward_scan_times(settings: Settings, fwd: DirectionParams, bwd: DirectionParams, scan: list, wx: torch.Tensor,
                         length: int, dim: int) -> list[str]:
    """The backward scan alone at the training batch, Triton against CUDA on the same inputs (the A/B of
    REIDCAM_SCAN_BWD); the floor counts the bf16 tensors read and written, not the CUDA kernel's scratch."""
    from reidcam.reid.model.kernels import cuda_scan, mixer_core, triton_conv, triton_scan

    batch = settings.train_batch
    xz = torch.randn(batch, length, 2 * dim, device=settings.device, dtype=torch.bfloat16)
    x, z = xz.chunk(2, dim=-1)
    conv = [triton_conv.ConvParams(p.conv_weight, p.conv_bias) for p in (fwd, bwd)]
    xc = triton_conv.biconv_forward(x, *conv)
    dbl = product_fp32(xc.view(2, -1, dim), wx.transpose(1, 2))
    tables = triton_scan.scan_tables(dbl, *scan, torch.bfloat16)
    grad_out = torch.randn(batch, length, dim, device=settings.device, dtype=torch.bfloat16)
    kernels = {"backward scan (Triton)": lambda: triton_scan.scan_backward(xc, z, dbl, tables, grad_out)}
    if cuda_scan.backward_supports(xc, z, dbl, tables):
        cuda_backward = mixer_core.cuda_scan_backward(xc, z, grad_out)
        kernels["backward scan (CUDA)"] = lambda: cuda_backward.backward(xc, z, dbl, tables, grad_out)
    floor_bytes = 2 * batch * length * dim * 2 * 7  # per direction: xc, pre, z, g read; dz, dxc, ddt written
    lines = []
    for name, fn in kernels.items():
        ms = median_ms(fn, settings)
        lines.append(f"  {name + f' b{batch}':<28} {ms:8.3f} ms   memory floor {floor_bytes / HBM_BYTES_PER_S * 1e3:6.3f} ms")
    return lines


def _conv_backward_times(settings: Settings, fwd: DirectionParams, bwd: DirectionParams, length: int,
                         dim: int) -> list[str]:
    """The conv backward alone at the training batch, Triton against CUDA on the same inputs (the A/B of
    REIDCAM_CONV_BWD; "CUDA t12": conv_bwd.cu with 12-token chunks, 124 registers against 16's 132), dx written
    into x's half of a packed gradient as in the mixer core; the floor counts x and both directions' dxc read and
    dx written (bf16), not the weight sums."""
    from reidcam.reid.model.kernels import cuda_scan, mixer_core, triton_conv

    batch = settings.train_batch
    xz = torch.randn(batch, length, 2 * dim, device=settings.device, dtype=torch.bfloat16)
    x = xz.chunk(2, dim=-1)[0]
    dx = torch.empty_like(xz).chunk(2, dim=-1)[0]
    dxc = torch.randn(2, batch, length, dim, device=settings.device, dtype=torch.bfloat16)
    conv = [triton_conv.ConvParams(p.conv_weight, p.conv_bias) for p in (fwd, bwd)]
    kernels = {"conv backward (Triton)": lambda: triton_conv.biconv_backward(x, dxc, *conv, dx)}
    if cuda_scan.conv_backward_supports(x, dxc, *conv, dx):
        kernels["conv backward (CUDA)"] = lambda: mixer_core._CUDA_CONV_BWD.backward(x, dxc, *conv, dx)
        twelve = cuda_scan.CudaConvBackward(tokens=12)
        kernels["conv backward (CUDA t12)"] = lambda: twelve.backward(x, dxc, *conv, dx)
    floor_bytes = batch * length * dim * 2 * 4  # x, dxc (two directions) read, dx written
    lines = []
    for name, fn in kernels.items():
        ms = median_ms(fn, settings)
        lines.append(f"  {name + f' b{batch}':<28} {ms:8.3f} ms   memory floor {floor_bytes / HBM_BYTES_PER_S * 1e3:6.3f} ms"
                     f"   ({floor_bytes / (ms * 1e-3) / 1e9:7.0f} GB/s)")
    return lines


def _norm_times(settings: Settings, batch: int, length: int) -> list[str]:
    """The block's "add + RMSNorm": the model's RMSNorm module against the fused kernel."""
    from reidcam.reid.model.kernels.add_rmsnorm import add_rms_norm
    from reidcam.reid.model.layers import RMSNorm

    device, dim = settings.device, 384 if not settings.smoke else 16
    norm = RMSNorm(dim).to(device)
    hidden = torch.randn(batch, length, dim, device=device, dtype=torch.bfloat16)
    residual = torch.randn(batch, length, dim, device=device)

    def unfused() -> object:
        res = (residual + hidden).float()
        return norm(res).to(torch.bfloat16), res

    def fused() -> object:
        return add_rms_norm(hidden, residual, norm.weight, norm.eps, out_dtype=torch.bfloat16)

    with torch.inference_mode():
        times = {name: median_ms(fn, settings) for name, fn in (("model", unfused), ("fused", fused))}
    floor = batch * length * dim * (2 + 4 + 4 + 2) / HBM_BYTES_PER_S * 1e3
    return [f"  add+RMSNorm ({batch}x{length}x{dim}): model's {times['model']:.3f} ms, fused {times['fused']:.3f} ms,"
            f" memory floor {floor:.3f} ms"]


def _core_train_times(settings: Settings, fwd: DirectionParams, bwd: DirectionParams, length: int, dim: int) -> list[str]:
    device = settings.device
    xz = torch.randn(settings.train_batch, length, 2 * dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    leaves = [getattr(p, f).detach().requires_grad_(True) for p in (fwd, bwd) for f in FIELDS]
    pf = DirectionParams(**dict(zip(FIELDS, leaves[:7])))
    pb = DirectionParams(**dict(zip(FIELDS, leaves[7:])))
    grad_out = torch.randn(settings.train_batch, length, dim, device=device, dtype=torch.bfloat16)
    lines = []
    runs = [(b, b, {}) for b in ("triton", "cuda") if b in settings.backends]
    if "triton" in settings.backends and not settings.smoke:  # the A/Bs of REIDCAM_SCAN_BWD and _CONV_BWD
        runs.insert(1, ("triton", "triton+cbwd", {"REIDCAM_SCAN_BWD": "cuda"}))
        runs.insert(2, ("triton", "tconv-bwd", {"REIDCAM_CONV_BWD": "triton"}))
    for backend, label, env in runs:
        def step() -> None:
            out = bidirectional_mixer_core_packed(xz, pf, pb, backend=backend)  # as the model calls it
            torch.autograd.backward(out, grad_out)
        with _scan_kernel_env(env):
            ms = median_ms(step, settings)
        lines.append(f"  core fwd+bwd batch {settings.train_batch}, {label:<11} {ms:8.3f} ms")
    return lines


def _best(tuned: object) -> str:
    cache = getattr(tuned, "cache", None) or {}
    return "; ".join(f"{key[:3]} -> {cfg}" for key, cfg in cache.items()) or "(not tuned: interpreter)"


# ------------------------------------------------------------------------------------------------
# 3. the models
# ------------------------------------------------------------------------------------------------


def make_reidmamba(size: Size, num_classes: int, smoke: bool) -> nn.Module:
    tiny = dict(dim=16, depth=2, branch_depth=1, num_cls_tokens=4, d_state=2) if smoke else {}
    return build_model("reidmamba_small", num_classes=num_classes, img_size=(size.height, size.width),
                       stride=size.stride, **tiny)


def make_vit(size: Size, num_classes: int, smoke: bool) -> nn.Module:
    """ViT-B/16 (timm's vit_base_patch16_224 at this image size), patch stride set to size.stride."""
    dims = dict(embed_dim=32, depth=2, num_heads=2) if smoke else dict(embed_dim=768, depth=12, num_heads=12)
    try:
        import timm
    except ImportError:
        return _VitB(size, num_classes, **dims)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=(size.height, size.width),
                              num_classes=num_classes, **dims)
    if size.stride != 16:
        embed = model.patch_embed
        embed.proj = nn.Conv2d(3, dims["embed_dim"], 16, stride=size.stride)
        embed.grid_size = size.grid
        embed.num_patches = size.grid[0] * size.grid[1]
        prefix = getattr(model, "num_prefix_tokens", 1)
        model.pos_embed = nn.Parameter(torch.zeros(1, prefix + embed.num_patches, dims["embed_dim"]))
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
    return model


class _VitB(nn.Module):
    """A plain ViT (pre-norm blocks, scaled_dot_product_attention), used when timm is missing."""

    def __init__(self, size: Size, num_classes: int, embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        rows, cols = size.grid
        self.patch = nn.Conv2d(3, embed_dim, 16, stride=size.stride)
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos = nn.Parameter(torch.zeros(1, 1 + rows * cols, embed_dim))
        self.blocks = nn.ModuleList(_VitBlock(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


class _VitBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


def select_variant(model: nn.Module, variant: str, settings: Settings) -> None:
    """Scan backend and add+norm path of a table variant: "triton" is the model as it runs with that
    backend (fused add+RMSNorm, automatic on CUDA; forced in a CPU smoke run so the path is exercised),
    "triton-plain-norm" the unfused add + RMSNorm, "triton-tfwd" the Triton forward scan instead of the
    CUDA one (kernels/cuda_scan.py), any other name a backend with its own path."""
    backend = variant.removesuffix("-plain-norm").removesuffix("-tfwd")
    os.environ["REIDCAM_SCAN_FWD"] = "triton" if variant.endswith("-tfwd") else "auto"
    model.set_scan_backend(backend)
    if variant == "triton-plain-norm":
        model.set_fused_add_norm(False)
    else:
        model.set_fused_add_norm(True if backend == "triton" and settings.smoke else None)


def images_per_s(model: nn.Module, size: Size, settings: Settings, graph: bool = False) -> float:
    """Inference throughput, in the scope of a weight memo of this measurement's own, as the embedder
    runs (the memo outlives the graph's replays, which read its tables; the weights stay frozen here)."""
    device = settings.device
    model.eval()
    images = torch.randn(settings.infer_batch, 3, size.height, size.width, device=device)
    memo = new_weight_memo()

    def forward() -> object:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16), weight_memo(memo):
            return model(images)

    if graph:
        forward = _cuda_graph(forward, device)
    return settings.infer_batch / (median_ms(forward, settings) / 1e3)


def _cuda_graph(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def train_step(model: nn.Module, size: Size, settings: Settings, graph: bool = False) -> tuple[float, float]:
    """(ms per SGD step, peak GiB) at settings.train_batch, bf16 autocast, CE on the logits; with ``graph``,
    forward, loss and backward replay as one CUDA graph, as ``reidcam train`` runs them (GraphedStep)."""
    device = settings.device
    model.train()
    images = torch.randn(settings.train_batch, 3, size.height, size.width, device=device)
    labels = torch.randint(0, settings.num_classes, (settings.train_batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def forward_backward(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(images)
            logits = out.logits if hasattr(out, "logits") else [out]
            loss = sum(F.cross_entropy(lg.float(), labels) for lg in logits)
        loss.backward()
        return loss.detach()

    graphed = GraphedStep(forward_backward, list(model.parameters()), enabled=graph, warmup=2)

    def step() -> None:
        graphed(images, labels)
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = median_ms(step, settings, max_reps=10)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del graphed
    return ms, peak


@dataclass
class Row:
    size: Size
    tokens_mamba: int
    tokens_vit: int
    vit_ips: float
    mamba_ips: dict[str, float]
    vit_train: tuple[float, float]
    mamba_train: dict[str, tuple[float, float]]
    vit_train_graph: tuple[float, float] = (float("nan"), float("nan"))


def measure_size(size: Size, settings: Settings, graphs: bool, problems: list[str],
                 publish: Callable[[Row], None]) -> Row:
    """ViT-B first, then each ReIDMamba-S variant; publish(row) after every measurement."""
    device = settings.device
    nan2 = (float("nan"), float("nan"))
    settings.stage(f"ViT-B/16 {size.label}: building")
    vit = make_vit(size, settings.num_classes, settings.smoke).to(device)
    settings.stage(f"ViT-B/16 {size.label}: inference, batch {settings.infer_batch}")
    vit_ips = attempt(f"ViT-B {size.label} inference", lambda: images_per_s(vit, size, settings), problems)
    settings.stage(f"ViT-B/16 {size.label}: {vit_ips or float('nan'):,.0f} img/s; training step, batch {settings.train_batch}")
    vit_train = attempt(f"ViT-B {size.label} training", lambda: train_step(vit, size, settings), problems)
    vit_train_graph = attempt(f"ViT-B {size.label} training in a CUDA graph",
                              lambda: train_step(vit, size, settings, graph=True), problems) if graphs else None
    del vit
    mamba = make_reidmamba(size, settings.num_classes, settings.smoke).to(device)
    row = Row(size, mamba.interleave_index.numel(), 1 + size.grid[0] * size.grid[1],
              vit_ips or float("nan"), {}, vit_train or nan2, {}, vit_train_graph or nan2)
    settings.stage(f"ViT-B/16 {size.label}: train step {row.vit_train[0]:.1f} ms, peak {row.vit_train[1]:.2f} GiB")
    publish(row)
    for variant in mamba_variants(settings):
        _measure_variant(mamba, variant, row, settings, graphs, problems)
        publish(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _measure_variant(mamba: nn.Module, variant: str, row: Row, settings: Settings, graphs: bool,
                     problems: list[str]) -> None:
    size, nan2 = row.size, (float("nan"), float("nan"))
    select_variant(mamba, variant, settings)
    label = f"ReIDMamba-S {variant} {size.label}"
    compiles = " (the first call compiles the triton kernels)" if variant.startswith("triton") else ""
    settings.stage(f"{label}: inference, batch {settings.infer_batch}{compiles}")
    row.mamba_ips[variant] = attempt(f"{label} inference", lambda: images_per_s(mamba, size, settings),
                                     problems) or float("nan")
    settings.stage(f"{label}: {row.mamba_ips[variant]:,.0f} img/s (ViT-B {row.vit_ips:,.0f})")
    if graphs and variant == "triton":
        settings.stage(f"{label}: inference in a CUDA graph")
        row.mamba_ips[f"{variant}+graph"] = attempt(
            f"{label} CUDA graph", lambda: images_per_s(mamba, size, settings, graph=True), problems
        ) or float("nan")
        settings.stage(f"{label}: {row.mamba_ips[f'{variant}+graph']:,.0f} img/s in a CUDA graph")
    settings.stage(f"{label}: training step, batch {settings.train_batch}{' (compiles the backward)' if compiles else ''}")
    row.mamba_train[variant] = attempt(f"{label} training", lambda: train_step(mamba, size, settings),
                                       problems) or nan2
    ms, gib = row.mamba_train[variant]
    settings.stage(f"{label}: train step {ms:.1f} ms, peak {gib:.2f} GiB (ViT-B {row.vit_train[0]:.1f} ms,"
                   f" {row.vit_train[1]:.2f} GiB)")
    if graphs and variant == "triton":
        row.mamba_train[f"{variant}+graph"] = attempt(
            f"{label} training in a CUDA graph", lambda: train_step(mamba, size, settings, graph=True), problems
        ) or nan2
        ms, gib = row.mamba_train[f"{variant}+graph"]
        settings.stage(f"{label}: train step in a CUDA graph {ms:.1f} ms, peak {gib:.2f} GiB (ViT-B"
                       f" {row.vit_train_graph[0]:.1f} ms, {row.vit_train_graph[1]:.2f} GiB)")


def mamba_variants(settings: Settings) -> list[str]:
    """Variants timed in the table: triton (as the model runs it), the stock kernels, then triton with
    the plain add + RMSNorm; the pure-PyTorch backend only in a smoke run (at batch 256 it needs tens of GB)."""
    timed = [b for b in settings.backends if b in settings.timed]
    variants = ["triton"] if "triton" in timed else []
    variants += ["triton-tfwd"] if "triton" in timed and settings.triton_fwd and not settings.smoke else []
    variants += [b for b in timed if b == "cuda" or (b == "torch" and settings.smoke)]
    return variants + (["triton-plain-norm"] if "triton" in timed and settings.plain_norm else [])


def markdown(rows: list[Row], settings: Settings, device_name: str) -> str:
    """Two tables: images/s at the inference batch, then train-step ms and peak GiB at the train batch."""
    variants = list(dict.fromkeys(v for r in rows for v in r.mamba_ips))
    trained = list(dict.fromkeys(b for r in rows for b in r.mamba_train))
    nan, nan2 = float("nan"), (float("nan"), float("nan"))
    lines = [
        f"ReIDMamba-S vs ViT-B/16 on {device_name}, bf16 autocast, medians of timed runs after warm-up"
        f" (CUDA events on a GPU).",
        "",
        f"Inference, eval mode, batch {settings.infer_batch}, images/s:",
        "",
        _md_row(["input", "tokens Mamba / ViT", "ViT-B/16", *variants, "best triton / ViT"]),
        _md_row(["---"] * (len(variants) + 4)),
    ]
    for r in rows:
        best = max([v for k, v in r.mamba_ips.items() if k.startswith("triton") and v == v] or [nan])
        lines.append(_md_row([r.size.label, f"{r.tokens_mamba} / {r.tokens_vit}", f"{r.vit_ips:,.0f}",
                              *[f"{r.mamba_ips.get(v, nan):,.0f}" for v in variants], f"{best / r.vit_ips:.2f}x"]))
    lines += [
        "",
        f"Training step (forward, backward, SGD step; CE on {settings.num_classes} classes), batch"
        f" {settings.train_batch}: ms / peak GiB:",
        "",
        _md_row(["input", "ViT-B/16", "ViT-B/16+graph", *trained]),
        _md_row(["---"] * (len(trained) + 3)),
    ]
    for r in rows:
        timed = [r.vit_train, r.vit_train_graph, *[r.mamba_train.get(b, nan2) for b in trained]]
        cells = [f"{ms:.1f} / {gib:.2f}" for ms, gib in timed]
        lines.append(_md_row([r.size.label, *cells]))
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x128 s16 only")
    parser.add_argument("--sizes", default=",".join(ALL_SIZES), help="comma list like 256x128s16,384x128s12")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--timing-only", action="store_true", help="skip the correctness checks")
    parser.add_argument("--checks-only", action="store_true", help="only the correctness checks")
    parser.add_argument("--no-autotune", action="store_true",
                        help="one tile config per autotuned scan kernel: far less compiling")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph row of the triton backend")
    parser.add_argument("--no-plain-norm", action="store_true", help="skip the triton-plain-norm variant")
    parser.add_argument("--no-triton-fwd", action="store_true", help="skip the triton-tfwd variant")
    parser.add_argument("--skip-core", action="store_true", help="skip the mixer-core kernel timings")
    parser.add_argument("--backends", default="triton,cuda",
                        help="scan backends timed in the table (correctness always uses every one that imports)")
    args = parser.parse_args(argv)
    if args.timing_only and args.checks_only:
        parser.error("--timing-only and --checks-only exclude each other")
    return args


def settings_for(args: argparse.Namespace) -> Settings:
    if args.smoke:
        settings = Settings(torch.device("cpu"), smoke=True, infer_batch=2, train_batch=2, num_classes=5,
                            core_shape=(1, 11, 16, 4, 2))
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA GPU (or --smoke for the CPU check of this script)")
        settings = Settings(torch.device("cuda"), smoke=False)
    settings.stage("importing the triton kernels")
    import reidcam.reid.model.kernels  # noqa: F401  registers "triton"

    if args.no_autotune:
        keep_one_scan_config()

    settings.backends = [b for b in ("triton", "cuda", "torch") if b in available_backends()]
    settings.timed = tuple(args.backends.split(",")) + (("torch",) if args.smoke else ())
    settings.plain_norm = not args.no_plain_norm
    settings.triton_fwd = not args.no_triton_fwd
    return settings


def run_table(args: argparse.Namespace, settings: Settings, device_name: str, problems: list[str]) -> str:
    """The speed table, size by size; $OUT/speed.md is rewritten after every measurement."""
    sizes = [Size.parse(s) for s in (["256x128s16"] if args.quick else args.sizes.split(","))]
    if args.smoke:
        sizes = [Size(40, 16, 12)]  # overlapping patches: exercises the stride-12 ViT patch embedding
    graphs = not args.no_graphs and settings.device.type == "cuda"
    rows: list[Row] = []

    def publish(row: Row) -> None:
        if os.environ.get("OUT"):
            Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
            Path(os.environ["OUT"], "speed.md").write_text(markdown([*rows, row], settings, device_name))

    for size in sizes:
        rows.append(measure_size(size, settings, graphs, problems, publish))
    return markdown(rows, settings, device_name)



def keep_one_scan_config() -> None:
    """Leave each autotuned scan kernel its first tile config, so that Triton compiles it once and
    runs no tuning benchmarks (forward 4x32, backward 4x32, one warp; bench/NOTES-speed.md, attempts 14-16)."""
    from reidcam.reid.model.kernels import triton_scan

    for tuned in (triton_scan._scan_fwd_tuned, triton_scan._scan_bwd_tuned):
        tuned.configs = tuned.configs[:1]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = settings_for(args)
    device_name = torch.cuda.get_device_name() if settings.device.type == "cuda" else "CPU (smoke test)"
    print(f"{device_name} | torch {torch.__version__} | backends {settings.backends} | timm "
          f"{'yes' if _has('timm') else 'no (built-in ViT-B)'} | autotune {'off' if args.no_autotune else 'on'}",
          flush=True)
    problems: list[str] = []
    if not args.checks_only:
        table = run_table(args, settings, device_name, problems)
        print("\n" + table, flush=True)
        if not args.skip_core:
            settings.stage("mixer core alone, kernel by kernel")
            lines = attempt("mixer-core timings", lambda: core_microbench(settings), problems)
            print("\n".join(lines or []), flush=True)
    if not args.timing_only:
        problems += run_checks(settings)
    settings.stage("done")
    if problems:
        print("ERROR: " + "\n  ".join(["problems (see above):", *problems]), file=sys.stderr)
        return 1
    return 0


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
