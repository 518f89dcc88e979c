"""Selective scan (the S6 recurrence of Mamba) and the bidirectional mixer core, with backends.

The recurrence, per batch item b, channel d and state n::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t,   then   y_t *= silu(z_t)

Backends of :func:`bidirectional_mixer_core` (pick one with ``backend=`` or env ``REIDCAM_SCAN``):

* ``torch``: pure PyTorch, CPU and GPU, autograd-correct. The scan runs over chunks of T time
  steps; inside a chunk all steps are combined at once by a Hillis-Steele associative scan
  over the pairs (decay, input), so a sequence costs about ``L / T * (2 log2 T + 6)`` tensor
  operations instead of ``6 L``. Only decays ``exp(delta * A)`` with ``delta * A <= 0`` are
  ever exponentiated, so nothing overflows. Under autograd the scan is recomputed in backward
  (activation checkpointing), so training keeps only the scan's inputs between the passes.
  T is 256 on CUDA (one chunk for ReID lengths; launches dominate there) and 4 on the CPU,
  where memory traffic dominates and larger chunks only add work; env ``REIDCAM_SCAN_CHUNK``
  overrides it (1 gives the per-token recurrence, the fastest on a CPU with big batches).
* ``cuda``: mamba-ssm's ``selective_scan_fn`` and causal-conv1d's ``causal_conv1d_fn``, once
  per direction, the backward direction on the flipped sequence. Registered only when both import.
* ``triton``: registered by ``reidcam.reid.model.kernels`` when that package exists and imports.
* ``naive``: one Python step per token in float64-friendly PyTorch; the test reference.

:func:`bidirectional_mixer_core_packed` takes in_proj's output xz (B, L, 2 d_inner) whole, as the model
calls it: the same function, and the triton backend then writes xz's gradient with its kernels instead of
leaving autograd to concatenate dx and dz (register_backend's ``packed``).

``auto`` (the default) picks, for CUDA tensors, ``triton`` when its kernels import (1.01-1.30x ViT-B's
inference throughput on an H200, against ~0.12x with the stock kernels: BENCHMARKS.md), else ``cuda``
when mamba-ssm imports; ``torch`` otherwise and on the CPU.

:func:`new_weight_memo` and :func:`weight_memo` let the owner of frozen weights (the embedder) keep the
triton backend's weight-derived tables across forwards, and do nothing where Triton is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

SCAN_ENV = "REIDCAM_SCAN"
CHUNK_ENV = "REIDCAM_SCAN_CHUNK"
_CPU_CHUNK = 2
_GPU_CHUNK = 256


@dataclass(frozen=True)
class DirectionParams:
    """The tensors of one scan direction of a bidirectional Mamba mixer."""

    conv_weight: Tensor  # (d_inner, d_conv): the depthwise conv1d weight, squeezed
    conv_bias: Tensor  # (d_inner,)
    x_proj_weight: Tensor  # (dt_rank + 2 * d_state, d_inner)
    dt_proj_weight: Tensor  # (d_inner, dt_rank)
    dt_proj_bias: Tensor  # (d_inner,)
    A_log: Tensor  # (d_inner, d_state), float32
    D: Tensor  # (d_inner,), float32


MixerBackend = Callable[[Tensor, Tensor, DirectionParams, DirectionParams], Tensor]
PackedMixerBackend = Callable[[Tensor, DirectionParams, DirectionParams], Tensor]
_BACKENDS: dict[str, MixerBackend] = {}
_PACKED_BACKENDS: dict[str, PackedMixerBackend] = {}


def register_backend(name: str, fn: MixerBackend, packed: PackedMixerBackend | None = None) -> None:
    """Make ``fn(x, z, fwd, bwd) -> y`` selectable as ``backend=name``; ``packed(xz, fwd, bwd) -> y``, the same
    function of in_proj's packed output, is what :func:`bidirectional_mixer_core_packed` runs (by default ``fn``
    on xz's halves)."""
    _BACKENDS[name] = fn
    if packed is None:
        _PACKED_BACKENDS.pop(name, None)
    else:
        _PACKED_BACKENDS[name] = packed


def available_backends() -> list[str]:
    """Names of the backends that can run here (imports the optional ones to find out)."""
    _try_register_cuda()
    _try_register_triton()
    return sorted(_BACKENDS)


def bidirectional_mixer_core(
    x: Tensor, z: Tensor, fwd: DirectionParams, bwd: DirectionParams, backend: str | None = None
) -> Tensor:
    """x, z: (B, L, d_inner) token-major. Returns ((y_fwd + y_bwd) / 2) (gated by SiLU(z)), shape (B, L, d_inner), ready for out_proj."""
    return _BACKENDS[resolve_backend(backend, x)](x, z, fwd, bwd)


def bidirectional_mixer_core_packed(
    xz: Tensor, fwd: DirectionParams, bwd: DirectionParams, backend: str | None = None
) -> Tensor:
    """:func:`bidirectional_mixer_core` of in_proj's output xz (B, L, 2 d_inner), x then z: the same function as
    ``bidirectional_mixer_core(*xz.chunk(2, dim=-1), ...)``. A backend may take the packed tensor itself: the
    triton one then writes xz's gradient whole, where autograd's backward of the chunk copies dx and dz into it."""
    name = resolve_backend(backend, xz)
    packed = _PACKED_BACKENDS.get(name)
    if packed is not None:
        return packed(xz, fwd, bwd)
    x, z = xz.chunk(2, dim=-1)
    return _BACKENDS[name](x, z, fwd, bwd)


def resolve_backend(backend: str | None, x: Tensor) -> str:
    """The backend name to use: explicit argument, else env ``REIDCAM_SCAN``, else auto."""
    name = (backend or os.environ.get(SCAN_ENV) or "auto").lower()
    if name == "auto":
        return _auto_backend(x)
    if name == "cuda":
        _try_register_cuda()
    elif name == "triton":
        _try_register_triton()
    if name not in _BACKENDS:
        raise RuntimeError(f"selective-scan backend {name!r} is not available here (have: {sorted(_BACKENDS)})")
    return name


_MIXER_CORE = "reidcam.reid.model.kernels.mixer_core"


def new_weight_memo() -> Any | None:
    """A memo of the triton backend's weight tables (``kernels.mixer_core.WeightTableMemo``) for its
    caller to own and use with :func:`weight_memo`, or None where the triton kernels do not import."""
    if not _try_register_triton():
        return None
    return importlib.import_module(_MIXER_CORE).WeightTableMemo()


def weight_memo(memo: Any | None) -> ContextManager[Any]:
    """``with weight_memo(memo):`` the triton backend takes its weight tables from ``memo`` (made by
    :func:`new_weight_memo`) instead of computing them at every forward: only for weights that nothing
    changes while the memo lives (``kernels.mixer_core.WeightTableMemo`` says why). None: no memo (a
    no-op where the triton kernels were never imported, as no scope can be open then)."""
    core = sys.modules.get(_MIXER_CORE)
    if core is None:
        if memo is None:
            return contextlib.nullcontext()
        core = importlib.import_module(_MIXER_CORE)
    return core.weight_memo(memo)


def _auto_backend(x: Tensor) -> str:
    if not x.is_cuda:
        return "torch"
    if _try_register_triton():
        return "triton"
    return "cuda" if _try_register_cuda() else "torch"


# --------------------------------------------------------------------------------------------
# The selective scan itself (mamba-ssm's selective_scan_fn layout)
# --------------------------------------------------------------------------------------------


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked, vectorised selective scan with mamba-ssm's ``selective_scan_fn`` signature.

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
    Computes in float32 and returns y (B, D, L) in u's dtype (and the last state (B, D, N)).
    """
    y, last = _scan_token_major(
        u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
        D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, chunk_size=chunk_size,
    )
    y = y.transpose(1, 2)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def selective_scan_naive(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The recurrence written out, one Python step per token; computes in u's dtype (use float64)."""
    dtype = u.dtype
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return (y, h) if return_last_state else y


def _scan_token_major(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """u, delta: (B, L, D); B, C: (B, L, N). Float32 y (B, L, D) without gate, and last state."""
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        delta = _softplus(delta)
    chunk = chunk_size or _default_chunk(u.is_cuda)
    inputs = (u, delta, A, B, C)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        y, last = checkpoint(_chunked_scan, *inputs, chunk, use_reentrant=False)
    else:
        y, last = _chunked_scan(*inputs, chunk)
    if D is not None:
        y = torch.addcmul(y, u, D.float())
    return y, last


def _default_chunk(on_cuda: bool) -> int:
    value = os.environ.get(CHUNK_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{CHUNK_ENV} must be a positive integer, got {value!r}")
        return int(value)
    return _GPU_CHUNK if on_cuda else _CPU_CHUNK


def _softplus(x: Tensor) -> Tensor:
    """softplus; without autograd as max(x, 0) + log(1 + exp(-|x|)), several times faster on CPU than
    ``F.softplus`` (whose log1p is not vectorised there), with the same absolute accuracy."""
    if torch.is_grad_enabled():
        return F.softplus(x)
    return torch.log(torch.exp(-x.abs()).add_(1.0)).add_(x.clamp_min(0.0))


def _chunked_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Float32 core on (B, L, D) / (B, L, N) inputs: chunks of ``chunk`` steps, each solved at once
    by an associative scan, the state carried from chunk to chunk. Returns y (B, L, D) and h_L."""
    batch, length, channels = u.shape
    in_place = not torch.is_grad_enabled()
    drive = delta * u
    y = u.new_empty(batch, length, channels) if in_place else None
    outputs = []
    state: Tensor | None = None
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        decay = (delta[:, start:stop, :, None] * A).exp_()  # (B, T, D, N); exponent <= 0, no overflow
        states = drive[:, start:stop, :, None] * B[:, start:stop, None, :]
        if state is not None:
            states[:, 0].addcmul_(decay[:, 0], state)
        states = _associative_scan(decay, states, in_place)
        state = states[:, -1]
        weighted = states * C[:, start:stop, None, :]
        if y is not None:
            torch.sum(weighted, dim=-1, out=y[:, start:stop])
        else:
            outputs.append(weighted.sum(-1))
    if state is None:
        state = u.new_zeros(batch, channels, A.shape[1])
    return (y if y is not None else torch.cat(outputs, dim=1)), state


def _associative_scan(decay: Tensor, states: Tensor, in_place: bool) -> Tensor:
    """Hillis-Steele scan along dim 1 of ``h_t = decay_t * h_{t-1} + states_t`` (h_{-1} = 0).

    Level k combines each step with the one k steps earlier, ``(a_t, b_t) <- (a_t a_{t-k},
    a_t b_{t-k} + b_t)``; after ceil(log2 T) levels every b_t is the state h_t. ``in_place``
    (no autograd) writes results into fresh or existing buffers instead of concatenating.
    """
    steps = states.shape[1]
    offset = 1
    while offset < steps:
        states = _combine_level(states, decay, offset, in_place)
        if 2 * offset < steps:
            tail = decay[:, offset:] * decay[:, :-offset]
            if in_place:
                decay[:, offset:] = tail
            else:
                decay = torch.cat([decay[:, :offset], tail], dim=1)
        offset *= 2
    return states


def _combine_level(states: Tensor, decay: Tensor, offset: int, in_place: bool) -> Tensor:
    """``states[t] + decay[t] * states[t - offset]`` for t >= offset, other steps unchanged."""
    if not in_place:
        combined = torch.addcmul(states[:, offset:], decay[:, offset:], states[:, :-offset])
        return torch.cat([states[:, :offset], combined], dim=1)
    out = torch.empty_like(states)
    out[:, :offset] = states[:, :offset]
    torch.addcmul(states[:, offset:], decay[:, offset:], states[:, :-offset], out=out[:, offset:])
    return out


# --------------------------------------------------------------------------------------------
# Backends of the bidirectional mixer core
# --------------------------------------------------------------------------------------------


def _direction_torch(x: Tensor, p: DirectionParams, scan: Callable[..., tuple[Tensor, Tensor]]) -> Tensor:
    """One direction on token-major x (B, L, d_inner): conv + SiLU, projections, scan (no gate)."""
    length = x.shape[1]
    width = p.conv_weight.shape[1]
    conv = F.conv1d(x.transpose(1, 2), p.conv_weight[:, None, :], p.conv_bias, padding=width - 1, groups=x.shape[2])
    xc = F.silu(conv[..., :length]).transpose(1, 2)  # (B, L, d_inner)
    dt_rank = p.dt_proj_weight.shape[1]
    d_state = p.A_log.shape[1]
    x_dbl = F.linear(xc, p.x_proj_weight)
    dt = F.linear(x_dbl[..., :dt_rank], p.dt_proj_weight)
    B = x_dbl[..., dt_rank : dt_rank + d_state]
    C = x_dbl[..., dt_rank + d_state :]
    A = -torch.exp(p.A_log.float())
    y, _ = scan(xc, dt, A, B, C, D=p.D, delta_bias=p.dt_proj_bias, delta_softplus=True)
    return y


def _mixer_torch(x: Tensor, z: Tensor, fwd: DirectionParams, bwd: DirectionParams) -> Tensor:
    scan = _scan_token_major_default
    y_fwd = _direction_torch(x, fwd, scan)
    y_bwd = _direction_torch(x.flip(1), bwd, scan).flip(1)
    return ((y_fwd + y_bwd) * (0.5 * F.silu(z.float()))).to(x.dtype)


def _scan_token_major_default(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, **kw) -> tuple[Tensor, Tensor]:
    return _scan_token_major(u, delta, A, B, C, chunk_size=None, **kw)


def _scan_token_major_naive(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, **kw) -> tuple[Tensor, Tensor]:
    y, last = selective_scan_naive(
        u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
        return_last_state=True, **kw,
    )
    return y.transpose(1, 2), last


def _mixer_naive(x: Tensor, z: Tensor, fwd: DirectionParams, bwd: DirectionParams) -> Tensor:
    y_fwd = _direction_torch(x, fwd, _scan_token_major_naive)
    y_bwd = _direction_torch(x.flip(1), bwd, _scan_token_major_naive).flip(1)
    return ((y_fwd + y_bwd) * (0.5 * F.silu(z))).to(x.dtype)


register_backend("torch", _mixer_torch)
register_backend("naive", _mixer_naive)


def _try_register_cuda() -> bool:
    """Register the mamba-ssm backend if its CUDA extensions import; True when available."""
    if "cuda" in _BACKENDS:
        return True
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # not installed, or a CUDA extension that fails to load
        log.debug("cuda scan backend unavailable: %s", exc)
        return False

    def direction(x_dl: Tensor, z_dl: Tensor, p: DirectionParams) -> Tensor:
        """x_dl, z_dl: (B, d_inner, L) contiguous; returns the gated y (B, d_inner, L)."""
        dt_rank = p.dt_proj_weight.shape[1]
        d_state = p.A_log.shape[1]
        xc = causal_conv1d_fn(x_dl, p.conv_weight, p.conv_bias, activation="silu")
        x_dbl = F.linear(xc.transpose(1, 2), p.x_proj_weight)  # (B, L, R + 2N)
        dt = F.linear(x_dbl[..., :dt_rank], p.dt_proj_weight).transpose(1, 2)
        B = x_dbl[..., dt_rank : dt_rank + d_state].transpose(1, 2)
        C = x_dbl[..., dt_rank + d_state :].transpose(1, 2)
        A = -torch.exp(p.A_log.float())
        return selective_scan_fn(
            xc, dt.to(xc.dtype).contiguous(), A, B.to(xc.dtype).contiguous(), C.to(xc.dtype).contiguous(),
            p.D.float(), z=z_dl, delta_bias=p.dt_proj_bias.float(), delta_softplus=True,
        )

    def mixer(x: Tensor, z: Tensor, fwd: DirectionParams, bwd: DirectionParams) -> Tensor:
        x_dl = x.transpose(1, 2).contiguous()
        z_dl = z.transpose(1, 2).to(x.dtype).contiguous()
        y_fwd = direction(x_dl, z_dl, fwd)
        y_bwd = direction(x_dl.flip(-1).contiguous(), z_dl.flip(-1).contiguous(), bwd).flip(-1)
        return ((y_fwd + y_bwd) / 2).transpose(1, 2)

    register_backend("cuda", mixer)
    return True


def _try_register_triton() -> bool:
    """Import ``reidcam.reid.model.kernels`` (if present), which registers ``triton`` itself."""
    if "triton" in _BACKENDS:
        return True
    try:
        importlib.import_module("reidcam.reid.model.kernels")
    except Exception as exc:  # not there, Triton missing, or kernels that fail to build
        log.debug("triton scan backend unavailable: %s", exc)
        return False
    return "triton" in _BACKENDS

