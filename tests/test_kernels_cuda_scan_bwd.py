"""The CUDA backward scan (kernels/scan_bwd.cu, cuda_scan.CudaScanBackward) against its definition.

Without a GPU: NVRTC compiles the source for sm_90 as a user's machine would, with no spilling; and the kernel
runs on the CPU, one OS thread per CUDA thread (cuda_emulation.py), against a float64 autograd of the forward
scan and against the Triton backward (in Triton's interpreter), on ragged shapes. With a GPU (run on the device,
see bench/NOTES-speed.md): the same comparisons with the compiled kernel, fp32, bf16 and fp16, and the mixer core's
dispatch (REIDCAM_SCAN_BWD).
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from reidcam.reid.model.kernels import cuda_scan

pytest.importorskip("triton")

import cuda_emulation  # noqa: E402
from cubin_tools import compiled_or_skip, kernel_reports  # noqa: E402

from reidcam.reid.model.kernels import triton_scan  # noqa: E402

GRAD_NAMES = ("dz", "dxc", "ddt", "dbc", "da_log", "d_skip", "dt_bias")
STORED_IN_COMPUTE_DTYPE = ("dz", "dxc", "ddt")  # the others are fp32 whatever the inputs
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the kernel's builds
C_TYPES = {torch.float32: "float", torch.bfloat16: "bf16_bits", torch.float16: "f16_bits"}  # T in scan_bwd.cu


# scan_bwd.cu's REIDCAM_BWD_DESIGN values (0: loads where they are needed; 1, the default: loads issued ahead)
DESIGNS = [0, 1]


@pytest.fixture(scope="module", params=DESIGNS, ids=lambda d: f"design{d}")
def sm90(request) -> cuda_scan.CompiledSource:
    return compiled_or_skip(
        lambda: cuda_scan.compile_scan_backward(90, d_state=16, defines={"REIDCAM_BWD_DESIGN": request.param}))


def test_the_kernels_compile_for_sm90_without_spilling(sm90):
    reports = kernel_reports(sm90.log)
    assert set(reports) == {cuda_scan.backward_kernel_name(dt) for dt in DTYPES}
    for name, (registers, spills) in reports.items():
        print(f"{name}: {registers} registers, {spills} bytes of spill (sm_90, d_state 16)")
        assert spills == 0, (name, reports)
        assert registers <= 128, (name, reports)  # two blocks of 256 threads per SM


def test_the_shared_memory_fits_a_static_allocation(sm90):
    """Static shared memory stops at 48 KB; the launch passes no dynamic shared memory."""
    import re

    sizes = [int(x) for x in re.findall(r"(\d+) bytes smem", sm90.log)]
    assert sizes and max(sizes) <= 48 * 1024, sizes


# ---- inputs and the float64 definition --------------------------------------------------------------------


def scan_inputs(bsz: int, length: int, dim: int, dtype: torch.dtype, device: str, seed: int = 0, d_state: int = 16):
    """Random inputs of the backward scan at the model's ranges, z a strided view as in the model, and a
    grad_out; all on ``device``."""
    from mixer_fixtures import random_direction

    gen = torch.Generator().manual_seed(seed)
    rank = 6
    params = [random_direction(dim, d_state, rank, gen, dt_max=0.5, perturbed=True) for _ in range(2)]
    scan = [triton_scan.ScanParams(*(t.to(device) for t in (p.dt_proj_weight, p.dt_proj_bias, p.A_log, p.D)))
            for p in params]
    xc = torch.randn(2, bsz, length, dim, generator=gen).to(device, dtype)
    xz = torch.randn(bsz, length, 2 * dim, generator=gen).to(device, dtype)
    z = xz[..., dim:]
    dbl = torch.randn(2, bsz * length, rank + 2 * d_state, generator=gen).to(device)
    tables = triton_scan.scan_tables(dbl, scan[0], scan[1], dtype)
    grad_out = torch.randn(bsz, length, dim, generator=gen).to(device, dtype)
    return xc, z, dbl, tables, grad_out


def reference_grads(xc, z, dbl, tables, grad_out) -> dict[str, torch.Tensor]:
    """ScanGrads' fields in float64, by autograd through the forward scan written step by step (the definition
    in triton_scan), from the same tensors as the kernels (the dt projection in the compute dtype)."""
    _, bsz, length, dim = xc.shape
    rank, d_state = tables.dt.shape[-1], tables.a.shape[-1]
    leaves = {
        "xc": xc.double(), "z": z.double(), "pre": tables.dt_projection().double(), "dbl": dbl.double(),
        "a_log": torch.log(-tables.a.double()), "d_skip": tables.d_skip.double(), "dt_bias": tables.dt_bias.double(),
    }
    for t in leaves.values():
        t.requires_grad_(True)
    delta = torch.nn.functional.softplus(leaves["pre"].view(2, bsz, length, dim) + leaves["dt_bias"][:, None, None, :])
    a = -torch.exp(leaves["a_log"])
    bc = leaves["dbl"].view(2, bsz, length, -1)[..., rank:]
    ys = []
    for direction in range(2):
        h = torch.zeros(bsz, dim, d_state, dtype=torch.float64, device=xc.device)
        y = [None] * length
        for t in range(length) if direction == 0 else range(length - 1, -1, -1):
            d_t = delta[direction, :, t, :, None]
            u_t = leaves["xc"][direction, :, t]
            h = torch.exp(d_t * a[direction]) * h + d_t * u_t[..., None] * bc[direction, :, t, None, :d_state]
            y[t] = (h * bc[direction, :, t, None, d_state:]).sum(-1) + leaves["d_skip"][direction] * u_t
        ys.append(torch.stack(y, dim=1))
    zz = leaves["z"]
    out = (ys[0] + ys[1]) * 0.5 * zz * torch.sigmoid(zz)
    out.backward(grad_out.double())
    return {
        "dz": leaves["z"].grad, "dxc": leaves["xc"].grad, "ddt": leaves["pre"].grad.view(2, bsz, length, dim),
        "dbc": leaves["dbl"].grad[..., rank:], "da_log": leaves["a_log"].grad, "d_skip": leaves["d_skip"].grad,
        "dt_bias": leaves["dt_bias"].grad,
    }


def relative_errors(got: triton_scan.ScanGrads, expected: dict[str, torch.Tensor]) -> dict[str, float]:
    errors = {}
    for name in GRAD_NAMES:
        value = getattr(got, name).double().cpu()
        want = expected[name].double().cpu()
        assert value.shape == want.shape, (name, value.shape, want.shape)
        errors[name] = ((value - want).norm() / want.norm().clamp_min(1e-30)).item()
    return errors


def check_dtypes(got: triton_scan.ScanGrads, xc: torch.Tensor, z: torch.Tensor) -> None:
    assert got.dz.dtype == z.dtype and got.dxc.dtype == got.ddt.dtype == xc.dtype
    for name in ("dbc", "da_log", "d_skip", "dt_bias"):
        assert getattr(got, name).dtype == torch.float32, name


# fp32: the brief's 1e-4 relative error; bf16: the outputs' own rounding (2^-9 of each value, ~2^-10 in norm)
# for what is stored in bf16, and fp32 sums of exact bf16 inputs for the rest; fp16: its outputs' rounding is 8
# times finer (2^-12; 2-4e-4 in norm under emulation), and a bound of a quarter of bf16's tells the two apart. The
# inputs are randn and the outputs a few units: nowhere near fp16's largest value, 65504.
TOLERANCE = {dtype: {name: limit if name in STORED_IN_COMPUTE_DTYPE else 1e-4 for name in GRAD_NAMES}
             for dtype, limit in ((torch.float32, 1e-4), (torch.bfloat16, 4e-3), (torch.float16, 1e-3))}
# the ragged shapes: L not a multiple of the checkpoint interval (131, 7, 1) and one that is (140); D not a
# multiple of the block (33, 130, 300) and of the warp (33), one block and several
SHAPES = [(2, 131, 300), (1, 140, 256), (3, 7, 33), (2, 1, 130)]


# ---- on the CPU: the kernel emulated, one OS thread per CUDA thread -------------------------------------------

KERNEL_PARAMS = ("const {T}* xc, const {T}* z, const {T}* g, const float* dbl, const {T}* pre, const float* dt_bias, "
                 "const float* a2, const float* dskip, {T}* dz, {T}* dxc, {T}* ddt, float* dbc, float* da_part, "
                 "float* dskip_part, float* dbias_part, float* checkpoints, int Bsz, int L, int D, int R, "
                 "long long stride_zb, long long stride_zl")
EMULATED_THREADS = 64  # two warps per block: the cross-warp sums and several blocks per sequence, at CPU speed


@pytest.fixture(scope="module", params=DESIGNS, ids=lambda d: f"design{d}")
def emulated(request, tmp_path_factory) -> ctypes.CDLL:
    if not cuda_emulation.available():
        pytest.skip("no g++ to emulate the kernel")
    kernels = {cuda_scan.backward_kernel_name(dt): KERNEL_PARAMS.format(T=C_TYPES[dt]) for dt in DTYPES}
    defines = {"REIDCAM_N": 16, "REIDCAM_THREADS": EMULATED_THREADS, "REIDCAM_STEPS": cuda_scan.BWD_STEPS,
               "REIDCAM_BWD_DESIGN": request.param}
    return cuda_emulation.build(cuda_scan.BWD_SOURCE, kernels, defines, tmp_path_factory.mktemp("emulated"))


class EmulatedBackward(cuda_scan.CudaScanBackward):
    """CudaScanBackward with its launch replaced by the CPU emulation of the same kernel."""

    def __init__(self, library: ctypes.CDLL) -> None:
        super().__init__(threads=EMULATED_THREADS)
        self.library = library
        self._driver = self

    def kernels(self, device, d_state):
        return {cuda_scan.backward_kernel_name(dt): f"emu_{cuda_scan.backward_kernel_name(dt)}" for dt in DTYPES}

    def ensure_context(self, device: int) -> None:
        pass

    def launch(self, function: str, grid, threads, args, stream) -> None:
        getattr(self.library, function)(ctypes.c_int(grid[0]), ctypes.c_int(grid[1]), ctypes.c_int(threads), *args)


def run_emulated(library, monkeypatch, xc, z, dbl, tables, grad_out) -> triton_scan.ScanGrads:
    monkeypatch.setattr(cuda_scan.torch.cuda, "current_stream", lambda device: type("S", (), {"cuda_stream": 0}))
    monkeypatch.setattr(cuda_scan, "device_index", lambda device: 0)
    return EmulatedBackward(library).backward(xc, z, dbl, tables, grad_out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 23, 70), (1, 5, 40), (2, 1, 33)])
def test_the_emulated_kernel_equals_the_float64_definition(emulated, monkeypatch, dtype, shape):
    xc, z, dbl, tables, grad_out = scan_inputs(*shape, dtype, "cpu")
    got = run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out)
    check_dtypes(got, xc, z)
    errors = relative_errors(got, reference_grads(xc, z, dbl, tables, grad_out))
    assert all(errors[name] < TOLERANCE[dtype][name] for name in GRAD_NAMES), errors


def test_the_emulated_kernel_equals_the_triton_backward(emulated, monkeypatch):
    """Against Triton's own kernel (its interpreter here): same function, same interface."""
    if not triton_scan.interpreting():
        pytest.skip("runs Triton in its CPU interpreter")
    xc, z, dbl, tables, grad_out = scan_inputs(1, 9, 8, torch.float32, "cpu", seed=3)
    got = run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out)
    triton = triton_scan.scan_backward(xc, z, dbl, tables, grad_out)
    errors = relative_errors(got, {name: getattr(triton, name) for name in GRAD_NAMES})
    assert all(error < 1e-5 for error in errors.values()), errors


# ---- on a GPU ---------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_backward_equals_the_float64_definition(dtype, shape):
    xc, z, dbl, tables, grad_out = scan_inputs(*shape, dtype, "cuda")
    got = cuda_scan.CudaScanBackward().backward(xc, z, dbl, tables, grad_out)
    check_dtypes(got, xc, z)
    errors = relative_errors(got, reference_grads(xc, z, dbl, tables, grad_out))
    assert all(errors[name] < TOLERANCE[dtype][name] for name in GRAD_NAMES), errors


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 131, 300), (4, 140, 768)])
def test_cuda_backward_equals_the_triton_backward(dtype, shape):
    xc, z, dbl, tables, grad_out = scan_inputs(*shape, dtype, "cuda", seed=1)
    got = cuda_scan.CudaScanBackward().backward(xc, z, dbl, tables, grad_out)
    expected = triton_scan.scan_backward(xc, z, dbl, tables, grad_out)
    errors = relative_errors(got, {name: getattr(expected, name) for name in GRAD_NAMES})
    # both compute in fp32 in different orders; in bf16 or fp16 an output may round the other way (one ulp)
    limit = {torch.float32: 2e-5, torch.bfloat16: 4e-3, torch.float16: 1e-3}[dtype]
    assert all(errors[name] < (limit if name in STORED_IN_COMPUTE_DTYPE else 2e-5) for name in GRAD_NAMES), errors


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_backward_is_deterministic_but_for_the_atomic_sums(dtype):
    xc, z, dbl, tables, grad_out = scan_inputs(2, 50, 520, dtype, "cuda", seed=2)
    scan = cuda_scan.CudaScanBackward()
    first, second = (scan.backward(xc, z, dbl, tables, grad_out) for _ in range(2))
    for name in ("dz", "dxc", "ddt", "da_log", "d_skip", "dt_bias"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    torch.testing.assert_close(first.dbc, second.dbc, rtol=1e-5, atol=1e-6)


@gpu
def test_cuda_backward_in_fp16_overflows_to_infinity_as_triton_does():
    """fp16 training's loss scaler lowers its scale where a gradient overflows, so the kernel's fp16 stores must
    round what exceeds 65504 to infinity (cvt.rn), not wrap or saturate: at a scale of 2^14 some of dz, dxc and ddt
    do (so in the CPU emulation), and the Triton backward's too."""
    xc, z, dbl, tables, grad_out = scan_inputs(2, 23, 70, torch.float16, "cuda", seed=4)
    grad_out = (grad_out.float() * 2**14).half()
    got = cuda_scan.CudaScanBackward().backward(xc, z, dbl, tables, grad_out)
    expected = triton_scan.scan_backward(xc, z, dbl, tables, grad_out)
    for name in STORED_IN_COMPUTE_DTYPE:
        overflowed = getattr(got, name).isinf()
        assert overflowed.any() and overflowed.sum() == getattr(expected, name).isinf().sum(), name
        assert not getattr(got, name).isnan().any(), name


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("choice, runs_cuda", [("triton", False), (None, True), ("cuda", True), ("auto", True)])
def test_the_mixer_core_picks_the_backward_by_env(monkeypatch, choice, runs_cuda, dtype):
    """REIDCAM_SCAN_BWD: auto by default (the CUDA kernel where it compiles), cuda, or triton; bf16 and fp16 alike."""
    from reidcam.reid.model.kernels import mixer_core

    xc, z, dbl, tables, grad_out = scan_inputs(2, 9, 64, dtype, "cuda")
    if choice is None:
        monkeypatch.delenv("REIDCAM_SCAN_BWD", raising=False)
    else:
        monkeypatch.setenv("REIDCAM_SCAN_BWD", choice)
    ran = []
    monkeypatch.setattr(mixer_core, "scan_backward", lambda *args: ran.append("triton") or triton_scan.scan_backward(*args))
    monkeypatch.setattr(mixer_core._CUDA_SCAN_BWD, "backward",
                        lambda *args: ran.append("cuda") or cuda_scan.CudaScanBackward().backward(*args))
    mixer_core._scan_backward(xc, z, dbl, tables, grad_out)
    assert ran == (["cuda"] if runs_cuda else ["triton"])


def test_the_backward_choice_defaults_to_auto(monkeypatch):
    monkeypatch.delenv("REIDCAM_SCAN_BWD", raising=False)
    assert cuda_scan.backward_kernel_choice() == "auto"
    monkeypatch.setenv("REIDCAM_SCAN_BWD", "CUDA")
    assert cuda_scan.backward_kernel_choice() == "cuda"
    monkeypatch.setenv("REIDCAM_SCAN_BWD", "fast")
    with pytest.raises(ValueError):
        cuda_scan.backward_kernel_choice()


def test_the_checkpoints_are_one_per_sub_chunk_but_the_first():
    assert [cuda_scan.checkpoint_count(length, 4) for length in (1, 4, 5, 8, 131, 140)] == [0, 0, 1, 1, 32, 34]
    # the training shape: ~214 MB of scratch at batch 64 (bench/NOTES-speed.md, next GPU session)
    assert 2 * 64 * cuda_scan.checkpoint_count(140) * 16 * 768 * 4 / 1e6 == pytest.approx(214, abs=1)
