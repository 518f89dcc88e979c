"""The mixer core's per-direction parameter gradients finished in one launch.

After the backward scan and the weight-gradient products, five small sums were left per block: the scan's
per-sequence partial sums of dA, dD and the dt bias summed over the batch (GradBuffers.parts), dA turned into
dA_log (times A, transposed from (N, D) rows to the parameter's (D, N)), and the x_proj and dt_proj weight
gradients' token-chunk products summed over their chunks (mixer_core._weight_grad_parts). In torch that was
a reduction, a multiply, two copies (autograd copies a gradient whose strides are not its parameter's: the
transposed dA_log) and two more reductions: six launches and ~19 us a block at batch 64 on an H200 (the
profile of session 12). One program here owns a block of columns of one direction's partial sums (seen as
(B, (N + 2) D)) or of one of the two chunked products, loads all their parts at once, and writes its
parameters' gradients in their own layout (each direction's a contiguous slice: autograd takes them as they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_scan import parameter_grads

_TILE = 8192  # values a program loads at once: (parts or chunks) x columns, 64 a thread at 4 warps


@dataclass(frozen=True)
class DirectionParamGrads:
    """The scan parameters' and projection weights' gradients of both directions, direction first."""

    da_log: torch.Tensor     # (2, D, N)
    d_skip: torch.Tensor     # (2, D)
    dt_bias: torch.Tensor    # (2, D)
    dt_proj: torch.Tensor    # (2, D, R)
    x_proj: torch.Tensor     # (2, R + 2N, D)


@triton.jit
def _column_sums(src_ptr, program, M, PARTS, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr):
    """For one (g, block of BLOCK_M columns m) of src (G, PARTS, M): g, m and the sums over the parts of
    src[g, :, m]. All of a program's loads go out at once (where PARTS <= BLOCK_P): one memory latency, where a
    loop over the parts waited for each step's."""
    blocks = tl.cdiv(M, BLOCK_M)
    group = program // blocks
    m = (program % blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    total = tl.zeros((BLOCK_M,), tl.float32)
    for p0 in range(0, PARTS, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p[:, None] < PARTS) & (m[None, :] < M)
        rows = (group * PARTS + p).to(tl.int64)[:, None] * M
        total += tl.sum(tl.load(src_ptr + rows + m[None, :], mask=mask, other=0.0), axis=0)
    return group, m, total


@triton.jit
def _param_grads_kernel(
    parts_ptr, a_ptr, dt_src_ptr, x_src_ptr, da_log_ptr, skip_ptr, bias_ptr, dt_dst_ptr, x_dst_ptr,
    B, D, N, M_DT, M_X, CHUNKS_DT, CHUNKS_X, parts_programs, dt_programs,
    BLOCK_B: tl.constexpr, BLOCK_MP: tl.constexpr, BLOCK_C_DT: tl.constexpr, BLOCK_C_X: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    program = tl.program_id(0)
    # each branch names its own values: Triton types a name by its block shape, which differs between them
    if program < parts_programs:
        # parts (2, B, N + 2, D): each (direction, sequence) is (N + 2) D columns; column m is row m // D (a
        # state n < N, then dD, then the dt bias) at channel m % D
        direction, column, sums = _column_sums(parts_ptr, program, (N + 2) * D, B, BLOCK_B, BLOCK_MP)
        row, d = column // D, column % D
        # dA_log[direction, d, n] = (sum of dA)[n, d] * A[direction, d, n]: the (D, N) layout of A_log itself
        is_state = row < N
        at = (direction * D + d).to(tl.int64) * N + row
        tl.store(da_log_ptr + at, sums * tl.load(a_ptr + at, mask=is_state, other=0.0), mask=is_state)
        tl.store(skip_ptr + direction * D + d, sums, mask=row == N)
        tl.store(bias_ptr + direction * D + d, sums, mask=row == N + 1)
    elif program < parts_programs + dt_programs:
        g_dt, m_dt, sums_dt = _column_sums(dt_src_ptr, program - parts_programs, M_DT, CHUNKS_DT, BLOCK_C_DT, BLOCK_M)
        tl.store(dt_dst_ptr + g_dt.to(tl.int64) * M_DT + m_dt, sums_dt, mask=m_dt < M_DT)
    else:
        g_x, m_x, sums_x = _column_sums(x_src_ptr, program - parts_programs - dt_programs, M_X, CHUNKS_X, BLOCK_C_X,
                                        BLOCK_M)
        tl.store(x_dst_ptr + g_x.to(tl.int64) * M_X + m_x, sums_x, mask=m_x < M_X)


def _tile(parts: int) -> tuple[int, int]:
    """(parts, columns) of a program's load for a sum over ``parts``: all of them where they fit the tile."""
    block_p = min(triton.next_power_of_2(parts), _TILE // 32)
    return block_p, _TILE // block_p


def direction_param_grads(parts: torch.Tensor, a: torch.Tensor, dt_proj_chunks: torch.Tensor,
                          x_proj_chunks: torch.Tensor) -> DirectionParamGrads:
    """The gradients from the backward scan's partial sums ``parts`` (2, B, N + 2, D) fp32 (GradBuffers.parts),
    A (2, D, N) fp32 (ScanTables.a), and the weight gradients' chunk products (2, C, D, R) and (2, C', R + 2N, D)
    fp32 (mixer_core._weight_grad_parts), in one launch."""
    _, bsz, rows, dim = parts.shape
    d_state = rows - 2
    dt_chunks, x_chunks = dt_proj_chunks.shape[1], x_proj_chunks.shape[1]
    parts, a = parts.contiguous(), a.contiguous()
    dt_src, x_src = dt_proj_chunks.contiguous(), x_proj_chunks.contiguous()
    out = DirectionParamGrads(
        da_log=torch.empty((2, dim, d_state), device=parts.device, dtype=torch.float32),
        d_skip=torch.empty((2, dim), device=parts.device, dtype=torch.float32),
        dt_bias=torch.empty((2, dim), device=parts.device, dtype=torch.float32),
        dt_proj=torch.empty((2, *dt_src.shape[2:]), device=parts.device, dtype=torch.float32),
        x_proj=torch.empty((2, *x_src.shape[2:]), device=parts.device, dtype=torch.float32),
    )
    m_dt, m_x = out.dt_proj[0].numel(), out.x_proj[0].numel()
    (block_b, block_mp), (block_c_dt, block_m_dt), (block_c_x, block_m_x) = (
        _tile(bsz), _tile(dt_chunks), _tile(x_chunks))
    block_m = min(block_m_dt, block_m_x)  # one column block for both products: their chunk counts are alike
    parts_programs = 2 * triton.cdiv(rows * dim, block_mp)
    dt_programs = 2 * triton.cdiv(m_dt, block_m)
    x_programs = 2 * triton.cdiv(m_x, block_m)
    _param_grads_kernel[(parts_programs + dt_programs + x_programs,)](
        parts, a, dt_src, x_src, out.da_log, out.d_skip, out.dt_bias, out.dt_proj, out.x_proj,
        bsz, dim, d_state, m_dt, m_x, dt_chunks, x_chunks, parts_programs, dt_programs,
        BLOCK_B=block_b, BLOCK_MP=block_mp, BLOCK_C_DT=block_c_dt, BLOCK_C_X=block_c_x, BLOCK_M=block_m,
    )
    return out


def direction_param_grads_reference(parts: torch.Tensor, a: torch.Tensor, dt_proj_chunks: torch.Tensor,
                                    x_proj_chunks: torch.Tensor) -> DirectionParamGrads:
    """direction_param_grads in torch: the sums it replaces (the tests' reference)."""
    da_log, d_skip, dt_bias = parameter_grads(parts, a)
    return DirectionParamGrads(da_log=da_log, d_skip=d_skip, dt_bias=dt_bias,
                               dt_proj=dt_proj_chunks.sum(1), x_proj=x_proj_chunks.sum(1))
