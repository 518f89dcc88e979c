"""The mixer's weight tables (both directions' x_proj weights stacked, and ``weight_tables``) in one launch.

In torch they are about eleven small kernels per block (stacks, casts, exp, neg, mul, a transposed
copy): ~280 launches and ~0.47 ms of GPU time per training step of 28 blocks on an H200, and eager
distributed training is launch-bound. One program owns BLOCK_D channels of one direction and writes every
table's columns (or rows) of them: a program per direction and channel block, where one program for both
directions' took 6.2 us a block at d_inner 768 on an H200 (24 programs, each a chain of dependent loads).

On the GPU the stacks and casts are torch's bit for bit (tests/test_kernels_tables.py checks): casts round to
nearest even as torch's. A = -exp(A_log) takes libdevice's expf, a precise expf as torch's (tl.exp is an
ex2.approx): on an H200 one process measured a and a2 equal to torch's in every case, another 3 ulp apart
(session 9), so the test allows 4 ulp there. Triton links libdevice with flush-to-zero, which changes only
subnormal results (A_log < -87, never a trained model's).
Triton's interpreter has neither: its bfloat16 cast truncates, so the kernel rounds by the bits there,
and its exp is numpy's, which may differ from torch's CPU exp in the last bit.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_scan import ScanParams, ScanTables, interpreting

_BLOCK_D = 32
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _cast(x, OUT: tl.constexpr, INTERPRETED: tl.constexpr):
    """fp32 x in OUT, rounded to nearest even as torch does; by the bits for bfloat16 in the interpreter,
    whose cast truncates (NaN as torch's CPU cast: 0x7FC0)."""
    if INTERPRETED and OUT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(OUT)


@triton.jit
def _exp(x, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return tl.exp(x)  # numpy's: the interpreter has no libdevice
    return tl.extra.cuda.libdevice.exp(x)


@triton.jit
def _direction_tables(
    xp_ptr, dtw_ptr, bias_ptr, alog_ptr, d_ptr,
    xp_out, dtw_out, bias_out, a_out, a2_out, d_out,
    direction, offs_d, mask_d, D, R, K, N, log2e,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """One direction's tables at channels offs_d; the outputs are stacked, direction first."""
    # x_proj (K, D) -> (2, K, D): a channel block is a column block
    offs_k = tl.arange(0, BLOCK_K)[:, None]
    mask = (offs_k < K) & mask_d[None, :]
    xp = tl.load(xp_ptr + offs_k * D + offs_d[None, :], mask=mask).to(tl.float32)
    tl.store(xp_out + direction * K * D + offs_k * D + offs_d[None, :],
             _cast(xp, xp_out.dtype.element_ty, INTERPRETED), mask=mask)
    # dt_proj (D, R) -> (2, D, R)
    offs_r = tl.arange(0, BLOCK_R)[None, :]
    mask = mask_d[:, None] & (offs_r < R)
    dtw = tl.load(dtw_ptr + offs_d[:, None] * R + offs_r, mask=mask).to(tl.float32)
    tl.store(dtw_out + direction * D * R + offs_d[:, None] * R + offs_r,
             _cast(dtw, dtw_out.dtype.element_ty, INTERPRETED), mask=mask)
    # A = -exp(A_log) (D, N), and A * log2(e) transposed (N, D): fp32, whatever the parameters' dtype
    offs_n = tl.arange(0, BLOCK_N)[None, :]
    mask = mask_d[:, None] & (offs_n < N)
    a = -_exp(tl.load(alog_ptr + offs_d[:, None] * N + offs_n, mask=mask).to(tl.float32), INTERPRETED)
    tl.store(a_out + direction * D * N + offs_d[:, None] * N + offs_n, a, mask=mask)
    tl.store(a2_out + direction * N * D + offs_n * D + offs_d[:, None], a * log2e, mask=mask)
    # the dt bias and D: fp32 vectors
    tl.store(bias_out + direction * D + offs_d, tl.load(bias_ptr + offs_d, mask=mask_d).to(tl.float32), mask=mask_d)
    tl.store(d_out + direction * D + offs_d, tl.load(d_ptr + offs_d, mask=mask_d).to(tl.float32), mask=mask_d)


@triton.jit
def _weight_tables_kernel(
    xp_f, dtw_f, bias_f, alog_f, d_f,
    xp_b, dtw_b, bias_b, alog_b, d_b,
    xp_out, dtw_out, bias_out, a_out, a2_out, d_out,
    D, R, K, N, log2e,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if tl.program_id(1) == 0:
        _direction_tables(xp_f, dtw_f, bias_f, alog_f, d_f, xp_out, dtw_out, bias_out, a_out, a2_out, d_out,
                          0, offs_d, mask_d, D, R, K, N, log2e, BLOCK_K, BLOCK_R, BLOCK_N, INTERPRETED)
    else:
        _direction_tables(xp_b, dtw_b, bias_b, alog_b, d_b, xp_out, dtw_out, bias_out, a_out, a2_out, d_out,
                          1, offs_d, mask_d, D, R, K, N, log2e, BLOCK_K, BLOCK_R, BLOCK_N, INTERPRETED)


def _direction(x_proj: torch.Tensor, p: ScanParams) -> tuple[torch.Tensor, ...]:
    return x_proj, p.dt_proj_weight, p.dt_bias, p.a_log, p.d_skip


def fusable(x_proj: tuple[torch.Tensor, torch.Tensor], fwd: ScanParams, bwd: ScanParams, dtype: torch.dtype) -> bool:
    """Whether the kernel serves these: CUDA tensors (any under the interpreter), contiguous, of one device,
    in a float dtype it reads, with both directions' shapes alike (else torch's stack says what is wrong)."""
    tensors = _direction(x_proj[0], fwd) + _direction(x_proj[1], bwd)
    device = tensors[0].device
    return (
        (device.type == "cuda" or interpreting())
        and dtype in _DTYPES
        and all(t.device == device and t.dtype in _DTYPES and t.is_contiguous() for t in tensors)
        and all(f.shape == b.shape for f, b in zip(tensors[:5], tensors[5:]))
        and tensors[0].dim() == 2 and tensors[1].dim() == 2 and tensors[3].dim() == 2
        and tensors[0].shape[1] == tensors[1].shape[0] == tensors[3].shape[0]
    )


def fused_weight_tables(
    x_proj: tuple[torch.Tensor, torch.Tensor], fwd: ScanParams, bwd: ScanParams, dtype: torch.dtype
) -> tuple[torch.Tensor, ScanTables]:
    """What ``torch.stack(x_proj).to(dtype)`` and ``weight_tables(fwd, bwd, dtype)`` return, from one launch
    (``fusable`` must hold). Fresh outputs and no host sync, so a CUDA graph may capture it; the kernel reads
    the parameters' memory, so no autograd graph is built."""
    k, dim = x_proj[0].shape
    rank, n = fwd.dt_proj_weight.shape[1], fwd.a_log.shape[1]
    new = x_proj[0].new_empty
    tables = ScanTables(
        dt=torch.empty(0),
        dt_weight=new((2, dim, rank), dtype=dtype),
        dt_bias=new((2, dim), dtype=torch.float32),
        a=new((2, dim, n), dtype=torch.float32),
        a2=new((2, n, dim), dtype=torch.float32),
        d_skip=new((2, dim), dtype=torch.float32),
    )
    stacked = new((2, k, dim), dtype=dtype)
    _weight_tables_kernel[(triton.cdiv(dim, _BLOCK_D), 2)](
        *_direction(x_proj[0], fwd), *_direction(x_proj[1], bwd),
        stacked, tables.dt_weight, tables.dt_bias, tables.a, tables.a2, tables.d_skip,
        dim, rank, k, n, math.log2(math.e),
        BLOCK_D=_BLOCK_D, BLOCK_K=triton.next_power_of_2(k), BLOCK_R=triton.next_power_of_2(rank),
        BLOCK_N=triton.next_power_of_2(n), INTERPRETED=interpreting(),
    )
    return stacked, tables
