"""The "triton" backend of the bidirectional Mamba mixer core: an autograd Function over Triton kernels.

Forward, for x, z (B, L, D) token-major, or for in_proj's packed output xz (B, L, 2D) whose halves they are
(bidirectional_mixer_core_triton_packed, as the model calls it; the kernels take x and z as strided views):
  1. the bidirectional conv: xc (2, B, L, D) = silu(causal conv(x)), silu(anti-causal conv(x)), x read
     once; by the CUDA kernel of conv_fwd.cu (cuda_scan.CudaConv) where it compiles, else by Triton's
     biconv_forward (REIDCAM_CONV_FWD chooses: auto, cuda, triton);
  2. one batched matmul (cuBLAS) for both directions' x_proj: dbl (2, B*L, dt_rank + 2*d_state);
  3. scan_tables: the two directions' scan parameters stacked, and dt cast, once per forward (kept for
     the backward);
  4. the forward scan: dt @ dt_proj^T as one batched GEMM, then both directions' selective scans (bias
     and softplus inside), gated by silu(z), averaged, written once as (B, L, D); by the CUDA kernel of
     cuda_scan.py where it compiles, else by Triton's scan_forward (REIDCAM_SCAN_FWD chooses).
The conv kernels read each direction's parameters where they are; the x_proj weights and the scan
tables are stacked (one kernel, triton_tables, on the GPU) for the batched matmuls and the scan kernels:
at every forward, or, inside ``with weight_memo(memo):``, once per mixer for weights that the scope's
owner keeps frozen (WeightTableMemo; the Embedder does this).
Backward takes xc as the forward kept it (27.5 MB a block at batch 64, 140 tokens, d_inner 768 in bf16: 770 MB for
ReIDMamba-S's 28 blocks, where recomputing it cost a conv launch of 14.5 us a block), runs the scan backward (the
CUDA kernels of scan_bwd.cu, pass 1's then pass 2's; or Triton's scan_backward where NVRTC is missing or with
REIDCAM_SCAN_BWD=triton; either writes its per-sequence partial sums of dA, dD and the dt bias into one buffer,
triton_scan.GradBuffers), does the x_proj / dt_proj weight and input gradients as batched matmuls, then the conv
backward: the CUDA kernel of conv_bwd.cu (cuda_scan.CudaConvBackward) where it compiles, else Triton's
biconv_backward (REIDCAM_CONV_BWD chooses: auto, cuda, triton). For packed input the gradient of xz is one tensor:
the conv backward writes dx into its first half (row stride 2D) and the two directions' dz shares are added into its
second, where autograd's backward of ``xz.chunk(2, -1)`` concatenated a dx and a dz (_BiMambaCoreFn). Last, one
launch (triton_param_grads) sums the scan's per-sequence partial sums and the weight gradients' token-chunk products
into the parameters' gradients.
Only the input (x and z, or xz), xc, the small x_proj output (fp32), the scan tables and the parameters are kept
for backward.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from ..fp32_products import product_fp32
from . import cuda_scan
from .triton_conv import D_CONV, ConvParams, biconv_backward, biconv_forward
from .triton_param_grads import direction_param_grads
from .triton_scan import (
    ScanGrads, ScanParams, ScanTables, interpreting, scan_backward, scan_forward, scan_tables, weight_tables,
)
from .triton_tables import fusable, fused_weight_tables

# order of one direction's tensors in the Function's arguments (DirectionParams field names)
FIELDS = ("conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D")


def _conv(p: tuple[torch.Tensor, ...]) -> ConvParams:
    return ConvParams(weight=p[0], bias=p[1])


def _scan(p: tuple[torch.Tensor, ...]) -> ScanParams:
    return ScanParams(dt_proj_weight=p[3], dt_bias=p[4], a_log=p[5], d_skip=p[6])


class _BiMambaCoreFn(torch.autograd.Function):
    """The core as one autograd node, from x and z (B, L, D), or, with z None, from in_proj's packed output xz
    (B, L, 2D) whose halves they are. For packed input the backward returns one gradient dxz (B, L, 2D): the conv
    backward writes dx into its first half and the scan backward's dz goes into its second. Autograd's backward of
    ``xz.chunk(2, -1)`` would concatenate a dx and a dz instead (a copy of 2 B L D values: 27.5 MB per block at
    batch 64, 140 tokens, d_inner 768 in bf16)."""

    @staticmethod
    def forward(ctx: Any, x_or_xz: torch.Tensor, z: torch.Tensor | None,  # type: ignore[override]
                *params: torch.Tensor) -> torch.Tensor:
        x, z_in = _inputs(x_or_xz, z)
        pf, pb = params[:7], params[7:]
        bsz, length, dim = x.shape
        with torch.autocast(x.device.type, enabled=False):
            xc = _conv_forward(x, _conv(pf), _conv(pb))
            x_proj, weights = _weight_tables(params, x.dtype)
            # fp32: the scan reads dt, B and C as fp32, a conversion fewer per (token, state) load
            dbl = product_fp32(xc.view(2, bsz * length, dim), x_proj.transpose(1, 2))
            tables = scan_tables(dbl, _scan(pf), _scan(pb), x.dtype, weights)
            out = _scan_forward(xc, z_in, dbl, tables)
        ctx.save_for_backward(x_or_xz, z, xc, dbl, x_proj, *params)
        ctx.tables = tables  # derived from the saved tensors; kept to spare the backward its launches
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        x_or_xz, z_arg, xc, dbl, x_proj, *params = ctx.saved_tensors
        x, z = _inputs(x_or_xz, z_arg)
        dxz = torch.empty(x_or_xz.shape, device=x.device, dtype=x.dtype) if z_arg is None else None
        dx_out, dz_out = (None, None) if dxz is None else _halves(dxz)
        pf, pb = tuple(params[:7]), tuple(params[7:])
        bsz, length, dim = x.shape
        tokens = bsz * length
        tables = ctx.tables
        with torch.autocast(x.device.type, enabled=False):
            grads = _scan_backward(xc, z, dbl, tables, grad_out.to(x.dtype), dz_out)
            ddt = grads.ddt.view(2, tokens, dim)
            d_dbl = _x_proj_output_grad(ddt, tables.dt_weight, grads.dbc)
            dt_proj_chunks = _weight_grad_parts(ddt, tables.dt)
            x_proj_chunks = _weight_grad_parts(d_dbl, xc.view(2, tokens, dim))
            dxc = grads.dxc.view(2, tokens, dim).baddbmm_(d_dbl, x_proj)  # in place: out of place copies dxc first
            dx, (dwf, dbf), (dwb, dbb) = _conv_backward(x, dxc.view(2, bsz, length, dim), _conv(pf), _conv(pb),
                                                        dx_out)
            sums = direction_param_grads(grads.parts, tables.a, dt_proj_chunks, x_proj_chunks)
        per_direction = [
            [dwf, dbf, sums.x_proj[0], sums.dt_proj[0], sums.dt_bias[0], sums.da_log[0], sums.d_skip[0]],
            [dwb, dbb, sums.x_proj[1], sums.dt_proj[1], sums.dt_bias[1], sums.da_log[1], sums.d_skip[1]],
        ]
        param_grads = [g.to(p.dtype) for g, p in zip(per_direction[0] + per_direction[1], params)]
        inputs = (dx, grads.dz) if dxz is None else (dxz, None)
        return (*inputs, *param_grads)


def _halves(xz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and z, the two halves of in_proj's packed output (B, L, 2D), as views (or of its gradient)."""
    dim = xz.shape[-1] // 2
    return xz[..., :dim], xz[..., dim:]


def _inputs(x_or_xz: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Function's x and z: its first argument's halves where z is None (packed), else both arguments."""
    return _halves(x_or_xz) if z is None else (x_or_xz, z)


def _compute_weight_tables(params: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ScanTables]:
    """Both directions' x_proj weights stacked, and the scan's weight tables (``weight_tables``): one
    kernel (triton_tables) where it serves, else torch's eleven."""
    pf, pb = params[:7], params[7:]
    x_proj, fwd, bwd = (pf[2], pb[2]), _scan(pf), _scan(pb)
    if fusable(x_proj, fwd, bwd, dtype):
        return fused_weight_tables(x_proj, fwd, bwd, dtype)
    return torch.stack(x_proj).to(dtype), weight_tables(fwd, bwd, dtype)


def _weight_tables(params: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ScanTables]:
    """The weight tables of this forward: from the memo in scope (``weight_memo``), else computed now."""
    memo = _MEMO.get()
    return _compute_weight_tables(params, dtype) if memo is None else memo.get(params, dtype)


class WeightTableMemo:
    """The weight tables of each mixer (its x_proj weights stacked and ``weight_tables``), computed once and
    then reused for as long as its owner keeps the weights frozen; used only inside ``weight_memo(memo)``.

    Why: at inference with frozen weights they are the same every time, and each forward would recompute
    them (one kernel per block on the GPU, triton_tables; a dozen small ones in torch elsewhere).

    Why opt-in (outside a scope every forward computes them afresh): a memo cannot see every change of
    the weights. Its stamp (storage, ``_version`` counters, compute dtype, inference mode) misses updates
    that bump no version: a fused optimiser step (``AdamW(fused=True)``), ``p.data.mul_`` (EMA, SWA).
    A process-wide memo returned tables of the old weights after them (outputs 10-95 % off the torch
    backend's), and freed the tables it replaced while CUDA graphs captured earlier still read them.
    So only the owner of frozen weights (the Embedder) opens a scope, and a memo never replaces nor frees
    an entry it has handed out: where the stamp no longer matches, that call gets fresh tables that are
    not kept. An entry goes with its mixer's parameter (weakly keyed) or with the memo.
    """

    def __init__(self) -> None:
        # id of the owning parameter (a tensor cannot be a WeakKeyDictionary key: its == is elementwise)
        # -> (stamp, tables), and the finalizer that drops the entry with the parameter
        self._entries: dict[int, tuple[tuple, tuple[torch.Tensor, ScanTables]]] = {}
        self._finalizers: dict[int, weakref.finalize] = {}
        weakref.finalize(self, _detach_all, self._finalizers)  # a dead memo leaves no callbacks behind

    def get(self, params: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ScanTables]:
        """The tables for ``params`` (both directions' tensors, in FIELDS order) in ``dtype``."""
        stamp = _stamp(params, dtype)
        owner = params[5]  # the forward direction's A_log, a parameter of this mixer alone
        entry = self._entries.get(id(owner))
        if entry is not None:
            if stamp is not None and entry[0] == stamp:
                return entry[1]
            return _compute_weight_tables(params, dtype)  # the entry stays: a captured graph may read it
        tables = _compute_weight_tables(params, dtype)
        if stamp is not None:
            self._entries[id(owner)] = (stamp, tables)
            self._finalizers[id(owner)] = weakref.finalize(owner, _forget, weakref.ref(self), id(owner))
        return tables

    def tables_of(self, owner: torch.Tensor) -> tuple[torch.Tensor, ScanTables] | None:
        """The memoised tables of the mixer whose forward A_log is ``owner``, if any."""
        entry = self._entries.get(id(owner))
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        return len(self._entries)


def _forget(memo_ref: weakref.ref, key: int) -> None:
    memo = memo_ref()
    if memo is not None:
        memo._entries.pop(key, None)
        memo._finalizers.pop(key, None)


def _detach_all(finalizers: dict[int, weakref.finalize]) -> None:
    for finalizer in list(finalizers.values()):
        finalizer.detach()
    finalizers.clear()


def _stamp(params: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple | None:
    """What must not change for a memo entry to hold; None for parameters made in inference mode, which
    keep no version counter (they are never memoised)."""
    if any(p.is_inference() for p in params):
        return None
    return dtype, torch.is_inference_mode_enabled(), tuple((p.data_ptr(), p._version) for p in params)


_MEMO: contextvars.ContextVar[WeightTableMemo | None] = contextvars.ContextVar("reidcam_weight_memo", default=None)


@contextlib.contextmanager
def weight_memo(memo: WeightTableMemo | None) -> Iterator[WeightTableMemo | None]:
    """``with weight_memo(memo):`` the triton backend's forwards in this context (thread, task) take their
    weight tables from ``memo``; ``weight_memo(None)`` computes them at every forward again, as outside any
    scope. Open one only around forwards of weights that nothing changes while the memo lives (see
    WeightTableMemo); the memo's owner keeps it alive for as long as CUDA graphs captured in its scope
    replay, since they read its tables."""
    token = _MEMO.set(memo)
    try:
        yield memo
    finally:
        _MEMO.reset(token)


T = TypeVar("T")

_CUDA_SCAN = cuda_scan.CudaScan()  # compiled kernels per device, like Triton's own cache: built on first use
_CUDA_CONV = cuda_scan.CudaConv()
_CUDA_SCAN_BWD = {design: cuda_scan.CudaScanBackward(defines={"REIDCAM_BWD_DESIGN": design})
                  for design in {*cuda_scan.BWD_DESIGN_OF.values(), *cuda_scan.BWD_UNPAIRED_DESIGN_OF.values()}}
_CUDA_CONV_BWD = cuda_scan.CudaConvBackward()


def cuda_scan_backward(xc: torch.Tensor, z: torch.Tensor, grad_out: torch.Tensor) -> cuda_scan.CudaScanBackward:
    """The CUDA backward scan of the design that runs these tensors (cuda_scan.backward_design_for)."""
    return _CUDA_SCAN_BWD[cuda_scan.backward_design_for(xc, z, grad_out)]


def _cuda_or_triton(choice: str, supports: Callable[[], bool], cuda: Callable[[], T], triton: Callable[[], T]) -> T:
    """The CUDA kernel where ``choice`` (an env variable's auto, cuda or triton) allows it and it takes these
    tensors, else the Triton one. A CUDA kernel that cannot be built falls back under auto and raises under cuda."""
    if choice != "triton" and supports():
        try:
            return cuda()
        except cuda_scan.CudaKernelUnavailable:
            if choice == "cuda":
                raise
    return triton()


def _conv_forward(x: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams) -> torch.Tensor:
    """The CUDA conv forward where it runs (REIDCAM_CONV_FWD: auto, cuda, triton), else the Triton one."""
    return _cuda_or_triton(cuda_scan.conv_kernel_choice(), lambda: cuda_scan.conv_supports(x, conv_f, conv_b),
                           lambda: _CUDA_CONV.forward(x, conv_f, conv_b), lambda: biconv_forward(x, conv_f, conv_b))


def _conv_backward(x: torch.Tensor, dxc: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams,
                   dx: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The CUDA conv backward where it runs (REIDCAM_CONV_BWD: auto, cuda, triton), else the Triton one; dx
    written into ``dx`` where given (a view of the packed input gradient)."""
    return _cuda_or_triton(cuda_scan.conv_backward_kernel_choice(),
                           lambda: cuda_scan.conv_backward_supports(x, dxc, conv_f, conv_b, dx),
                           lambda: _CUDA_CONV_BWD.backward(x, dxc, conv_f, conv_b, dx),
                           lambda: biconv_backward(x, dxc, conv_f, conv_b, dx))


def _scan_forward(xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: Any) -> torch.Tensor:
    """The CUDA forward scan where it runs (REIDCAM_SCAN_FWD: auto, cuda, triton), else the Triton one."""
    return _cuda_or_triton(cuda_scan.forward_kernel_choice(), lambda: cuda_scan.supports(xc, tables),
                           lambda: _CUDA_SCAN.forward(xc, z, dbl, tables), lambda: scan_forward(xc, z, dbl, tables))


def _scan_backward(xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables,
                   grad_out: torch.Tensor, dz_out: torch.Tensor | None = None) -> ScanGrads:
    """The CUDA backward scan where it runs (REIDCAM_SCAN_BWD: auto by default, cuda, triton), else the
    Triton one; dz written into ``dz_out`` where given (a view of the packed input gradient)."""
    return _cuda_or_triton(cuda_scan.backward_kernel_choice(), lambda: cuda_scan.backward_supports(xc, z, dbl, tables),
                           lambda: cuda_scan_backward(xc, z, grad_out).backward(xc, z, dbl, tables, grad_out, dz_out),
                           lambda: scan_backward(xc, z, dbl, tables, grad_out, dz_out))


def _x_proj_output_grad(ddt: torch.Tensor, dt_weight: torch.Tensor, dbc: torch.Tensor) -> torch.Tensor:
    """The gradient of the x_proj output (2, tokens, R + 2N) in the compute dtype: ddt @ dt_weight beside dB and dC.
    cuBLAS writes the product into its columns of the buffer (a strided output) and dB, dC are cast into theirs,
    where a concatenation took a cast and a copy of both more."""
    rank = dt_weight.shape[-1]
    d_dbl = torch.empty((*dbc.shape[:-1], rank + dbc.shape[-1]), device=ddt.device, dtype=ddt.dtype)
    torch.bmm(ddt, dt_weight, out=d_dbl[..., :rank])
    d_dbl[..., rank:].copy_(dbc)
    return d_dbl


# The weight gradients' products run over this many token chunks at once (or the most that divide the tokens).
WEIGHT_GRAD_CHUNKS = 8


def _weight_grad_parts(a: torch.Tensor, b: torch.Tensor, chunks: int = WEIGHT_GRAD_CHUNKS) -> torch.Tensor:
    """a^T b over each of ``chunks`` token chunks, (2, T, M) and (2, T, N) -> (2, chunks, M, N) in fp32: a weight
    gradient of x_proj or dt_proj is their sum over the chunks (triton_param_grads sums them with the block's other
    parameter gradients). Why in chunks: the output (56 x 768 or 768 x 24) is too few tiles to fill the GPU as one
    product over all B L tokens (cuBLAS took 14-25 us a block at batch 64 on an H200, 3x what the bytes need); as
    WEIGHT_GRAD_CHUNKS products over a chunk of the tokens each, batched, it has that many times the tiles
    (bench/mixer_gemms.py times the counts). Fewer chunks where the tokens do not divide evenly."""
    two, tokens, m = a.shape
    chunks = math.gcd(tokens, chunks)
    part = tokens // chunks
    prods = product_fp32(a.reshape(two * chunks, part, m).transpose(1, 2), b.reshape(two * chunks, part, b.shape[-1]))
    return prods.view(two, chunks, m, b.shape[-1])


def _weight_grad(a: torch.Tensor, b: torch.Tensor, chunks: int = WEIGHT_GRAD_CHUNKS) -> torch.Tensor:
    """a^T b over the tokens, (2, T, M) and (2, T, N) -> (2, M, N) in fp32: the sum of _weight_grad_parts."""
    return _weight_grad_parts(a, b, chunks).sum(1)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any (batch, token) strides but need a contiguous channel dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


def bidirectional_mixer_core_triton(x: torch.Tensor, z: torch.Tensor, fwd: Any, bwd: Any) -> torch.Tensor:
    """(y_fwd + y_bwd) / 2 gated by silu(z), (B, L, d_inner), for DirectionParams fwd and bwd.

    Same function as the reference backends. The compute dtype is x's dtype (bf16 or fp16 under autocast):
    xc, the x_proj output and the result are stored in it; the x_proj matmul runs in it with fp32
    accumulation; every other parameter is read in fp32, and states and sums are fp32.
    """
    params = _function_params(x, x.shape[-1], fwd, bwd)
    return _BiMambaCoreFn.apply(_rows_contiguous(x), _rows_contiguous(z.to(x.dtype)), *params)


def bidirectional_mixer_core_triton_packed(xz: torch.Tensor, fwd: Any, bwd: Any) -> torch.Tensor:
    """bidirectional_mixer_core_triton(*xz.chunk(2, -1), fwd, bwd) from in_proj's packed output xz (B, L, 2 d_inner),
    x then z: the same values, and under autograd one gradient for xz, written by the kernels (_BiMambaCoreFn)."""
    if xz.shape[-1] % 2:
        raise ValueError(f"the packed input holds x and z of equal width, not {xz.shape[-1]} channels in all")
    params = _function_params(xz, xz.shape[-1] // 2, fwd, bwd)
    return _BiMambaCoreFn.apply(_rows_contiguous(xz), None, *params)


def _function_params(x: torch.Tensor, dim: int, fwd: Any, bwd: Any) -> list[torch.Tensor]:
    """Both directions' tensors in FIELDS order as the Function takes them (contiguous, conv weights (dim, 4)),
    after checking that the backend can run on x."""
    if not x.is_cuda and not interpreting():
        raise RuntimeError("the triton scan backend needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    if fwd.conv_weight.numel() != dim * D_CONV or bwd.conv_weight.numel() != dim * D_CONV:
        raise ValueError(f"the triton backend needs a {D_CONV}-tap conv on {dim} channels")
    params = []
    for p in (fwd, bwd):
        params += [getattr(p, f) for f in FIELDS]
    params[0] = fwd.conv_weight.reshape(dim, D_CONV)
    params[7] = bwd.conv_weight.reshape(dim, D_CONV)
    return [t.contiguous() for t in params]
