"""Bidirectional depthwise conv1d + SiLU of the Mamba mixer core, as Triton kernels.

Both scan directions convolve the same input x (B, L, D), token-major. The forward direction uses a
causal 4-tap window (x[t-3] .. x[t]); the backward direction, which in the reference runs on the
time-flipped sequence, is the same thing as an anti-causal window (x[t+3] .. x[t], tap k on x[t+3-k])
in the original token order. So no flips or copies are needed: one kernel reads x once and writes
xc[0] (forward) and xc[1] (backward), both token-major, stacked as (2, B, L, D).

The backward kernel recomputes the pre-activations instead of storing them and produces dx for both
directions at once (into a strided view where given: the mixer core's packed gradient of in_proj's
output), plus per-(sequence, chunk) partial sums of the weight and bias gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

D_CONV = 4


@dataclass(frozen=True)
class ConvParams:
    """One direction's depthwise conv: weight (D, 4) and bias (D,), contiguous, any float dtype."""

    weight: torch.Tensor
    bias: torch.Tensor

_FWD_BLOCK_T = 16
_FWD_BLOCK_D = 64
# The backward keeps a chunk's tokens inside each thread (one channel per lane, one warp, integer
# arguments unspecialised so that Triton does not vectorise along the channels): its sums over
# tokens for dw and db are then in-thread adds. A 16x64 tile in 8 warps, with the tokens across
# warps, paid ~160 shuffles and 40 barriers per chunk and walked the whole sequence in each of only
# B * D / 64 programs: 0.48 ms per call against the forward's 0.025 (bench/NOTES-speed.md, attempt 22).
# 4 tokens: 72 registers (sm_90), no shuffles; 8 tokens need 144, 16 spill.
_BWD_BLOCK_T = 4
_BWD_BLOCK_D = 32
_BWD_WARPS = 1
_UNSPECIALISED_BWD = ["Bsz", "L", "D", "stride_xb", "stride_xl", "stride_dxb", "stride_dxl"]


@triton.jit
def _load_window(x_ptr, row_base, t, offs_d, mask_d, L, stride_l, SHIFT0: tl.constexpr, STEP: tl.constexpr):
    """(BLOCK_T, BLOCK_D, 4) fp32 tile whose [i, :, k] is x[t_i + SHIFT0 + STEP*k], zero outside [0, L)."""
    taps = tl.arange(0, 4)
    tt = t[:, None, None] + SHIFT0 + STEP * taps[None, None, :]
    mask = (tt >= 0) & (tt < L) & mask_d[None, :, None]
    ptrs = x_ptr + row_base + tt * stride_l + offs_d[None, :, None]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _window_for(x_ptr, row_base, t, offs_d, mask_d, L, stride_l, DIR: tl.constexpr):
    """The conv window of direction DIR: causal (x[t-3+k]) for 0, anti-causal (x[t+3-k]) for 1."""
    if DIR == 0:
        win = _load_window(x_ptr, row_base, t, offs_d, mask_d, L, stride_l, -3, 1)
    else:
        win = _load_window(x_ptr, row_base, t, offs_d, mask_d, L, stride_l, 3, -1)
    return win


@triton.jit
def _biconv_fwd_kernel(
    x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, xc_ptr,
    Bsz, L, D, stride_xb, stride_xl,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_bt = tl.program_id(1)
    n_tchunks = tl.cdiv(L, BLOCK_T)
    b = pid_bt // n_tchunks
    t = (pid_bt % n_tchunks) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask_td = (t < L)[:, None] & mask_d[None, :]
    taps = tl.arange(0, 4)
    x_row = b.to(tl.int64) * stride_xb
    for DIR in tl.static_range(2):
        if DIR == 0:
            w_ptr, b_ptr = wf_ptr, bf_ptr
        else:
            w_ptr, b_ptr = wb_ptr, bb_ptr
        w = tl.load(w_ptr + offs_d[:, None] * 4 + taps[None, :], mask=mask_d[:, None], other=0.0)
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0)
        win = _window_for(x_ptr, x_row, t, offs_d, mask_d, L, stride_xl, DIR)
        pre = tl.sum(win * w.to(tl.float32)[None, :, :], axis=2) + bias.to(tl.float32)[None, :]
        xc = pre * tl.sigmoid(pre)
        out_row = (DIR * Bsz + b).to(tl.int64) * L * D
        tl.store(xc_ptr + out_row + t[:, None] * D + offs_d[None, :], xc.to(xc_ptr.dtype.element_ty), mask=mask_td)


@triton.jit
def _dsilu(pre):
    s = tl.sigmoid(pre)
    return s * (1.0 + pre * (1.0 - s))


@triton.jit
def _shifted(ptr, row_base, s, shift, offs_d, mask_d, L, stride_l):
    """(BLOCK_T, BLOCK_D) fp32 tile of rows s + shift, zero outside [0, L)."""
    t = s + shift
    mask = ((t >= 0) & (t < L))[:, None] & mask_d[None, :]
    return tl.load(ptr + row_base + t[:, None] * stride_l + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dpre(dxc_ptr, row_base, s, shift, offs_d, mask_d, L, D, bias, w0, w1, w2, w3, xa, xb, xc, xd):
    """Gradient at the pre-activation of output rows s + shift, whose taps 0..3 read xa..xd."""
    pre = bias[None, :] + w0[None, :] * xa + w1[None, :] * xb + w2[None, :] * xc + w3[None, :] * xd
    return _shifted(dxc_ptr, row_base, s, shift, offs_d, mask_d, L, D) * _dsilu(pre)


@triton.jit(do_not_specialize=_UNSPECIALISED_BWD)
def _biconv_bwd_kernel(
    x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, dxc_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    Bsz, L, D, stride_xb, stride_xl, stride_dxb, stride_dxl,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx[s] = sum_k wf[k] g_f[s+3-k] + sum_k wb[k] g_b[s-3+k], g = dxc * silu'(pre), plus dw, db partials.

    One program per (channel block, sequence, chunk of tokens). x rows s-3..s+3 are loaded as seven
    2D tiles; the eight pre-activations that touch x[s] (four per direction) are rebuilt from them.
    """
    pid_d = tl.program_id(0)
    n_tchunks = tl.cdiv(L, BLOCK_T)
    b = tl.program_id(1) // n_tchunks
    c = tl.program_id(1) % n_tchunks
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    wf0 = tl.load(wf_ptr + offs_d * 4 + 0, mask=mask_d, other=0.0).to(tl.float32)
    wf1 = tl.load(wf_ptr + offs_d * 4 + 1, mask=mask_d, other=0.0).to(tl.float32)
    wf2 = tl.load(wf_ptr + offs_d * 4 + 2, mask=mask_d, other=0.0).to(tl.float32)
    wf3 = tl.load(wf_ptr + offs_d * 4 + 3, mask=mask_d, other=0.0).to(tl.float32)
    wb0 = tl.load(wb_ptr + offs_d * 4 + 0, mask=mask_d, other=0.0).to(tl.float32)
    wb1 = tl.load(wb_ptr + offs_d * 4 + 1, mask=mask_d, other=0.0).to(tl.float32)
    wb2 = tl.load(wb_ptr + offs_d * 4 + 2, mask=mask_d, other=0.0).to(tl.float32)
    wb3 = tl.load(wb_ptr + offs_d * 4 + 3, mask=mask_d, other=0.0).to(tl.float32)
    bias_f = tl.load(bf_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias_b = tl.load(bb_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_row = b.to(tl.int64) * stride_xb
    row_f = b.to(tl.int64) * L * D
    row_b = (Bsz + b).to(tl.int64) * L * D
    s = c * BLOCK_T + tl.arange(0, BLOCK_T)
    xm3 = _shifted(x_ptr, x_row, s, -3, offs_d, mask_d, L, stride_xl)
    xm2 = _shifted(x_ptr, x_row, s, -2, offs_d, mask_d, L, stride_xl)
    xm1 = _shifted(x_ptr, x_row, s, -1, offs_d, mask_d, L, stride_xl)
    x00 = _shifted(x_ptr, x_row, s, 0, offs_d, mask_d, L, stride_xl)
    xp1 = _shifted(x_ptr, x_row, s, 1, offs_d, mask_d, L, stride_xl)
    xp2 = _shifted(x_ptr, x_row, s, 2, offs_d, mask_d, L, stride_xl)
    xp3 = _shifted(x_ptr, x_row, s, 3, offs_d, mask_d, L, stride_xl)
    # forward (causal) direction: output row s+j reads x[s] through tap 3-j
    g = _dpre(dxc_ptr, row_f, s, 0, offs_d, mask_d, L, D, bias_f, wf0, wf1, wf2, wf3, xm3, xm2, xm1, x00)
    dx = wf3[None, :] * g
    dwf0 = tl.sum(g * xm3, axis=0)
    dwf1 = tl.sum(g * xm2, axis=0)
    dwf2 = tl.sum(g * xm1, axis=0)
    dwf3 = tl.sum(g * x00, axis=0)
    dbf = tl.sum(g, axis=0)
    g = _dpre(dxc_ptr, row_f, s, 1, offs_d, mask_d, L, D, bias_f, wf0, wf1, wf2, wf3, xm2, xm1, x00, xp1)
    dx += wf2[None, :] * g
    g = _dpre(dxc_ptr, row_f, s, 2, offs_d, mask_d, L, D, bias_f, wf0, wf1, wf2, wf3, xm1, x00, xp1, xp2)
    dx += wf1[None, :] * g
    g = _dpre(dxc_ptr, row_f, s, 3, offs_d, mask_d, L, D, bias_f, wf0, wf1, wf2, wf3, x00, xp1, xp2, xp3)
    dx += wf0[None, :] * g
    # backward (anti-causal) direction: output row s-j reads x[s] through tap 3-j
    g = _dpre(dxc_ptr, row_b, s, 0, offs_d, mask_d, L, D, bias_b, wb0, wb1, wb2, wb3, xp3, xp2, xp1, x00)
    dx += wb3[None, :] * g
    dwb0 = tl.sum(g * xp3, axis=0)
    dwb1 = tl.sum(g * xp2, axis=0)
    dwb2 = tl.sum(g * xp1, axis=0)
    dwb3 = tl.sum(g * x00, axis=0)
    dbb = tl.sum(g, axis=0)
    g = _dpre(dxc_ptr, row_b, s, -1, offs_d, mask_d, L, D, bias_b, wb0, wb1, wb2, wb3, xp2, xp1, x00, xm1)
    dx += wb2[None, :] * g
    g = _dpre(dxc_ptr, row_b, s, -2, offs_d, mask_d, L, D, bias_b, wb0, wb1, wb2, wb3, xp1, x00, xm1, xm2)
    dx += wb1[None, :] * g
    g = _dpre(dxc_ptr, row_b, s, -3, offs_d, mask_d, L, D, bias_b, wb0, wb1, wb2, wb3, x00, xm1, xm2, xm3)
    dx += wb0[None, :] * g
    m_out = (s < L)[:, None] & mask_d[None, :]
    tl.store(dx_ptr + b.to(tl.int64) * stride_dxb + s[:, None] * stride_dxl + offs_d[None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=m_out)
    part = tl.program_id(1).to(tl.int64)  # (sequence, chunk)
    n_parts = Bsz * n_tchunks
    part_f = (part * D + offs_d) * 4
    part_b = ((n_parts + part) * D + offs_d) * 4
    tl.store(dw_part_ptr + part_f + 0, dwf0, mask=mask_d)
    tl.store(dw_part_ptr + part_f + 1, dwf1, mask=mask_d)
    tl.store(dw_part_ptr + part_f + 2, dwf2, mask=mask_d)
    tl.store(dw_part_ptr + part_f + 3, dwf3, mask=mask_d)
    tl.store(dw_part_ptr + part_b + 0, dwb0, mask=mask_d)
    tl.store(dw_part_ptr + part_b + 1, dwb1, mask=mask_d)
    tl.store(dw_part_ptr + part_b + 2, dwb2, mask=mask_d)
    tl.store(dw_part_ptr + part_b + 3, dwb3, mask=mask_d)
    tl.store(db_part_ptr + part * D + offs_d, dbf, mask=mask_d)
    tl.store(db_part_ptr + (n_parts + part) * D + offs_d, dbb, mask=mask_d)


def biconv_forward(x: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams) -> torch.Tensor:
    """xc (2, B, L, D) in x's dtype: silu(causal conv(x)) with conv_f, silu(anti-causal conv(x)) with conv_b.

    x (B, L, D) must have a contiguous last dimension; rows may be strided (a view of in_proj's output).
    """
    bsz, length, dim = x.shape
    xc = torch.empty((2, bsz, length, dim), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(dim, _FWD_BLOCK_D), bsz * triton.cdiv(length, _FWD_BLOCK_T))
    _biconv_fwd_kernel[grid](
        x, conv_f.weight, conv_f.bias, conv_b.weight, conv_b.bias, xc, bsz, length, dim, x.stride(0), x.stride(1),
        BLOCK_T=_FWD_BLOCK_T, BLOCK_D=_FWD_BLOCK_D,
    )
    return xc


def conv_grad_output(x: torch.Tensor, dx: torch.Tensor | None) -> torch.Tensor:
    """Where a conv backward writes x's gradient: ``dx`` (x's shape, dtype and device, contiguous channels, any
    row strides: the mixer core passes x's half of the packed gradient of in_proj's output), else a new tensor."""
    if dx is None:
        return torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if dx.shape != x.shape or dx.dtype != x.dtype or dx.device != x.device or dx.stride(-1) != 1:
        raise ValueError(f"dx {tuple(dx.shape)} {dx.dtype} (strides {dx.stride()}) cannot take the gradient of x "
                         f"{tuple(x.shape)} {x.dtype} on {x.device}: same shape, dtype and device, contiguous channels")
    return dx


def biconv_backward(
    x: torch.Tensor, dxc: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams, dx: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """dx, (dweight, dbias) of the forward conv and (dweight, dbias) of the backward conv, fp32 sums.

    dxc (2, B, L, D) contiguous is the gradient of biconv_forward's output; dx is written into ``dx`` where
    given (conv_grad_output).
    """
    bsz, length, dim = x.shape
    dx = conv_grad_output(x, dx)
    parts = bsz * triton.cdiv(length, _BWD_BLOCK_T)
    dw_part = torch.empty((2, parts, dim, D_CONV), device=x.device, dtype=torch.float32)
    db_part = torch.empty((2, parts, dim), device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(dim, _BWD_BLOCK_D), parts)
    _biconv_bwd_kernel[grid](
        x, conv_f.weight, conv_f.bias, conv_b.weight, conv_b.bias, dxc, dx, dw_part, db_part,
        bsz, length, dim, x.stride(0), x.stride(1), dx.stride(0), dx.stride(1),
        BLOCK_T=_BWD_BLOCK_T, BLOCK_D=_BWD_BLOCK_D, num_warps=_BWD_WARPS,
    )
    dw, db = dw_part.sum(1), db_part.sum(1)
    return dx, (dw[0], db[0]), (dw[1], db[1])
