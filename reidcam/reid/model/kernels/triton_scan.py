"""Fused bidirectional selective scan of the Mamba mixer core, as Triton kernels.

One program owns (one sequence b, BLOCK_D channels) and runs both scan directions over the sequence in
chunks of BLOCK_T tokens.

Layout, the thing that decides speed here: tiles are 2D (BLOCK_T tokens, BLOCK_D channels), with the
channels across lanes and warps and the tokens of a chunk inside each thread. The d_state = 16 states
are unrolled (tl.static_range), so each state is its own 2D tile:
* the recurrence over a chunk is an in-thread sequential scan (tl.associative_scan along the token
  axis, which lives in one thread): no shuffles;
* y = sum_n C_n h_n is a running sum over the unrolled states: no cross-lane reduction;
* the state carried between chunks enters through the chunk's first row, so the prefix products of
  the decays are never formed.
A 3D (tokens, channels, states) tile, the obvious alternative, puts the states across lanes. The sums
over states then cost about 4 shuffles per (token, channel, state), and that kernel was shuffle-bound
(ptxas/SASS counts for sm_90: ~31 instructions per (token, channel, state); this layout: ~11).

Forward (`scan_forward`): dt @ dt_proj^T is one batched GEMM in the compute dtype before the kernel
(the backward's too); per chunk the kernel reads tiles of xc and of it, adds the dt bias,
delta = softplus(pre) in fp32, and the x_proj output's B and C (fp32); then the 16 states. Computing the pre-activation inside, as
a tensor-core dot per chunk, forced 16-token chunks and held dt_proj in registers: 255 registers per
thread, 8 warps per SM, and a latency-bound scan (bench/NOTES-speed.md, attempts 14-15). The backward
direction walks the same memory from the end (tile row r is token L-1-r-c*BLOCK_T), so nothing is
flipped. The forward direction stores y_fwd into the output; the backward direction adds y_bwd,
applies the gate silu(z) and the 1/2, and overwrites it.

Backward (`scan_backward`), one program per (channel block, sequence, direction): pass 1 stores the
state at every chunk boundary in a per-program scratch; pass 2 walks the chunks in reverse, recomputes
the states from it and runs the adjoint dh_t = C_t gy_t + exp(delta_{t+1} A) dh_{t+1} as a forward scan
of the flipped rows (its carry also goes through the scratch). It writes dz, dxc (the scan's direct part) and the gradient of the dt pre-activation,
adds dB/dC over channel blocks with fp32 atomics, and leaves per-sequence partial sums for dA, dD and
the dt bias in one buffer (GradBuffers.parts), which one reduction sums (in the mixer core, one launch with the
weight gradients: triton_param_grads). The dt projection is precomputed for it, so its chunks need not match the
tensor-core tile.

All state and accumulation is fp32; xc, z and the output may be fp32 or bf16.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@dataclass(frozen=True)
class ScanBlocks:
    """Tile sizes of one scan kernel launch; channels per thread = block_d / (32 * num_warps).
    ``max_registers`` caps registers per thread (more warps per SM, at the price of some spilling)."""

    block_t: int
    block_d: int
    num_warps: int
    max_registers: int | None = None


# Used by the CPU interpreter (TRITON_INTERPRET=1), where tile size only changes test speed.
INTERPRETER_BLOCKS = ScanBlocks(block_t=8, block_d=8, num_warps=1)
# One channel per thread in the forward: with two, ptxas spills ~1 KB per thread (sm_90, 255
# registers; bench/NOTES-speed.md, attempt 12). The H100 autotuning of ReIDMamba-S (attempt 14) found
# the forward scan bound by latency, not arithmetic: 255 registers per thread left 8 warps per SM.
# With delta's pre-activation computed outside the kernel (attempt 15: no tensor-core dot, so no
# 16-token minimum and no dt_proj weights in registers), ptxas gives 80 registers at 4 tokens per
# chunk (24 warps per SM) and 151 at 8, with the same instructions per (token, channel, state).
# tests/test_kernels_sass.py compiles every config for sm_90 and bounds its spills.
# Session 4 (bias added in the kernel): 4x32 96 registers, 2.1 loads per cell (B and C are
# broadcast loads, one per token and state per thread); 2x32 64 registers; two channels per thread
# halve the loads (2x64: 128 registers, 4x64: 148). H200 autotuning: 0.61 / 0.66 / 0.70 / 0.83 ms
# per call at batch 256 (attempt 21). A program walks its whole sequence, so the last wave of
# programs decides much: at batch 256 (6,144 one-warp programs) 96 registers fit 21 warps per SM,
# 2.2 waves, the third 22 % full; capped at 80 (12 B of spill) 25 warps fit, 1.9 waves (attempt 25).
# The batch is part of the tuning key for that reason.
_FWD_CONFIGS = [
    ScanBlocks(4, 32, 1),
    ScanBlocks(4, 32, 1, max_registers=80),
    ScanBlocks(2, 32, 1),
]
# backward: delta comes precomputed, so chunks can be short. H100 autotuning (attempt 14): 2.4 / 3.2 /
# 5.3 / 9.1 ms at batch 64 for 32 / 64 (1 warp) / 64 (2 warps) / 128 channels, all at 255 registers
# (8 warps per SM). The second config caps the winner at 168 registers (12 warps per SM; ptxas spills
# 120 B): whether occupancy beats the spill is the autotuner's call on the GPU (attempt 16).
_BWD_CONFIGS = [
    ScanBlocks(4, 32, 1),
    ScanBlocks(4, 32, 1, max_registers=168),
]


def interpreting() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1), which must be set before this import."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _affine_combine(a_first, b_first, a_second, b_second):
    """Compose h -> a_first*h + b_first, then h -> a_second*h + b_second."""
    return a_first * a_second, b_first * a_second + b_second


@triton.jit
def _adjoint_combine(f_later, p_later, s_later, f_earlier, p_earlier, s_earlier):
    """Join two adjacent time segments of the adjoint recurrence dh_t = b_t + a_{t+1} dh_{t+1}.

    A segment [t..e] is summarised by f = a_t, p = prod_{t<r<=e} a_r and s = its local dh_t
    (sum over u in the segment of prod_{t<r<=u} a_r * b_u). In a reverse scan the first argument is
    the later segment, as in tl.associative_scan(reverse=True) and in a forward scan of flipped rows.
    """
    bridge = p_earlier * f_later
    return f_earlier, bridge * p_later, s_earlier + bridge * s_later


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) in fp32, with torch's threshold of 20 and a series for tiny exp(x)."""
    e = tl.exp(tl.minimum(x, 20.0))
    series = e * (1.0 - e * (0.5 - e * (1.0 / 3.0)))
    soft = tl.where(e < 1e-3, series, tl.log(1.0 + e))
    return tl.where(x > 20.0, x, soft)


@triton.jit
def _chunk_rows(c, L, DIR: tl.constexpr, BLOCK_T: tl.constexpr):
    """Token index of each tile row of chunk c in direction DIR, and which rows are real tokens."""
    rows = tl.arange(0, BLOCK_T)
    if DIR == 0:
        t = c * BLOCK_T + rows
    else:
        t = L - 1 - c * BLOCK_T - rows
    return t, (t >= 0) & (t < L)


@triton.jit
def _chunk_rows_rt(c, L, direction, BLOCK_T: tl.constexpr):
    """_chunk_rows for a direction known only at run time (0 forward, 1 backward)."""
    sign = 1 - 2 * direction
    t = direction * (L - 1) + sign * (c * BLOCK_T + tl.arange(0, BLOCK_T))
    return t, (t >= 0) & (t < L)


@triton.jit
def _row(tile, r: tl.constexpr, BLOCK_T: tl.constexpr):
    """Row r of a (BLOCK_T, BLOCK_D) tile. With the rows in one thread this folds to a register read
    (-0.0 is the exact additive identity, so the sum of the other rows compiles away)."""
    return tl.sum(tl.where(tl.arange(0, BLOCK_T)[:, None] == r, tile, -0.0), axis=0)


@triton.jit
def _state_row(tile, n: tl.constexpr, N: tl.constexpr):
    """Row n of an (N, BLOCK_D) per-state tile (states held in each thread)."""
    return tl.sum(tl.where(tl.arange(0, N)[:, None] == n, tile, -0.0), axis=0)


@triton.jit
def _chunk_states(decay, inp, h_in, BLOCK_T: tl.constexpr):
    """States of one chunk for one state index: h_t = decay_t h_{t-1} + inp_t, h_{-1} = h_in.

    h_in enters through the first row, so only the input half of the scan pairs is live and the
    compiler drops the decay products.
    """
    first = tl.arange(0, BLOCK_T)[:, None] == 0
    _, h = tl.associative_scan((decay, tl.where(first, inp + decay * h_in[None, :], inp)), 0, _affine_combine)
    return h


@triton.jit
def _fwd_direction(
    xc_ptr, z_ptr, dbl_ptr, pre_ptr, dt_bias_ptr, out_ptr, a2_ptr, dskip_ptr,
    b, offs_d, mask_d, Bsz, L, D, R, stride_zb, stride_zl,
    DIR: tl.constexpr, N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    E = R + 2 * N
    offs_n = tl.arange(0, N)
    # a2 is (2, N, D): row n holds A[:, n] * log2(e); loaded once, a state's row is a register read
    a2_t = tl.load(a2_ptr + DIR * N * D + offs_n[:, None] * D + offs_d[None, :], mask=mask_d[None, :], other=0.0)
    dskip = tl.load(dskip_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt_bias = tl.load(dt_bias_ptr + DIR * D + offs_d, mask=mask_d, other=0.0)
    seq_row = (DIR * Bsz + b).to(tl.int64) * L
    dbl_seq = dbl_ptr + seq_row * E
    carry = tl.zeros((N, BLOCK_D), tl.float32)
    for c in range(0, tl.cdiv(L, BLOCK_T)):
        t, mask_t = _chunk_rows(c, L, DIR, BLOCK_T)
        mask_td = mask_t[:, None] & mask_d[None, :]
        # rows past the sequence have delta = 0: their B and C never matter, so read a real row
        # instead of masking (masked loads cost a zeroing move and a predicate per value)
        dbl_rows = dbl_seq + tl.minimum(tl.maximum(t, 0), L - 1) * E
        tile = (seq_row + t[:, None]) * D + offs_d[None, :]
        u = tl.load(xc_ptr + tile, mask=mask_td, other=0.0).to(tl.float32)
        pre = tl.load(pre_ptr + tile, mask=mask_td, other=0.0).to(tl.float32) + dt_bias[None, :]
        delta = tl.where(mask_td, _softplus(pre), 0.0)
        du = delta * u
        y = dskip[None, :] * u
        for n in tl.static_range(N):
            b_n = tl.load(dbl_rows + R + n).to(tl.float32)
            c_n = tl.load(dbl_rows + R + N + n).to(tl.float32)
            decay = tl.exp2(delta * _state_row(a2_t, n, N)[None, :])
            h = _chunk_states(decay, du * b_n[:, None], _state_row(carry, n, N), BLOCK_T)
            y += c_n[:, None] * h
            carry = tl.where(offs_n[:, None] == n, _row(h, BLOCK_T - 1, BLOCK_T)[None, :], carry)
        out_ptrs = out_ptr + (b.to(tl.int64) * L + t[:, None]) * D + offs_d[None, :]
        if DIR == 0:
            tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask_td)
        else:
            y_fwd = tl.load(out_ptrs, mask=mask_td, other=0.0).to(tl.float32)
            zz = tl.load(z_ptr + b.to(tl.int64) * stride_zb + t[:, None] * stride_zl + offs_d[None, :],
                         mask=mask_td, other=0.0).to(tl.float32)
            gated = (y_fwd + y) * 0.5 * (zz * tl.sigmoid(zz))
            tl.store(out_ptrs, gated.to(out_ptr.dtype.element_ty), mask=mask_td)


# Integer arguments stay unspecialised (attempt 18): told that D and z's strides are multiples of 16,
# Triton vectorises the loads along the channels and spreads a chunk's tokens over lanes, and the
# in-thread scan becomes shuffles (sm_90: 7-9 shuffles and 26-33 instructions per (token, channel,
# state), 852 B of spill for the old 16x32 tile, against 0 shuffles and 11-14 instructions here).
_UNSPECIALISED_FWD = ["Bsz", "L", "D", "R", "stride_zb", "stride_zl"]
_UNSPECIALISED_BWD = [*_UNSPECIALISED_FWD, "n_state_chunks"]


@triton.jit(do_not_specialize=_UNSPECIALISED_FWD)
def _bimamba_scan_fwd_kernel(
    xc_ptr, z_ptr, dbl_ptr, pre_ptr, dt_bias_ptr, out_ptr, a2_ptr, dskip_f_ptr, dskip_b_ptr,
    Bsz, L, D, R, stride_zb, stride_zl,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    b = tl.program_id(1)
    _fwd_direction(xc_ptr, z_ptr, dbl_ptr, pre_ptr, dt_bias_ptr, out_ptr, a2_ptr, dskip_f_ptr,
                   b, offs_d, mask_d, Bsz, L, D, R, stride_zb, stride_zl, 0, N, BLOCK_T, BLOCK_D)
    # the backward direction reads back y_fwd written above by other threads of this program
    tl.debug_barrier()
    _fwd_direction(xc_ptr, z_ptr, dbl_ptr, pre_ptr, dt_bias_ptr, out_ptr, a2_ptr, dskip_b_ptr,
                   b, offs_d, mask_d, Bsz, L, D, R, stride_zb, stride_zl, 1, N, BLOCK_T, BLOCK_D)


@triton.jit
def _adjoint_scan(decay, rhs):
    """dh_t = rhs_t + decay_{t+1} dh_{t+1} within a chunk (zero after its last row).

    A forward scan of the flipped rows: with the rows inside one thread the flips are register
    renames, whereas tl.associative_scan(reverse=True) reverses lanes with shuffles even then
    (about 14 shuffles per (token, channel, state) in the sm_90 code).
    """
    ones = tl.full(decay.shape, 1.0, tl.float32)
    _, _, s = tl.associative_scan((tl.flip(decay, 0), ones, tl.flip(rhs, 0)), 0, _adjoint_combine)
    return tl.flip(s, 0)


@triton.jit
def _bwd_chunk_inputs(xc_ptr, pre_ptr, dt_bias, seq_row, t, mask_t, offs_d, mask_d, D):
    """u = xc, the dt pre-activation and delta of one chunk, (BLOCK_T, BLOCK_D); delta = 0 off the sequence."""
    mask_td = mask_t[:, None] & mask_d[None, :]
    offs = (seq_row + t[:, None]) * D + offs_d[None, :]
    u = tl.load(xc_ptr + offs, mask=mask_td, other=0.0).to(tl.float32)
    pre = tl.load(pre_ptr + offs, mask=mask_td, other=0.0).to(tl.float32) + dt_bias[None, :]
    return u, pre, tl.where(mask_td, _softplus(pre), 0.0)


@triton.jit(do_not_specialize=_UNSPECIALISED_BWD)
def _bimamba_scan_bwd_kernel(
    xc_ptr, z_ptr, g_ptr, dbl_ptr, pre_ptr, dt_bias_ptr, a2_ptr, dskip_ptr,
    dz_ptr, dxc_ptr, ddt_ptr, dbc_ptr, parts_ptr, state_ptr, dh_ptr,
    Bsz, L, D, R, stride_zb, stride_zl, n_state_chunks,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (channel block, sequence, direction); the directions are independent here
    (each writes its own share of dz), which doubles the programs of a small training batch. Its partial
    sums go to its sequence's N + 2 rows of parts (GradBuffers): dA's N, then dD's and the dt bias's."""
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    b = tl.program_id(1)
    direction = tl.program_id(2)
    E = R + 2 * N
    rows = tl.arange(0, BLOCK_T)
    n_chunks = tl.cdiv(L, BLOCK_T)
    seq = direction * Bsz + b
    seq_row = seq.to(tl.int64) * L
    dbl_seq = dbl_ptr + seq_row * E
    dskip = tl.load(dskip_ptr + direction * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt_bias = tl.load(dt_bias_ptr + direction * D + offs_d, mask=mask_d, other=0.0)
    a2_rows = a2_ptr + direction * N * D + offs_d  # a2 is (2, N, D): row n holds A[:, n] * log2(e)
    # scratch of this program: the state at each chunk boundary (chunk, n, d), then the adjoint carry (n, d)
    state_rows = state_ptr + seq.to(tl.int64) * n_state_chunks * N * D + offs_d
    dh_rows = dh_ptr + seq.to(tl.int64) * N * D + offs_d
    part_rows = parts_ptr + seq.to(tl.int64) * (N + 2) * D + offs_d

    # pass 1: the state before every chunk (the same threads store and later load each value)
    for n in tl.static_range(N):
        tl.store(state_rows + n * D, tl.zeros((BLOCK_D,), tl.float32), mask=mask_d)
    for c in range(0, n_chunks):
        t, mask_t = _chunk_rows_rt(c, L, direction, BLOCK_T)
        dbl_rows = dbl_seq + tl.minimum(tl.maximum(t, 0), L - 1) * E
        u, pre, delta = _bwd_chunk_inputs(xc_ptr, pre_ptr, dt_bias, seq_row, t, mask_t, offs_d, mask_d, D)
        du = delta * u
        for n in tl.static_range(N):
            a2_n = tl.load(a2_rows + n * D, mask=mask_d, other=0.0)
            h_in = tl.load(state_rows + (c * N + n) * D, mask=mask_d, other=0.0)
            decay = tl.exp2(delta * a2_n[None, :])
            h = _chunk_states(decay, du * tl.load(dbl_rows + R + n)[:, None], h_in, BLOCK_T)
            tl.store(state_rows + ((c + 1) * N + n) * D, _row(h, BLOCK_T - 1, BLOCK_T), mask=mask_d)
    tl.debug_barrier()

    # pass 2: chunks in reverse order
    d_skip = tl.zeros((BLOCK_D,), tl.float32)
    d_bias = tl.zeros((BLOCK_D,), tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t, mask_t = _chunk_rows_rt(c, L, direction, BLOCK_T)
        mask_td = mask_t[:, None] & mask_d[None, :]
        dbl_rows = dbl_seq + tl.minimum(tl.maximum(t, 0), L - 1) * E
        u, pre, delta = _bwd_chunk_inputs(xc_ptr, pre_ptr, dt_bias, seq_row, t, mask_t, offs_d, mask_d, D)
        du = delta * u
        tok = (b.to(tl.int64) * L + t[:, None]) * D + offs_d[None, :]
        zz = tl.load(z_ptr + b.to(tl.int64) * stride_zb + t[:, None] * stride_zl + offs_d[None, :],
                     mask=mask_td, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + tok, mask=mask_td, other=0.0).to(tl.float32)
        sig_z = tl.sigmoid(zz)
        gy = g * zz * sig_z * 0.5
        y = dskip[None, :] * u
        ddelta = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
        dh_b = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
        for n in tl.static_range(N):
            a2_n = tl.load(a2_rows + n * D, mask=mask_d, other=0.0)
            b_n = tl.load(dbl_rows + R + n)
            c_n = tl.load(dbl_rows + R + N + n)
            decay = tl.exp2(delta * a2_n[None, :])
            inp = du * b_n[:, None]
            h = _chunk_states(decay, inp, tl.load(state_rows + (c * N + n) * D, mask=mask_d, other=0.0), BLOCK_T)
            y += c_n[:, None] * h
            # the carry from the later chunk enters through the last row
            dh_in = tl.load(dh_rows + n * D, mask=mask_d & (cc > 0), other=0.0)
            rhs = c_n[:, None] * gy
            dh = _adjoint_scan(decay, tl.where(rows[:, None] == BLOCK_T - 1, rhs + dh_in[None, :], rhs))
            tl.store(dh_rows + n * D, _row(decay * dh, 0, BLOCK_T), mask=mask_d)
            q = dh * (h - inp)  # dh_t * exp(delta_t A) h_{t-1}
            ddelta += q * (a2_n / LOG2E)[None, :]
            dh_b += dh * b_n[:, None]
            d_a = tl.sum(q * delta, axis=0) + tl.load(part_rows + n * D, mask=mask_d & (cc > 0), other=0.0)
            tl.store(part_rows + n * D, d_a, mask=mask_d)
            dbc_rows = dbc_ptr + (seq_row + t) * (2 * N)
            tl.atomic_add(dbc_rows + n, tl.sum(dh * du, axis=1), mask=mask_t, sem="relaxed")
            tl.atomic_add(dbc_rows + N + n, tl.sum(h * gy, axis=1), mask=mask_t, sem="relaxed")
        out_offs = (seq_row + t[:, None]) * D + offs_d[None, :]
        dz = g * 0.5 * y * sig_z * (1.0 + zz * (1.0 - sig_z))
        tl.store(dz_ptr + out_offs, dz.to(dz_ptr.dtype.element_ty), mask=mask_td)
        dxc = delta * dh_b + dskip[None, :] * gy
        tl.store(dxc_ptr + out_offs, dxc.to(dxc_ptr.dtype.element_ty), mask=mask_td)
        ddt = tl.where(mask_td, (ddelta + u * dh_b) * tl.sigmoid(pre), 0.0)
        tl.store(ddt_ptr + out_offs, ddt.to(ddt_ptr.dtype.element_ty), mask=mask_td)
        d_skip += tl.sum(gy * u, axis=0)
        d_bias += tl.sum(ddt, axis=0)
    # dD and the dt bias: rows N and N + 1 of the sequence's, seq (N + 2) D + N D + offs_d, written as
    # (seq D + offs_d) + (seq (N + 1) + N) D: so ptxas (sm_90) spills no more than with three buffers, where
    # part_rows + N D spilled 12 B more in the capped config
    sum_rows = parts_ptr + (seq.to(tl.int64) * D + offs_d) + (seq.to(tl.int64) * (N + 1) + N) * D
    tl.store(sum_rows, d_skip, mask=mask_d)
    tl.store(sum_rows + D, d_bias, mask=mask_d)


def _as_triton_configs(blocks: list[ScanBlocks]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d}, num_warps=cfg.num_warps, maxnreg=cfg.max_registers)
        for cfg in blocks
    ]


def _autotune_options() -> dict:
    """Keep the tuning outcome in Triton's cache folder (TRITON_CACHE_DIR) where this Triton can
    (``cache_results``, Triton 3.2+): a machine then tunes each shape once, not in every process."""
    return {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


_scan_fwd_tuned = triton.autotune(
    configs=_as_triton_configs(_FWD_CONFIGS), key=["Bsz", "L", "D", "N"], **_autotune_options()
)(_bimamba_scan_fwd_kernel)
_scan_bwd_tuned = triton.autotune(
    configs=_as_triton_configs(_BWD_CONFIGS), key=["L", "D", "N"], reset_to_zero=["dbc_ptr"], **_autotune_options()
)(_bimamba_scan_bwd_kernel)


def _launch(kernel, tuned, grid_fn, *args, **meta):
    """Run the autotuned kernel on a GPU, or the plain one with small fixed tiles in the interpreter."""
    if interpreting():
        blocks = {"BLOCK_T": INTERPRETER_BLOCKS.block_t, "BLOCK_D": INTERPRETER_BLOCKS.block_d}
        kernel[grid_fn(blocks)](*args, **meta, **blocks)
    else:
        tuned[grid_fn](*args, **meta)


@dataclass(frozen=True)
class ScanParams:
    """One direction's scan parameters, contiguous; read in fp32 by the kernels whatever their dtype."""

    dt_proj_weight: torch.Tensor  # (D, R)
    dt_bias: torch.Tensor  # (D,)
    a_log: torch.Tensor  # (D, N)
    d_skip: torch.Tensor  # (D,)


@dataclass(frozen=True)
class ScanTables:
    """What the scan kernels read of both directions' parameters and of dt, derived once per forward
    pass and kept for the backward (each derivation is a small kernel launch, and a training step
    launched ~2,400 of them: BENCHMARKS.md, session 4)."""

    dt: torch.Tensor  # (2, B*L, R), compute dtype: the x_proj output's dt part
    dt_weight: torch.Tensor  # (2, D, R), compute dtype
    dt_bias: torch.Tensor  # (2, D) fp32
    a: torch.Tensor  # (2, D, N) fp32: A = -exp(A_log)
    a2: torch.Tensor  # (2, N, D) fp32: A * log2(e), one row of channels per state (a coalesced load)
    d_skip: torch.Tensor  # (2, D) fp32

    def dt_projection(self) -> torch.Tensor:
        """dt @ dt_proj^T, (2, B*L, D) in the compute dtype: delta's pre-activation less the bias, which the
        kernels add in fp32 (as mamba-ssm does). In bf16 a tensor-core GEMM writing half the bytes of an
        fp32 one; the fp32 version ran on FMA units at 0.21 ms per block, 17 % of inference."""
        return torch.bmm(self.dt, self.dt_weight.transpose(1, 2))


def scan_tables(
    dbl: torch.Tensor, fwd: ScanParams, bwd: ScanParams, dtype: torch.dtype, weights: ScanTables | None = None
) -> ScanTables:
    """The ScanTables of dbl (2, B*L, R + 2N) and the two directions' parameters, in compute dtype ``dtype``;
    ``weights``, the parameters' part (``weight_tables``) when the caller has it already."""
    weights = weights or weight_tables(fwd, bwd, dtype)
    return replace(weights, dt=dbl[..., : weights.dt_weight.shape[-1]].to(dtype))


def weight_tables(fwd: ScanParams, bwd: ScanParams, dtype: torch.dtype) -> ScanTables:
    """The ScanTables fields that depend on the parameters only (``dt`` empty): the same for every input."""
    a = -torch.exp(torch.stack([fwd.a_log, bwd.a_log]).to(torch.float32))
    return ScanTables(
        dt=torch.empty(0),
        dt_weight=torch.stack([fwd.dt_proj_weight, bwd.dt_proj_weight]).to(dtype),
        dt_bias=torch.stack([fwd.dt_bias, bwd.dt_bias]).to(torch.float32),
        a=a,
        a2=(a * math.log2(math.e)).transpose(1, 2).contiguous(),
        d_skip=torch.stack([fwd.d_skip, bwd.d_skip]).to(torch.float32),
    )


def scan_forward(xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables) -> torch.Tensor:
    """Gated, averaged output (B, L, D) of both scan directions.

    xc (2, B, L, D) contiguous; z (B, L, D) with a contiguous last dim; dbl (2, B*L, R + 2N) contiguous
    fp32 (the x_proj output: dt, B, C per token).
    """
    _, bsz, length, dim = xc.shape
    rank = tables.dt.shape[-1]
    d_state = tables.a.shape[-1]
    out = torch.empty((bsz, length, dim), device=xc.device, dtype=xc.dtype)
    _launch(
        _bimamba_scan_fwd_kernel, _scan_fwd_tuned,
        lambda meta: (triton.cdiv(dim, meta["BLOCK_D"]), bsz),
        xc, z, dbl, tables.dt_projection(), tables.dt_bias, out, tables.a2, tables.d_skip[0], tables.d_skip[1],
        bsz, length, dim, rank, z.stride(0), z.stride(1),
        N=d_state,
    )
    return out


@dataclass(frozen=True)
class ScanGrads:
    dz: torch.Tensor  # (B, L, D), z's dtype
    dxc: torch.Tensor  # (2, B, L, D): the scan's own dependence on xc (not through x_proj)
    ddt: torch.Tensor  # (2, B, L, D): gradient of the dt_proj output before softplus
    dbc: torch.Tensor  # (2, B*L, 2N) fp32: gradients of B and C
    parts: torch.Tensor  # (2, B, N + 2, D) fp32: per-sequence partial sums of dA, dD, the dt bias (GradBuffers)
    a: torch.Tensor  # (2, D, N) fp32: A (ScanTables.a), for dA_log

    @cached_property
    def _parameter_grads(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mixer core sums the partial sums in its own launch with the weight gradients (triton_param_grads)
        and reads none of the properties below."""
        return parameter_grads(self.parts, self.a)

    @property
    def da_log(self) -> torch.Tensor:
        """(2, D, N) fp32, forward direction first."""
        return self._parameter_grads[0]

    @property
    def d_skip(self) -> torch.Tensor:
        """(2, D) fp32."""
        return self._parameter_grads[1]

    @property
    def dt_bias(self) -> torch.Tensor:
        """(2, D) fp32."""
        return self._parameter_grads[2]


def parameter_grads(parts: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dA_log (2, D, N), dD (2, D), the dt bias's gradient (2, D)) from the per-sequence partial sums ``parts``
    (2, B, N + 2, D) and A (2, D, N): summed over the sequences, and dL/dA times dA/dA_log = A."""
    d_state = a.shape[-1]
    sums = parts.sum(1)
    return sums[:, :d_state].transpose(1, 2) * a, sums[:, d_state], sums[:, d_state + 1]


@dataclass(frozen=True)
class GradBuffers:
    """What a backward scan kernel writes (either backend's): per-direction and per-sequence shares, of which
    ``grads`` sums dz's into ScanGrads (the partial sums are summed by ScanGrads when asked, or by the mixer core).

    The per-sequence partial sums of dA, dD and the dt bias share one buffer, ``parts``, so that one
    reduction sums them all, where three reductions and their launches summed three buffers."""

    dz: torch.Tensor  # (2, B, L, D): one share per direction
    dxc: torch.Tensor
    ddt: torch.Tensor
    dbc: torch.Tensor  # zeroed: kernels add into it
    parts: torch.Tensor  # (2, B, N + 2, D) fp32: rows 0 .. N-1 dA (row n: state n), row N dD, row N + 1 the dt bias

    @staticmethod
    def for_inputs(xc: torch.Tensor, d_state: int) -> GradBuffers:
        _, bsz, length, dim = xc.shape
        dev, fp32 = xc.device, torch.float32
        return GradBuffers(
            dz=torch.empty_like(xc), dxc=torch.empty_like(xc), ddt=torch.empty_like(xc),
            dbc=torch.zeros((2, bsz * length, 2 * d_state), device=dev, dtype=fp32),
            parts=torch.empty((2, bsz, d_state + 2, dim), device=dev, dtype=fp32),
        )

    def grads(self, tables: ScanTables, z_dtype: torch.dtype, dz_out: torch.Tensor | None = None) -> ScanGrads:
        """The gradients: dz, the directions' shares added, into ``dz_out`` where given (z's dtype, which is the
        shares' in the mixer core: the same values as a new tensor), else into a new tensor; the partial sums as
        they are (ScanGrads sums them when asked)."""
        return ScanGrads(dz=self._dz_sum(z_dtype, dz_out), dxc=self.dxc, ddt=self.ddt, dbc=self.dbc,
                         parts=self.parts, a=tables.a)

    def _dz_sum(self, z_dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return (self.dz[0] + self.dz[1]).to(z_dtype)
        if out.dtype != z_dtype:
            raise ValueError(f"dz goes into a tensor of z's dtype {z_dtype}, not {out.dtype}")
        if out.is_cuda and out.stride(-1) == 1 and out.dtype == self.dz.dtype:
            return pair_sum_into(self.dz, out)
        return torch.add(self.dz[0], self.dz[1], out=out)


@triton.jit
def _pair_sum_kernel(pair_ptr, out_ptr, rows, L, D, stride_ob, stride_ol,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, l, :] = pair[0, b, l, :] + pair[1, b, l, :] for BLOCK_R of the B L rows and BLOCK_D channels."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    mask = (r < rows) & (d < D)
    src = pair_ptr + r * D + d
    total = tl.load(src, mask=mask).to(tl.float32) + tl.load(src + rows * D, mask=mask).to(tl.float32)
    dst = out_ptr + (r // L) * stride_ob + (r % L) * stride_ol + d
    tl.store(dst, total.to(out_ptr.dtype.element_ty), mask=mask)


def pair_sum_into(pair: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """pair[0] + pair[1] (pair (2, B, L, D), contiguous) written into out (B, L, D), whose channels are contiguous
    and whose rows may be strided (dz into its half of the packed gradient of in_proj's output). Each sum in fp32,
    rounded once, as torch.add. Why not torch.add(out=): into a strided view it runs its non-vectorised
    elementwise kernel, 20.9 us a block at batch 64 on an H200, the largest glue kernel of the training step."""
    _, bsz, length, dim = pair.shape
    if out.shape != pair.shape[1:] or out.stride(-1) != 1 or not pair.is_contiguous():
        raise ValueError(f"pair_sum_into takes a contiguous pair (2, B, L, D) and an out (B, L, D) with contiguous "
                         f"channels, not {tuple(pair.shape)} and {tuple(out.shape)} strides {out.stride()}")
    block_r, block_d = (4, 32) if interpreting() else (16, 256)
    grid = (triton.cdiv(bsz * length, block_r), triton.cdiv(dim, block_d))
    _pair_sum_kernel[grid](pair, out, bsz * length, length, dim, out.stride(0), out.stride(1),
                           BLOCK_R=block_r, BLOCK_D=block_d, num_warps=1 if interpreting() else 4)
    return out


def scan_backward(
    xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables, grad_out: torch.Tensor,
    dz_out: torch.Tensor | None = None,
) -> ScanGrads:
    """Gradients of scan_forward's output with respect to its inputs, given grad_out (B, L, D); dz written
    into ``dz_out`` where given (GradBuffers.grads)."""
    _, bsz, length, dim = xc.shape
    rank = tables.dt.shape[-1]
    d_state = tables.a.shape[-1]
    dev = xc.device
    grad_out = grad_out.contiguous()
    out = GradBuffers.for_inputs(xc, d_state)
    smallest_t = min(c.block_t for c in [*_BWD_CONFIGS, INTERPRETER_BLOCKS])
    n_state_chunks = triton.cdiv(length, smallest_t) + 1
    states = torch.empty((2, bsz, n_state_chunks, d_state, dim), device=dev, dtype=torch.float32)
    dh_carry = torch.empty((2, bsz, d_state, dim), device=dev, dtype=torch.float32)
    _launch(
        _bimamba_scan_bwd_kernel, _scan_bwd_tuned,
        lambda meta: (triton.cdiv(dim, meta["BLOCK_D"]), bsz, 2),
        xc, z, grad_out, dbl, tables.dt_projection(), tables.dt_bias, tables.a2, tables.d_skip,
        out.dz, out.dxc, out.ddt, out.dbc, out.parts, states, dh_carry,
        bsz, length, dim, rank, z.stride(0), z.stride(1), n_state_chunks,
        N=d_state,
    )
    return out.grads(tables, z.dtype, dz_out)
