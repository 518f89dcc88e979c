"""The "triton" mixer-core backend against the "torch" reference, run by Triton's CPU interpreter.

Tiny shapes with ragged edges (sequence not a multiple of the chunk, channels not a multiple of the
channel block) so every masking path of the real kernels runs; forward and every gradient.
The interpreter cannot show GPU-only problems (speed, register pressure); bench/speed_vs_vit.py
repeats these checks on the GPU at the model's shapes.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from triton_interpreter import require_interpreter  # noqa: E402

require_interpreter()

from autograd_nodes import graph_nodes  # noqa: E402
from mixer_fixtures import random_direction  # noqa: E402
from reidcam.reid.model.scan import (  # noqa: E402
    DirectionParams, bidirectional_mixer_core, bidirectional_mixer_core_packed,
)

# each after the modules it imports names from: a module that keeps a name of a reloaded one (cuda_scan keeps
# triton_scan's GradBuffers) would otherwise hold the class from before the reload
KERNEL_MODULES = [
    "reidcam.reid.model.kernels.triton_conv",
    "reidcam.reid.model.kernels.triton_scan",
    "reidcam.reid.model.kernels.triton_tables",
    "reidcam.reid.model.kernels.triton_param_grads",
    "reidcam.reid.model.kernels.cuda_scan",
    "reidcam.reid.model.kernels.mixer_core",
    "reidcam.reid.model.kernels",
]
FIELDS = ("conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D")


@pytest.fixture(scope="module", autouse=True)
def interpreted_kernels():
    """Import (or re-import) the kernels in interpreter mode, whatever imported them before."""
    os.environ["TRITON_INTERPRET"] = "1"
    for name in KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)
    torch.set_num_threads(2)
    yield


def leaf_params(p: DirectionParams) -> DirectionParams:
    return DirectionParams(**{f: getattr(p, f).detach().clone().requires_grad_(True) for f in FIELDS})


def run_with_grads(backend: str, xz: torch.Tensor, fwd: DirectionParams, bwd: DirectionParams,
                   grad_out: torch.Tensor, dtype: torch.dtype = torch.float32, packed: bool = False
                   ) -> dict[str, torch.Tensor]:
    """Output and the gradients of <output, grad_out> w.r.t. xz and every parameter, in fp32; ``packed``: the core
    called with xz whole (as the model calls it), else with its halves."""
    xz = xz.detach().clone().requires_grad_(True)
    fwd, bwd = leaf_params(fwd), leaf_params(bwd)
    if packed:
        out = bidirectional_mixer_core_packed(xz.to(dtype), fwd, bwd, backend=backend)
    else:
        x, z = xz.to(dtype).chunk(2, dim=-1)  # strided views, like the model's in_proj split
        out = bidirectional_mixer_core(x, z, fwd, bwd, backend=backend)
    leaves = {"xz": xz, **{f"fwd.{f}": getattr(fwd, f) for f in FIELDS}, **{f"bwd.{f}": getattr(bwd, f) for f in FIELDS}}
    grads = torch.autograd.grad(out.float(), list(leaves.values()), grad_out, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves.values(), grads)]
    return {"out": out.float(), **dict(zip(leaves, grads))}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def case(batch: int, length: int, dim: int, d_state: int, rank: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    fwd = random_direction(dim, d_state, rank, gen, dt_max=2.0, perturbed=True)
    bwd = random_direction(dim, d_state, rank, gen, dt_max=2.0, perturbed=True)
    xz = torch.randn(batch, length, 2 * dim, generator=gen)
    grad_out = torch.randn(batch, length, dim, generator=gen)
    return xz, fwd, bwd, grad_out


@pytest.mark.parametrize(
    "batch,length,dim,d_state,rank",
    [
        (2, 17, 12, 4, 3),  # 3 chunks of 8 (the last partial), 2 channel blocks of 8 (the last partial)
        (1, 3, 8, 8, 5),  # shorter than one chunk
        (1, 1, 8, 4, 2),  # a single token
    ],
)
def test_triton_matches_torch_backend_fp32(batch, length, dim, d_state, rank):
    xz, fwd, bwd, grad_out = case(batch, length, dim, d_state, rank)
    got = run_with_grads("triton", xz, fwd, bwd, grad_out)
    ref = run_with_grads("torch", xz, fwd, bwd, grad_out)
    errors = {name: rel_err(got[name], ref[name]) for name in ref}
    # fp32 agreement is ~1e-6 on most tensors; the dt gradients are ill-conditioned sums, where both
    # backends are ~5e-4 off a float64 run, hence the bound of 1e-3
    assert max(errors.values()) < 1e-3, errors
    assert errors["out"] < 1e-5, errors


def test_extreme_steps_match_torch_backend():
    # dt biases from -14 to 26: softplus's small-exp series, its x > 20 branch, and decays of 0
    xz, fwd, bwd, grad_out = case(1, 11, 8, 4, 3, seed=1)
    steep = torch.linspace(-14.0, 26.0, 8)
    fwd = DirectionParams(**{**{f: getattr(fwd, f) for f in FIELDS}, "dt_proj_bias": steep})
    bwd = DirectionParams(**{**{f: getattr(bwd, f) for f in FIELDS}, "dt_proj_bias": steep.flip(0)})
    got = run_with_grads("triton", xz, fwd, bwd, grad_out)
    ref = run_with_grads("torch", xz, fwd, bwd, grad_out)
    errors = {name: rel_err(got[name], ref[name]) for name in ref}
    assert max(errors.values()) < 1e-3, errors


def test_bf16_inputs_stay_close_to_fp32():
    # The interpreter casts fp32 -> bf16 by truncation (a GPU rounds to nearest), so this bound is
    # loose; it still catches a broken bf16 path, which would be off by orders of magnitude.
    xz, fwd, bwd, grad_out = case(1, 13, 16, 4, 3, seed=2)
    got = run_with_grads("triton", xz, fwd, bwd, grad_out, dtype=torch.bfloat16)
    ref = run_with_grads("torch", xz, fwd, bwd, grad_out)
    assert got["out"].dtype == torch.float32
    errors = {name: rel_err(got[name], ref[name]) for name in ref}
    assert max(errors.values()) < 0.1, errors
    assert errors["out"] < 0.03, errors


@pytest.mark.parametrize("backend, dtype", [("triton", torch.float32), ("triton", torch.bfloat16),
                                            ("torch", torch.float32)])
def test_the_packed_core_gives_the_same_values_and_gradients_bit_for_bit(backend, dtype):
    """bidirectional_mixer_core_packed(xz) against the core of xz's halves: the same output and gradients, xz's
    (the triton backend's dxz, written by its kernels) equal to autograd's concatenation of dx and dz."""
    xz, fwd, bwd, grad_out = case(2, 17, 12, 4, 3, seed=3)
    packed = run_with_grads(backend, xz, fwd, bwd, grad_out, dtype, packed=True)
    unpacked = run_with_grads(backend, xz, fwd, bwd, grad_out, dtype)
    for name, value in unpacked.items():
        assert torch.equal(packed[name], value), name


@pytest.mark.parametrize("batch, d_state, dim, rank, dt_chunks, x_chunks", [
    (3, 4, 5, 3, 1, 2),      # few sequences, one chunk
    (37, 16, 40, 24, 8, 8),  # the model's d_state and chunks, ragged column blocks
    (2, 6, 19, 2, 3, 5),     # d_state and chunk counts that are no powers of two
    (300, 4, 3, 2, 1, 1),    # more sequences than a program loads at once: two loads each
])
def test_the_parameter_gradients_are_the_sums_they_replace(batch, d_state, dim, rank, dt_chunks, x_chunks):
    """triton_param_grads' one launch against torch's sums: over the sequences (dA times A, transposed to
    A_log's (D, N); dD; the dt bias) and over the weight gradients' token chunks."""
    from reidcam.reid.model.kernels import triton_param_grads

    gen = torch.Generator().manual_seed(batch)
    parts = torch.randn(2, batch, d_state + 2, dim, generator=gen)
    a = -torch.rand(2, dim, d_state, generator=gen) - 0.5
    dt_proj_chunks = torch.randn(2, dt_chunks, dim, rank, generator=gen)
    x_proj_chunks = torch.randn(2, x_chunks, rank + 2 * d_state, dim, generator=gen)
    got = triton_param_grads.direction_param_grads(parts, a, dt_proj_chunks, x_proj_chunks)
    expected = triton_param_grads.direction_param_grads_reference(parts, a, dt_proj_chunks, x_proj_chunks)
    for name in ("da_log", "d_skip", "dt_bias", "dt_proj", "x_proj"):
        value, reference = getattr(got, name), getattr(expected, name)
        assert value.shape == reference.shape and value.is_contiguous(), name
        torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-5, msg=name)


def test_autograd_takes_the_parameter_gradients_as_the_core_writes_them():
    """Each direction's gradient is a contiguous slice of one (2, ...) buffer in its parameter's layout, so
    autograd keeps it as the parameter's .grad without a copy: both directions' A_log gradients (and those of
    x_proj) share one storage. dA_log had been a transposed product, which autograd copied for each direction."""
    xz, fwd, bwd, grad_out = case(2, 9, 8, 4, 3, seed=4)
    fwd, bwd = leaf_params(fwd), leaf_params(bwd)
    bidirectional_mixer_core_packed(xz, fwd, bwd, backend="triton").backward(grad_out)
    for name in ("A_log", "x_proj_weight", "dt_proj_weight", "D"):
        forward, backward = getattr(fwd, name).grad, getattr(bwd, name).grad
        assert forward.untyped_storage().data_ptr() == backward.untyped_storage().data_ptr(), name


def test_the_packed_core_leaves_autograd_nothing_to_concatenate():
    """With xz whole, the Function's gradient is xz's: no chunk and no concatenation of dx and dz in the graph,
    where the halves' core has one (SplitBackward, whose backward copies dx and dz into a new (B, L, 2D))."""
    xz, fwd, bwd, _ = case(1, 5, 8, 4, 2)
    xz.requires_grad_(True)
    packed = graph_nodes(bidirectional_mixer_core_packed(xz, fwd, bwd, backend="triton"))
    assert packed == ["_BiMambaCoreFnBackward", "AccumulateGrad"]
    halves = graph_nodes(bidirectional_mixer_core(*xz.chunk(2, dim=-1), fwd, bwd, backend="triton"))
    assert any("Split" in name for name in halves)


def test_a_packed_input_of_odd_width_is_refused():
    xz, fwd, bwd, _ = case(1, 4, 8, 4, 2)
    with pytest.raises(ValueError, match="equal width"):
        bidirectional_mixer_core_packed(xz[..., :-1], fwd, bwd, backend="triton")


def test_model_runs_through_the_triton_backend_when_selected_by_env(monkeypatch):
    from reidcam.reid.model import build_model

    torch.manual_seed(0)
    model = build_model(
        "reidmamba_small", dim=16, depth=2, branch_depth=1, num_cls_tokens=4, img_size=(16, 16),
        patch_size=8, stride=8, d_state=2, drop_path=0.0,
    ).eval()
    images = torch.randn(1, 3, 16, 16)
    monkeypatch.setenv("REIDCAM_SCAN", "torch")
    with torch.no_grad():
        expected = model(images)
    monkeypatch.setenv("REIDCAM_SCAN", "triton")
    calls = []
    kernels = sys.modules["reidcam.reid.model.kernels.mixer_core"]
    real_fn = kernels._BiMambaCoreFn.apply

    def counting_apply(*args):
        calls.append(args[0].shape)
        assert args[1] is None  # in_proj's output whole (packed), no z apart
        return real_fn(*args)

    monkeypatch.setattr(kernels._BiMambaCoreFn, "apply", counting_apply)
    with torch.no_grad():
        got = model(images)
    assert len(calls) == 1 + 3  # one shared block, one block in each of the 3 branches
    assert rel_err(got, expected) < 1e-4


def test_cpu_tensors_are_refused_outside_the_interpreter(monkeypatch):
    xz, fwd, bwd, _ = case(1, 4, 8, 4, 2)
    x, z = xz.chunk(2, dim=-1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        bidirectional_mixer_core(x, z, fwd, bwd, backend="triton")


def tiny_mixer():
    from reidcam.reid.model import build_model

    torch.manual_seed(0)
    model = build_model(
        "reidmamba_small", dim=16, depth=2, branch_depth=1, num_cls_tokens=4, img_size=(16, 16),
        patch_size=8, stride=8, d_state=2, drop_path=0.0,
    )
    mixer = next(m for m in model.modules() if hasattr(m, "direction"))
    mixer.scan_backend = "triton"
    x, z = torch.randn(1, 5, 2 * mixer.d_inner).chunk(2, dim=-1)

    def run(backend: str) -> torch.Tensor:
        with torch.no_grad():
            return bidirectional_mixer_core(x, z, mixer.direction(""), mixer.direction("_b"), backend=backend)

    return mixer, run


def test_outside_a_memo_scope_updates_that_bump_no_version_are_seen_at_once():
    """With no memo in scope the tables are computed at every forward: an EMA-style ``p.data.mul_`` (no
    version bump, which a memo's stamp cannot see) changes the very next output."""
    mixer, run = tiny_mixer()
    first = run("triton")
    versions = (mixer.A_b_log._version, mixer.x_proj.weight._version)
    mixer.A_b_log.data.mul_(0.5)
    mixer.x_proj.weight.data.copy_(torch.randn_like(mixer.x_proj.weight))  # as an EMA/SWA update might
    assert (mixer.A_b_log._version, mixer.x_proj.weight._version) == versions  # invisible to a stamp
    changed = run("triton")
    assert rel_err(changed, run("torch")) < 1e-5
    assert rel_err(changed, first) > 1e-2


def test_a_memo_scope_reuses_its_tables_and_never_frees_those_it_handed_out():
    """In a scope the tables are made once per mixer; after an in-place update (a version bump) the
    output is computed from the new weights while the memo keeps its first tables (a CUDA graph captured
    earlier may read them): nothing is replaced. The entry goes with the parameter."""
    mixer_core = sys.modules["reidcam.reid.model.kernels.mixer_core"]
    from reidcam.reid.model.kernels import WeightTableMemo, weight_memo

    mixer, run = tiny_mixer()
    memo = WeightTableMemo()
    with weight_memo(memo):
        first = run("triton")
        tables = memo.tables_of(mixer.A_log)
        assert tables is not None and len(memo) == 1
        x_proj, weights = tables
        snapshot = [t.clone() for t in (x_proj, *vars(weights).values()) if isinstance(t, torch.Tensor)]
        run("triton")
        assert memo.tables_of(mixer.A_log) is tables  # the same tensors: nothing rebuilt
        with torch.no_grad():
            mixer.A_b_log.mul_(0.5)  # in place, as an optimiser step
            mixer.x_proj.weight.copy_(torch.randn_like(mixer.x_proj.weight))  # as load_state_dict
        changed = run("triton")
        assert memo.tables_of(mixer.A_log) is tables and tables[0] is x_proj  # kept, not replaced
        kept = [t for t in (x_proj, *vars(weights).values()) if isinstance(t, torch.Tensor)]
        assert all(torch.equal(a, b) for a, b in zip(kept, snapshot))  # and not written over
        with weight_memo(None):
            assert mixer_core._MEMO.get() is None
        assert mixer_core._MEMO.get() is memo
    assert mixer_core._MEMO.get() is None
    assert rel_err(changed, run("torch")) < 1e-5
    assert rel_err(changed, first) > 1e-2
    del mixer, run, tables, x_proj, weights, kept
    import gc

    gc.collect()
    assert len(memo) == 0  # the entry went with its parameter


def test_training_after_inference_mode_uses_tables_it_can_save():
    """Tables made under inference mode cannot be saved for a backward; a training step right after an
    evaluation with the same weights, in the same memo scope, must not get them."""
    from reidcam.reid.model.kernels import WeightTableMemo, weight_memo

    xz, fwd, bwd, grad_out = case(1, 6, 8, 4, 2)
    fwd, bwd = leaf_params(fwd), leaf_params(bwd)
    x, z = xz.chunk(2, dim=-1)
    for memo in (None, WeightTableMemo()):
        with weight_memo(memo):
            with torch.inference_mode():
                expected = bidirectional_mixer_core(x, z, fwd, bwd, backend="triton")
            out = bidirectional_mixer_core(x, z, fwd, bwd, backend="triton")
            (out * grad_out).sum().backward()
        assert rel_err(out.detach(), expected) < 1e-6
        assert fwd.A_log.grad is not None and fwd.A_log.grad.abs().sum() > 0
        fwd.A_log.grad = None


def test_the_embedder_runs_its_forwards_in_the_scope_of_the_memo_it_owns(monkeypatch):
    """Embedder.embed (eager, on the CPU here) fills the embedder's own memo; nothing stays in scope after."""
    import numpy as np

    from reidcam.reid.embedder import Embedder

    mixer_core = sys.modules["reidcam.reid.model.kernels.mixer_core"]
    model = build_tiny_model()
    monkeypatch.setenv("REIDCAM_SCAN", "torch")
    crops = [np.random.default_rng(0).integers(0, 256, (20, 12, 3), dtype=np.uint8)]
    expected = Embedder(model, torch.device("cpu"), batch_size=2).embed(crops)
    monkeypatch.setenv("REIDCAM_SCAN", "triton")
    embedder = Embedder(model, torch.device("cpu"), batch_size=2)
    memo = embedder._weight_memo
    assert isinstance(memo, mixer_core.WeightTableMemo) and len(memo) == 0
    got = embedder.embed(crops)
    assert len(memo) == 4  # one shared block, one block in each of the 3 branches
    assert mixer_core._MEMO.get() is None
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def build_tiny_model():
    from reidcam.reid.model import build_model

    torch.manual_seed(0)
    return build_model(
        "reidmamba_small", dim=16, depth=2, branch_depth=1, num_cls_tokens=4, img_size=(16, 16),
        patch_size=8, stride=8, d_state=2, drop_path=0.0,
    )
