"""The selective scan and the bidirectional mixer core against straightforward references."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from mixer_fixtures import random_direction
from reidcam.reid.model.scan import (
    DirectionParams,
    bidirectional_mixer_core,
    bidirectional_mixer_core_packed,
    register_backend,
    resolve_backend,
    selective_scan_naive,
    selective_scan_torch,
)



def scan_inputs(length: int, seed: int, batch: int = 2, channels: int = 6, d_state: int = 5, big_steps: bool = False):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    scale = 4.0 if big_steps else 0.5
    return {
        "u": randn(batch, channels, length),
        "delta": randn(batch, channels, length) * scale,
        "A": -torch.exp(randn(channels, d_state)) * (4.0 if big_steps else 1.0),
        "B": randn(batch, d_state, length),
        "C": randn(batch, d_state, length),
        "D": randn(channels),
        "z": randn(batch, channels, length),
        "delta_bias": randn(channels) * 0.3,
    }


OPTION_SETS = {
    "plain": dict(D=False, z=False, delta_bias=False, delta_softplus=False),
    "all": dict(D=True, z=True, delta_bias=True, delta_softplus=True),
    "gate only": dict(D=False, z=True, delta_bias=False, delta_softplus=True),
    "bias only": dict(D=True, z=False, delta_bias=True, delta_softplus=True),
}


def select(inputs: dict, options: dict) -> dict:
    kwargs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    if not options["delta_softplus"]:
        kwargs["delta"] = kwargs["delta"].abs()  # a step must be >= 0 for a decaying state
    for name in ("D", "z", "delta_bias"):
        if options[name]:
            kwargs[name] = inputs[name]
    kwargs["delta_softplus"] = options["delta_softplus"]
    return kwargs


@pytest.mark.parametrize("length", [1, 3, 4, 9, 37, 140])
@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_chunked_scan_equals_sequential_reference(length, options):
    kwargs = select(scan_inputs(length, seed=length), OPTION_SETS[options])
    expected, expected_state = selective_scan_naive(**kwargs, return_last_state=True)
    for chunk in (None, 3, 16):
        with torch.no_grad():
            got, state = selective_scan_torch(**kwargs, return_last_state=True, chunk_size=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state, expected_state, rtol=1e-5, atol=1e-5)


def test_chunked_scan_is_accurate_against_float64():
    kwargs = select(scan_inputs(140, seed=1), OPTION_SETS["all"])
    exact = selective_scan_naive(**{k: v.double() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    with torch.no_grad():
        got = selective_scan_torch(**kwargs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)


def test_large_steps_stay_finite_and_exact():
    """Decays of exp(-100) and below must not overflow anything (no exp of a positive number)."""
    kwargs = select(scan_inputs(50, seed=2, big_steps=True), OPTION_SETS["all"])
    expected = selective_scan_naive(**kwargs)
    with torch.no_grad():
        got = selective_scan_torch(**kwargs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_chunked_scan_gradients_equal_reference_gradients():
    inputs = scan_inputs(21, seed=3)
    kwargs = select(inputs, OPTION_SETS["all"])
    leaves = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    grad_out = torch.randn(kwargs["u"].shape, generator=torch.Generator().manual_seed(9))

    def grads(fn, dtype):
        args = {
            k: (v.detach().to(dtype).requires_grad_(k in leaves) if torch.is_tensor(v) else v)
            for k, v in kwargs.items()
        }
        out = fn(**args)
        return torch.autograd.grad(out, [args[k] for k in leaves], grad_out.to(dtype))

    got = grads(lambda **a: selective_scan_torch(**a, chunk_size=4), torch.float32)
    want = grads(selective_scan_naive, torch.float64)
    for name, g, w in zip(leaves, got, want):
        rel = (g.double() - w).norm() / w.norm()
        assert rel < 1e-5, (name, rel.item())


def test_output_keeps_the_input_dtype():
    kwargs = select(scan_inputs(8, seed=4), OPTION_SETS["all"])
    kwargs = {k: v.bfloat16() if k in ("u", "delta", "z") else v for k, v in kwargs.items()}
    with torch.no_grad():
        assert selective_scan_torch(**kwargs).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------
# bidirectional mixer core
# --------------------------------------------------------------------------------------------


def reference_direction(x: torch.Tensor, p: DirectionParams) -> torch.Tensor:
    """One direction written plainly: causal conv as a sum of shifted copies, then the naive scan."""
    batch, length, dim = x.shape
    width = p.conv_weight.shape[1]
    padded = F.pad(x, (0, 0, width - 1, 0))
    conv = sum(padded[:, k : k + length] * p.conv_weight[:, k] for k in range(width)) + p.conv_bias
    xc = F.silu(conv)
    rank, d_state = p.dt_proj_weight.shape[1], p.A_log.shape[1]
    dbl = xc @ p.x_proj_weight.T
    dt = dbl[..., :rank] @ p.dt_proj_weight.T
    B, C = dbl[..., rank : rank + d_state], dbl[..., rank + d_state :]
    return selective_scan_naive(
        xc.transpose(1, 2), dt.transpose(1, 2), -torch.exp(p.A_log), B.transpose(1, 2), C.transpose(1, 2),
        D=p.D, delta_bias=p.dt_proj_bias, delta_softplus=True,
    ).transpose(1, 2)


def reference_mixer(x, z, fwd, bwd):
    y_fwd = reference_direction(x, fwd) * F.silu(z)
    y_bwd = reference_direction(x.flip(1), bwd).flip(1) * F.silu(z)
    return (y_fwd + y_bwd) / 2


@pytest.mark.parametrize("length", [1, 7, 30])
def test_torch_mixer_core_equals_flip_based_reference(length):
    gen = torch.Generator().manual_seed(length)
    dim, d_state, rank = 12, 4, 3
    fwd, bwd = random_direction(dim, d_state, rank, gen), random_direction(dim, d_state, rank, gen)
    xz = torch.randn(2, length, 2 * dim, generator=gen)
    x, z = xz.chunk(2, dim=-1)  # strided views, as the model's in_proj split gives them
    expected = reference_mixer(x, z, fwd, bwd)
    with torch.no_grad():
        got = bidirectional_mixer_core(x, z, fwd, bwd, backend="torch")
    assert got.shape == (2, length, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_the_packed_core_is_the_core_of_the_halves(backend):
    """bidirectional_mixer_core_packed(xz) runs a backend without a packed entry on xz.chunk(2, -1): the same
    values and, through autograd, the same gradient of xz."""
    gen = torch.Generator().manual_seed(9)
    fwd, bwd = random_direction(6, 3, 2, gen), random_direction(6, 3, 2, gen)
    xz = torch.randn(2, 9, 12, generator=gen)
    grad_out = torch.randn(2, 9, 6, generator=gen)
    results = []
    for packed in (True, False):
        leaf = xz.clone().requires_grad_(True)
        if packed:
            out = bidirectional_mixer_core_packed(leaf, fwd, bwd, backend=backend)
        else:
            out = bidirectional_mixer_core(*leaf.chunk(2, dim=-1), fwd, bwd, backend=backend)
        results.append((out, *torch.autograd.grad(out, leaf, grad_out)))
    for got, want in zip(*results):
        assert torch.equal(got, want)


def test_a_backend_with_a_packed_entry_gets_the_packed_tensor(monkeypatch):
    from reidcam.reid.model import scan

    monkeypatch.setattr(scan, "_BACKENDS", dict(scan._BACKENDS))
    monkeypatch.setattr(scan, "_PACKED_BACKENDS", dict(scan._PACKED_BACKENDS))
    calls = []
    register_backend("recorder", lambda x, z, fwd, bwd: calls.append(("halves", x.shape, z.shape)) or x,
                     packed=lambda xz, fwd, bwd: calls.append(("packed", xz.shape)) or xz)
    xz = torch.zeros(1, 3, 8)
    bidirectional_mixer_core_packed(xz, None, None, backend="recorder")
    bidirectional_mixer_core(*xz.chunk(2, dim=-1), None, None, backend="recorder")
    register_backend("recorder", lambda x, z, fwd, bwd: calls.append(("halves", x.shape, z.shape)) or x)
    bidirectional_mixer_core_packed(xz, None, None, backend="recorder")  # re-registered without: the halves
    assert calls == [("packed", (1, 3, 8)), ("halves", (1, 3, 4), (1, 3, 4)), ("halves", (1, 3, 4), (1, 3, 4))]


def test_mixer_core_backward_direction_really_runs_backwards():
    """Changing the last token changes the backward direction's output at the first token."""
    gen = torch.Generator().manual_seed(5)
    fwd, bwd = random_direction(8, 4, 2, gen), random_direction(8, 4, 2, gen)
    x, z = torch.randn(1, 10, 8, generator=gen), torch.randn(1, 10, 8, generator=gen)
    with torch.no_grad():
        before = bidirectional_mixer_core(x, z, fwd, bwd, backend="torch")
        x[:, -1] += 1.0
        after = bidirectional_mixer_core(x, z, fwd, bwd, backend="torch")
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_backend_selection(monkeypatch):
    x = torch.zeros(1, 2, 3)
    monkeypatch.delenv("REIDCAM_SCAN", raising=False)
    assert resolve_backend(None, x) == "torch"
    monkeypatch.setenv("REIDCAM_SCAN", "naive")
    assert resolve_backend(None, x) == "naive"
    assert resolve_backend("torch", x) == "torch"
    with pytest.raises(RuntimeError, match="not available"):
        resolve_backend("no-such-backend", x)
    if importlib.util.find_spec("mamba_ssm") is None:
        with pytest.raises(RuntimeError, match="not available"):
            resolve_backend("cuda", x)


def test_chunk_length_from_the_environment(monkeypatch):
    kwargs = select(scan_inputs(11, seed=6), OPTION_SETS["all"])
    expected = selective_scan_naive(**kwargs)
    monkeypatch.setenv("REIDCAM_SCAN_CHUNK", "1")
    with torch.no_grad():
        torch.testing.assert_close(selective_scan_torch(**kwargs), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("REIDCAM_SCAN_CHUNK", "zero")
    with pytest.raises(ValueError, match="REIDCAM_SCAN_CHUNK"):
        selective_scan_torch(**kwargs)
