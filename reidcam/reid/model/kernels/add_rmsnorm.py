"""Fused "residual add + RMSNorm" of a pre-norm Mamba block, as Triton kernels with autograd.

The unfused block does ``residual = residual + drop_path(hidden)`` in fp32, then RMSNorm in fp32, then
autocast casts the result for in_proj: about six passes over (B, L, dim). Here one kernel reads hidden
and residual once and writes the fp32 residual and the normalised tokens (already in the dtype in_proj
will use); backward is one pass too. Same function as::

    residual = hidden if residual is None else residual + scale[:, None, None] * hidden   (scale: DropPath)
    normed = residual * rsqrt(mean(residual**2, -1) + eps) * weight
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

_ROWS = 8
# Rows per backward block, and row blocks per backward program. With one block per program (more programs fill
# the GPU: at the training shape (batch 64, 140 tokens, dim 384) 8 rows in 8 blocks made 140 programs for 132 SMs
# and took 31.4 us against 18.4, on an H200: session 9, bench/add_rmsnorm_variants.py). Each program adds its
# share of the weight gradient into one fp32 row with atomics, where a row of partial sums a program and torch's
# sum of them took a memset and a reduction (9.4 us a block, session 12's profile); the atomics add in no fixed
# order, so the weight gradient's last bits may differ from run to run, as the conv backward's do. With the
# atomics, 16 rows a program (560 at the training shape) took 21.3 us against 8 rows' 22.8 (batch 256: 72.2
# against 79.0; session 12).
_BWD_ROWS = 16
_BWD_ROW_BLOCKS = 1
# Warps per backward program: Triton's default, 4. At 16 rows, 8 warps took 33.6 us and 2 took 33.6 against 4's 20.9
# (batch 64; 32 rows in 8 warps 27.7; session 13, bench/add_rmsnorm_variants.py, H200).
_BWD_WARPS = 4


@triton.jit
def _add_rmsnorm_fwd_kernel(
    h_ptr, r_ptr, scale_ptr, w_ptr, res_out_ptr, norm_out_ptr, rstd_ptr,
    n_rows, C, rows_per_sample, eps,
    HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    mask_r = rows < n_rows
    mask = mask_r[:, None] & (cols[None, :] < C)
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    res = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        if HAS_SCALE:
            res = res * tl.load(scale_ptr + rows // rows_per_sample, mask=mask_r, other=0.0)[:, None]
        res += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + offs, res, mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(res * res, axis=1) / C + eps)
    tl.store(rstd_ptr + rows, rstd, mask=mask_r)
    w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    normed = res * rstd[:, None] * w[None, :]
    tl.store(norm_out_ptr + offs, normed.to(norm_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rmsnorm_bwd_kernel(
    res_ptr, rstd_ptr, w_ptr, scale_ptr, dnorm_ptr, dres_out_ptr, dh_ptr, dr_ptr, dw_ptr,
    n_rows, C, rows_per_sample,
    HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_DRES: tl.constexpr,
    BLOCK_C: tl.constexpr, ROWS: tl.constexpr, ROW_BLOCKS: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(ROW_BLOCKS):
        rows = (pid * ROW_BLOCKS + i) * ROWS + tl.arange(0, ROWS)
        mask_r = rows < n_rows
        mask = mask_r[:, None] & mask_c[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        rstd = tl.load(rstd_ptr + rows, mask=mask_r, other=0.0)
        x_hat = tl.load(res_ptr + offs, mask=mask, other=0.0) * rstd[:, None]
        dnorm = tl.load(dnorm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dw += tl.sum(dnorm * x_hat, axis=0)
        g = dnorm * w[None, :]
        dres = rstd[:, None] * (g - x_hat * (tl.sum(g * x_hat, axis=1) / C)[:, None])
        if HAS_DRES:
            dres += tl.load(dres_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dh = dres
        if HAS_RES:
            tl.store(dr_ptr + offs, dres.to(dr_ptr.dtype.element_ty), mask=mask)
            if HAS_SCALE:
                dh = dres * tl.load(scale_ptr + rows // rows_per_sample, mask=mask_r, other=0.0)[:, None]
        tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=mask)
    tl.atomic_add(dw_ptr + cols, dw, mask=mask_c)


class _AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden, residual, scale, weight, eps: float, out_dtype: torch.dtype):  # type: ignore[override]
        shape = hidden.shape
        h2 = hidden.reshape(-1, shape[-1]).contiguous()
        n_rows, channels = h2.shape
        r2 = residual.reshape(-1, channels).contiguous() if residual is not None else h2
        res_out = torch.empty((n_rows, channels), device=hidden.device, dtype=torch.float32)
        normed = torch.empty((n_rows, channels), device=hidden.device, dtype=out_dtype)
        rstd = torch.empty((n_rows,), device=hidden.device, dtype=torch.float32)
        rows_per_sample = n_rows // shape[0]
        scale_arg = scale if scale is not None else rstd
        _add_rmsnorm_fwd_kernel[(triton.cdiv(n_rows, _ROWS),)](
            h2, r2, scale_arg, weight, res_out, normed, rstd, n_rows, channels, rows_per_sample, eps,
            HAS_RES=residual is not None, HAS_SCALE=scale is not None,
            BLOCK_C=triton.next_power_of_2(channels), ROWS=_ROWS,
        )
        ctx.save_for_backward(res_out, rstd, weight, scale)
        ctx.meta = (shape, hidden.dtype, residual is not None, rows_per_sample)
        return normed.view(shape), res_out.view(shape)

    @staticmethod
    def backward(ctx: Any, d_normed, d_residual_out):  # type: ignore[override]
        res_out, rstd, weight, scale = ctx.saved_tensors
        shape, hidden_dtype, has_res, rows_per_sample = ctx.meta
        n_rows, channels = res_out.shape
        d_normed = d_normed.reshape(n_rows, channels).contiguous()
        d_hidden = torch.empty((n_rows, channels), device=res_out.device, dtype=hidden_dtype)
        d_residual = torch.empty((n_rows, channels), device=res_out.device, dtype=torch.float32) if has_res else d_hidden
        programs = triton.cdiv(n_rows, _BWD_ROWS * _BWD_ROW_BLOCKS)
        d_weight = torch.zeros((channels,), device=res_out.device, dtype=torch.float32)  # the programs add into it
        dres_out = d_residual_out.reshape(n_rows, channels).contiguous() if d_residual_out is not None else d_normed
        _add_rmsnorm_bwd_kernel[(programs,)](
            res_out, rstd, weight, scale if scale is not None else rstd, d_normed, dres_out, d_hidden, d_residual,
            d_weight, n_rows, channels, rows_per_sample,
            HAS_RES=has_res, HAS_SCALE=scale is not None, HAS_DRES=d_residual_out is not None,
            BLOCK_C=triton.next_power_of_2(channels), ROWS=_BWD_ROWS, ROW_BLOCKS=_BWD_ROW_BLOCKS, num_warps=_BWD_WARPS,
        )
        return (d_hidden.view(shape), (d_residual.view(shape) if has_res else None), None,
                d_weight.to(weight.dtype), None, None)


def add_rms_norm(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, residual_out) of a pre-norm block; residual_out is fp32, normed is in out_dtype.

    scale (batch,) multiplies hidden before the add (DropPath's mask / keep); ignored when residual is
    None, as the first block adds nothing. out_dtype defaults to the autocast dtype when autocast is on
    (what the following Linear would cast to anyway), else fp32.
    """
    if out_dtype is None:
        device_type = hidden.device.type
        out_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    if residual is None:
        scale = None
    if scale is not None:
        scale = scale.to(torch.float32).contiguous()
    return _AddRMSNormFn.apply(hidden, residual, scale, weight, eps, out_dtype)
