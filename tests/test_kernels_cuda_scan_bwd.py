"""The CUDA backward scan (kernels/scan_bwd.cu, cuda_scan.CudaScanBackward) against its definition.

Without a GPU: NVRTC compiles the source for sm_90 as a user's machine would, with no spilling; and the kernel
runs on the CPU, one OS thread per CUDA thread (cuda_emulation.py), against a float64 autograd of the forward
scan and against the Triton backward (in Triton's interpreter), on ragged shapes. With a GPU (run on the device,
see bench/NOTES-speed.md): the same comparisons with the compiled kernel, fp32, bf16 and fp16, and the mixer core's
dispatch (REIDCAM_SCAN_BWD).
"""

from __future__ import annotations

import ctypes
from dataclasses import replace

import pytest
import torch

from reidcam.reid.model.kernels import cuda_scan

pytest.importorskip("triton")

import cuda_emulation  # noqa: E402
from cubin_tools import compiled_or_skip, kernel_reports, kernel_static_shared  # noqa: E402

from reidcam.reid.model.kernels import triton_scan  # noqa: E402

GRAD_NAMES = ("dz", "dxc", "ddt", "dbc", "da_log", "d_skip", "dt_bias")
STORED_IN_COMPUTE_DTYPE = ("dz", "dxc", "ddt")  # the others are fp32 whatever the inputs
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the kernel's builds
C_TYPES = {torch.float32: "float", torch.bfloat16: "bf16_bits", torch.float16: "f16_bits"}  # T in scan_bwd.cu


# scan_bwd.cu's REIDCAM_BWD_DESIGN values (0: loads where they are needed; 1, the default: loads issued ahead;
# 3: design 1 in 80 registers, pass 2's carries in dynamic shared memory; 4: design 3, two channels a thread)
DESIGNS = [0, 1, 3, 4]
# the builds compiled for sm_90 with each design's own launch bounds: (design, threads, blocks per SM); design 3's
# two are 24 warps per SM, design 4's 12 (of two channels a thread)
BUILDS = [(0, 256, 2), (1, 256, 2), (3, 256, 3), (3, 128, 6), (4, 128, 3)]
# sm_90 (H100, H200): shared memory per SM and per block, the 1 KB the driver reserves per block, the static limit
SHARED_PER_SM, SHARED_PER_BLOCK, RESERVED_PER_BLOCK, STATIC_SHARED = 228 * 1024, 227 * 1024, 1024, 48 * 1024


@pytest.fixture(scope="module", params=BUILDS, ids=lambda b: f"design{b[0]}-{b[1]}x{b[2]}")
def sm90(request) -> tuple[tuple[int, int, int], cuda_scan.CompiledSource]:
    design, threads, _ = request.param
    return request.param, compiled_or_skip(lambda: cuda_scan.compile_scan_backward(
        90, d_state=16, threads=threads, defines={"REIDCAM_BWD_DESIGN": design}))


def test_the_kernels_compile_for_sm90_without_spilling(sm90):
    """No spills, and no more registers than the launch bounds' blocks per SM leave (ptxas allocates by 8)."""
    (design, threads, blocks), compiled = sm90
    reports = kernel_reports(compiled.log)
    pass_two = {cuda_scan.backward_kernel_name(dt) for dt in cuda_scan.backward_dtypes(design)}
    assert set(reports) == pass_two | set(pass_one_kernel_names(design))
    for name, (registers, spills) in reports.items():
        print(f"{name}: {registers} registers, {spills} bytes of spill (sm_90, d_state 16)")
        assert spills == 0, (name, reports)
        assert registers <= 65536 // (threads * blocks) // 8 * 8, (name, reports)
    pass_one_threads = cuda_scan.backward_block_channels(threads, design)
    for name in pass_one_kernel_names(design):
        registers = reports[name][0]
        assert registers <= 65536 // (pass_one_threads * cuda_scan.BWD_CHECKPOINT_BLOCKS) // 8 * 8, (name, reports)


def pass_one_kernel_names(design: int) -> list[str]:
    """The kernels of pass 1 alone that the design's default build holds."""
    apart = cuda_scan.backward_pass_one_apart(design)
    return [cuda_scan.backward_checkpoint_kernel_name(dt) for dt in cuda_scan.backward_dtypes(design) if apart]


def test_the_shared_memory_fits_the_blocks_per_sm(sm90):
    """Designs 0 and 1: static shared memory, at most 48 KB, and no dynamic. Designs 3 and 4: all dynamic, as much as
    cuda_scan.backward_dynamic_bytes says (the source asserts it equal to its SharedRows), and the launch bounds'
    blocks fit an SM with the driver's reserve. Design 4's pass 1 apart: its B rows, static, for its blocks."""
    (design, threads, blocks), compiled = sm90
    shared = kernel_static_shared(compiled.log)
    pass_one = pass_one_kernel_names(design)
    for name in pass_one:
        assert shared[name] == 4 * 2 * 2 * 16 * cuda_scan.BWD_STEPS, shared
        assert cuda_scan.BWD_CHECKPOINT_BLOCKS * (shared[name] + RESERVED_PER_BLOCK) <= SHARED_PER_SM
    static = max((v for name, v in shared.items() if name not in pass_one), default=0)
    dynamic = cuda_scan.backward_dynamic_bytes(threads, 16, cuda_scan.BWD_STEPS, design)
    if design in cuda_scan.BWD_SHARED_DESIGNS:
        assert static == 0 and dynamic == cuda_scan.backward_shared_bytes(threads, 16, cuda_scan.BWD_STEPS, design)
    else:
        assert 0 < static <= STATIC_SHARED and dynamic == 0, (static, dynamic)
    assert static + dynamic <= SHARED_PER_BLOCK
    assert blocks * (static + dynamic + RESERVED_PER_BLOCK) <= SHARED_PER_SM, (static, dynamic, blocks)


def test_a_shared_memory_count_unlike_the_sources_does_not_compile():
    """backward_shared_bytes reaches the source as REIDCAM_SHARED_BYTES, which it asserts equal to sizeof(SharedRows):
    a count that disagrees stops the build rather than launching with too little dynamic shared memory."""
    right = cuda_scan.backward_shared_bytes(256, 16, cuda_scan.BWD_STEPS, 3)
    with pytest.raises(cuda_scan.CudaKernelUnavailable, match="disagrees with SharedRows"):
        compiled_or_skip(lambda: cuda_scan.compile_scan_backward(
            90, d_state=16, defines={"REIDCAM_BWD_DESIGN": 3, "REIDCAM_SHARED_BYTES": right + 4}))


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
                 "const float* a2, const float* dskip, {T}* dz, {T}* dxc, {T}* ddt, float* dbc, float* parts, "
                 "float* checkpoints, int Bsz, int L, int D, int R, long long stride_zb, long long stride_zl")
CHECKPOINT_KERNEL_PARAMS = ("const {T}* xc, const {T}* pre, const float* dbl, const float* dt_bias, const float* a2, "
                            "float* checkpoints, int Bsz, int L, int D, int R")
EMULATED_THREADS = 64  # two warps per block: the cross-warp sums and several blocks per sequence, at CPU speed


@pytest.fixture(scope="module")
def emulation_dir(tmp_path_factory):
    if not cuda_emulation.available():
        pytest.skip("no g++ to emulate the kernel")
    return tmp_path_factory.mktemp("emulated")


def emulated_library(design: int, workdir, **macros: int) -> ctypes.CDLL:
    """The design's kernels built for the emulation, with more of scan_bwd.cu's macros where given
    (cuda_emulation.build keeps each build in workdir)."""
    kernels = {cuda_scan.backward_kernel_name(dt): KERNEL_PARAMS.format(T=C_TYPES[dt])
               for dt in cuda_scan.backward_dtypes(design)}
    if cuda_scan.backward_pass_one_apart(design):
        kernels.update({cuda_scan.backward_checkpoint_kernel_name(dt): CHECKPOINT_KERNEL_PARAMS.format(T=C_TYPES[dt])
                        for dt in cuda_scan.backward_dtypes(design)})
    d_state, steps = 16, cuda_scan.BWD_STEPS
    flush = cuda_scan.backward_flush({"REIDCAM_BWD_DESIGN": design, **macros})
    defines = {"REIDCAM_N": d_state, "REIDCAM_THREADS": EMULATED_THREADS, "REIDCAM_STEPS": steps,
               "REIDCAM_BWD_DESIGN": design, **macros,
               "REIDCAM_SHARED_BYTES": cuda_scan.backward_shared_bytes(EMULATED_THREADS, d_state, steps, design, flush)}
    return cuda_emulation.build(cuda_scan.BWD_SOURCE, kernels, defines, workdir)


@pytest.fixture(scope="module", params=DESIGNS, ids=lambda d: f"design{d}")
def emulated(request, emulation_dir) -> tuple[int, ctypes.CDLL]:
    return request.param, emulated_library(request.param, emulation_dir)


class EmulatedBackward(cuda_scan.CudaScanBackward):
    """CudaScanBackward with its launch replaced by the CPU emulation of the same kernel (the launch's dynamic
    shared memory included)."""

    def __init__(self, design: int, library: ctypes.CDLL, **macros: int) -> None:
        super().__init__(threads=EMULATED_THREADS, defines={"REIDCAM_BWD_DESIGN": design, **macros})
        self.library = library
        self._driver = self

    def kernels(self, device, d_state):
        names = [cuda_scan.backward_kernel_name(dt) for dt in cuda_scan.backward_dtypes(self.design)]
        return {name: f"emu_{name}" for name in names + pass_one_kernel_names(self.design)}

    def ensure_context(self, device: int) -> None:
        pass

    def launch(self, function: str, grid, threads, args, stream, shared_bytes: int = 0) -> None:
        cuda_emulation.launch(self.library, function, grid, threads, shared_bytes, args)


def even_for_pairs(design: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The shape, its channels made even for the designs whose threads run channel pairs (they need an even D)."""
    bsz, length, dim = shape
    return bsz, length, dim + dim % cuda_scan.backward_channels_per_thread(design)


def run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out, **macros: int) -> triton_scan.ScanGrads:
    monkeypatch.setattr(cuda_scan.torch.cuda, "current_stream", lambda device: type("S", (), {"cuda_stream": 0}))
    monkeypatch.setattr(cuda_scan, "device_index", lambda device: 0)
    return EmulatedBackward(*emulated, **macros).backward(xc, z, dbl, tables, grad_out)


@pytest.mark.parametrize("shape", [(2, 23, 70), (1, 5, 40), (2, 1, 33), (1, 6, 260)])
def test_the_emulated_kernel_equals_the_float64_definition(emulated, monkeypatch, shape):
    """Each dtype that the design builds (design 3 has no fp16 kernel: cuda_scan.BWD_DESIGN_OF)."""
    for dtype in cuda_scan.backward_dtypes(emulated[0]):
        xc, z, dbl, tables, grad_out = scan_inputs(*even_for_pairs(emulated[0], shape), dtype, "cpu")
        got = run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out)
        check_dtypes(got, xc, z)
        errors = relative_errors(got, reference_grads(xc, z, dbl, tables, grad_out))
        assert all(errors[name] < TOLERANCE[dtype][name] for name in GRAD_NAMES), (dtype, errors)


def test_the_emulated_kernel_equals_the_triton_backward(emulated, monkeypatch):
    """Against Triton's own kernel (its interpreter here): same function, same interface."""
    if not triton_scan.interpreting():
        pytest.skip("runs Triton in its CPU interpreter")
    xc, z, dbl, tables, grad_out = scan_inputs(1, 9, 8, torch.float32, "cpu", seed=3)
    got = run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out)
    triton = triton_scan.scan_backward(xc, z, dbl, tables, grad_out)
    errors = relative_errors(got, {name: getattr(triton, name) for name in GRAD_NAMES})
    assert all(error < 1e-5 for error in errors.values()), errors


def captured_buffers(monkeypatch) -> list[triton_scan.GradBuffers]:
    """The GradBuffers that either backend's backward makes from now on, in order."""
    made: list[triton_scan.GradBuffers] = []
    make = triton_scan.GradBuffers.for_inputs
    monkeypatch.setattr(triton_scan.GradBuffers, "for_inputs",
                        staticmethod(lambda xc, d_state: made.append(make(xc, d_state)) or made[-1]))
    return made


def sequence_inputs(xc, z, dbl, tables, grad_out, b: int):
    """Sequence b's share of scan_inputs' tensors: the inputs of a backward of that sequence alone."""
    _, bsz, length, _ = xc.shape
    dbl_b = dbl.view(2, bsz, length, -1)[:, b]
    tables_b = replace(tables, dt=tables.dt.view(2, bsz, length, -1)[:, b])
    return xc[:, b : b + 1], z[b : b + 1], dbl_b, tables_b, grad_out[b : b + 1]


def check_parts_layout(parts: torch.Tensor, xc, z, dbl, tables, grad_out) -> None:
    """parts (2, B, N + 2, D) fp32: for each (direction, sequence) rows 0 .. N-1 hold dL/dA (row n: state n), row N dD
    and row N + 1 the dt bias, each that sequence's own (the float64 definition on the sequence alone)."""
    _, bsz, _, dim = xc.shape
    d_state = tables.a.shape[-1]
    assert parts.shape == (2, bsz, d_state + 2, dim) and parts.dtype == torch.float32
    for b in range(bsz):
        expected = reference_grads(*sequence_inputs(xc, z, dbl, tables, grad_out, b))
        rows = {"da": parts[:, b, :d_state], "d_skip": parts[:, b, d_state], "dt_bias": parts[:, b, d_state + 1]}
        want = {"da": (expected["da_log"] / tables.a.double()).transpose(1, 2), "d_skip": expected["d_skip"],
                "dt_bias": expected["dt_bias"]}
        for name, value in rows.items():
            error = ((value.double() - want[name]).norm() / want[name].norm()).item()
            assert error < 1e-4, (b, name, error)


def test_the_emulated_kernel_leaves_each_sequences_partial_sums_in_one_buffer(emulated, monkeypatch):
    xc, z, dbl, tables, grad_out = scan_inputs(3, 11, 70, torch.float32, "cpu", seed=6)
    made = captured_buffers(monkeypatch)
    run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out)
    check_parts_layout(made[0].parts, xc, z, dbl, tables, grad_out)


def test_the_triton_backward_leaves_each_sequences_partial_sums_in_one_buffer(monkeypatch):
    if not triton_scan.interpreting():
        pytest.skip("runs Triton in its CPU interpreter")
    xc, z, dbl, tables, grad_out = scan_inputs(3, 11, 12, torch.float32, "cpu", seed=6)
    made = captured_buffers(monkeypatch)
    triton_scan.scan_backward(xc, z, dbl, tables, grad_out)
    check_parts_layout(made[0].parts, xc, z, dbl, tables, grad_out)


def test_the_partial_sums_are_summed_into_their_gradients():
    """GradBuffers.grads: one sum over the sequences, then dA's rows times A (dA_log), dD's row, the bias's row."""
    bsz, d_state, dim = 3, 4, 5
    parts = torch.randn(2, bsz, d_state + 2, dim, dtype=torch.float32)
    a = -torch.rand(2, dim, d_state) - 0.5
    tables = triton_scan.ScanTables(dt=torch.empty(0), dt_weight=torch.empty(0), dt_bias=torch.empty(0), a=a,
                                    a2=torch.empty(0), d_skip=torch.empty(0))
    shares = torch.randn(2, bsz, 7, dim)
    buffers = triton_scan.GradBuffers(dz=shares, dxc=shares, ddt=shares, dbc=torch.empty(0), parts=parts)
    grads = buffers.grads(tables, torch.float32)
    sums = parts.sum(1)
    assert torch.equal(grads.da_log, sums[:, :d_state].transpose(1, 2) * a)
    assert torch.equal(grads.d_skip, sums[:, d_state]) and torch.equal(grads.dt_bias, sums[:, d_state + 1])
    assert torch.equal(grads.dz, shares[0] + shares[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dz_goes_into_the_view_it_is_given(dtype):
    """dz_out: the z half of the packed gradient of in_proj's output, as the mixer core passes it; the same bits as
    dz in a tensor of its own, nothing written beside it; a view of another dtype is refused."""
    shares = torch.randn(2, 2, 7, 5).to(dtype)
    buffers = triton_scan.GradBuffers(dz=shares, dxc=shares, ddt=shares, dbc=torch.empty(0),
                                      parts=torch.zeros(2, 2, 6, 5))
    tables = triton_scan.ScanTables(dt=torch.empty(0), dt_weight=torch.empty(0), dt_bias=torch.empty(0),
                                    a=torch.ones(2, 5, 4), a2=torch.empty(0), d_skip=torch.empty(0))
    packed = torch.full((2, 7, 10), float("nan"), dtype=dtype)
    view = packed[..., 5:]
    got = buffers.grads(tables, dtype, view).dz
    assert got.data_ptr() == view.data_ptr() and torch.equal(got, buffers.grads(tables, dtype).dz)
    assert packed[..., :5].isnan().all()
    with pytest.raises(ValueError, match="dtype"):
        buffers.grads(tables, dtype, torch.empty(2, 7, 5, dtype=torch.float64))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_pair_sum_kernel_writes_the_sum_into_a_strided_view(device, dtype):
    """pair_sum_into, which adds the directions' dz shares into the packed gradient on a GPU: torch.add's bits, in
    ragged blocks of rows and channels, nothing written beside the view. On the CPU it runs in Triton's
    interpreter, whose bfloat16 cast truncates where the GPU's rounds: within one ulp there."""
    if device == "cpu" and not triton_scan.interpreting():
        pytest.skip("runs Triton in its CPU interpreter")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator().manual_seed(8)
    pair = torch.randn(2, 3, 37, 70, generator=gen).to(device, dtype)
    packed = torch.full((3, 37, 140), float("nan"), dtype=dtype, device=device)
    got = triton_scan.pair_sum_into(pair, packed[..., 70:])
    want = torch.add(pair[0], pair[1])
    assert got.data_ptr() == packed[..., 70:].data_ptr() and packed[..., :70].isnan().all()
    if device == "cpu" and dtype == torch.bfloat16:
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="contiguous pair"):
        triton_scan.pair_sum_into(pair, packed[..., 69:])


def test_the_emulated_backward_writes_dz_into_a_view(emulated, monkeypatch):
    xc, z, dbl, tables, grad_out = scan_inputs(2, 9, 40, torch.bfloat16, "cpu", seed=7)
    packed = torch.full((2, 9, 80), float("nan"), dtype=torch.bfloat16)
    fresh = run_emulated(emulated, monkeypatch, xc, z, dbl, tables, grad_out)
    got = EmulatedBackward(*emulated).backward(xc, z, dbl, tables, grad_out, packed[..., 40:])
    assert torch.equal(packed[..., 40:], fresh.dz) and packed[..., :40].isnan().all()
    assert got.dz.data_ptr() == packed[..., 40:].data_ptr()


def assert_same_per_channel(one: triton_scan.ScanGrads, other: triton_scan.ScanGrads) -> None:
    """Every per-channel gradient bit for bit (all but dbc, whose sums over the channels may add in another order)."""
    for name in GRAD_NAMES:
        if name != "dbc":
            assert torch.equal(getattr(one, name), getattr(other, name)), name


def assert_same_sums(one: triton_scan.ScanGrads, other: triton_scan.ScanGrads) -> None:
    """assert_same_per_channel; dbc's channel sums to float rounding (another order)."""
    assert_same_per_channel(one, other)
    torch.testing.assert_close(other.dbc, one.dbc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("earlier, later", [(1, 3), (3, 4)])
def test_the_emulated_designs_compute_the_same_per_channel_arithmetic(emulation_dir, monkeypatch, dtype, earlier,
                                                                      later):
    """The same arithmetic in other storage: every per-channel gradient bit for bit; dbc's sums add the channels in
    another order (design 3: a column of 8 per lane, not design 1's rotated row of 16; design 4: a thread's two
    channels first)."""
    xc, z, dbl, tables, grad_out = scan_inputs(2, 23, 70, dtype, "cpu", seed=4)
    one, other = (run_emulated((design, emulated_library(design, emulation_dir)), monkeypatch, xc, z, dbl, tables,
                               grad_out) for design in (earlier, later))
    assert_same_sums(one, other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_emulated_design_4_transposes_two_states_at_once_to_the_same_sums(emulation_dir, monkeypatch, dtype):
    """Design 4 transposes dB/dC every second state (FLUSH 2, on twice the rows), where REIDCAM_FLUSH 1 (a bench
    variant) does at every state: every per-channel gradient bit for bit, dbc the same sums in another order, the
    launch's shared memory as each build counts it (the emulation gives the kernel exactly that many bytes)."""
    xc, z, dbl, tables, grad_out = scan_inputs(2, 23, 70, dtype, "cpu", seed=11)
    assert cuda_scan.backward_flush({"REIDCAM_BWD_DESIGN": 4}) == 2
    one = run_emulated((4, emulated_library(4, emulation_dir, REIDCAM_FLUSH=1)), monkeypatch, xc, z, dbl, tables,
                       grad_out, REIDCAM_FLUSH=1)
    two = run_emulated((4, emulated_library(4, emulation_dir)), monkeypatch, xc, z, dbl, tables, grad_out)
    assert_same_sums(one, two)


class RecordingDriver:
    """The driver calls that CudaScanBackward makes, recorded instead of made."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def ensure_context(self, device: int) -> None:
        pass

    def load(self, cubin: bytes, names: list[str], optional=()) -> dict[str, str]:
        return {name: name for name in names}

    def allow_dynamic_shared(self, function: str, size: int) -> None:
        self.calls.append(("allow", function, size))

    def launch(self, function: str, grid, threads, args, stream, shared_bytes: int = 0) -> None:
        self.calls.append(("launch", function, grid, threads, shared_bytes))


def record_launches(scan: cuda_scan.CudaScanBackward, monkeypatch) -> RecordingDriver:
    """``scan`` set to record its driver calls on the CPU: an empty cubin for sm_90, stream 0, device 0."""
    scan._driver = driver = RecordingDriver()
    monkeypatch.setattr(scan, "compile", lambda arch, d_state: cuda_scan.CompiledSource(cubin=b"", log=""))
    monkeypatch.setattr(cuda_scan.torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(cuda_scan.torch.cuda, "current_stream", lambda device: type("S", (), {"cuda_stream": 0}))
    monkeypatch.setattr(cuda_scan, "device_index", lambda device: 0)
    return driver


@pytest.mark.parametrize("design, threads", [(1, 256), (3, 256), (3, 128), (4, 64), (1, None), (3, None), (4, None)])
def test_the_launch_passes_the_designs_dynamic_shared_memory(monkeypatch, design, threads):
    """Designs 3's and 4's kernels are allowed their shared memory once loaded, and each launch passes it; designs 0
    and 1 pass none. (The bench's PrecompiledBackward goes the same way: it replaces only compile.) Without a block
    size the build and the launch take the design's (backward_threads: 128 for designs 3 and 4; design 4's blocks
    are of 256 channels)."""
    scan = cuda_scan.CudaScanBackward(threads=threads, defines={"REIDCAM_BWD_DESIGN": design})
    threads = threads or {1: 256, 3: 128, 4: 128}[design]
    driver = record_launches(scan, monkeypatch)
    xc, z, dbl, tables, grad_out = scan_inputs(2, 9, 300, torch.float32, "cpu")
    launch, _ = scan.launcher(xc, z, dbl, tables, grad_out)
    launch()
    dynamic = cuda_scan.backward_dynamic_bytes(threads, 16, cuda_scan.BWD_STEPS, design)
    assert (dynamic > 0) == (design in (3, 4))
    names = sorted([cuda_scan.backward_kernel_name(dt) for dt in cuda_scan.backward_dtypes(design)]
                   + pass_one_kernel_names(design))
    allowed = sorted(call for call in driver.calls if call[0] == "allow")
    assert allowed == ([("allow", name, dynamic) for name in names] if dynamic else [])
    launched = cuda_scan.backward_kernel_name(torch.float32)
    channels = threads * (2 if design == 4 else 1)  # a block's
    assert driver.calls[-1] == ("launch", launched, (-(-300 // channels), 4), threads, dynamic)


@pytest.mark.parametrize("dtype", DTYPES)
def test_design_4_launches_pass_1_first(monkeypatch, dtype):
    """Design 4's backward is two launches on the same grid: pass 1's kernel, a thread per channel of pass 2's blocks
    and no dynamic shared memory, then pass 2's with all of its own."""
    scan = cuda_scan.CudaScanBackward(defines={"REIDCAM_BWD_DESIGN": 4})
    driver = record_launches(scan, monkeypatch)
    xc, z, dbl, tables, grad_out = scan_inputs(2, 9, 300, dtype, "cpu")
    launch, _ = scan.launcher(xc, z, dbl, tables, grad_out)
    launch()
    grid, shared = (2, 4), cuda_scan.backward_dynamic_bytes(128, 16, cuda_scan.BWD_STEPS, 4)
    assert [call for call in driver.calls if call[0] == "launch"] == [
        ("launch", cuda_scan.backward_checkpoint_kernel_name(dtype), grid, 256, 0),
        ("launch", cuda_scan.backward_kernel_name(dtype), grid, 128, shared)]


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # design 3 builds no fp16 kernel
@pytest.mark.parametrize("shape, threads", [((2, 131, 300), 256), ((3, 140, 768), 256), ((2, 131, 300), 128)])
def test_cuda_design_3_equals_design_1(dtype, shape, threads):
    """Design 3 (80 registers, dynamic shared memory) against the default: every per-channel gradient bit for bit,
    dbc up to the order of its sums; and against the float64 definition."""
    xc, z, dbl, tables, grad_out = scan_inputs(*shape, dtype, "cuda", seed=5)
    one = cuda_scan.CudaScanBackward(defines={"REIDCAM_BWD_DESIGN": 1}).backward(xc, z, dbl, tables, grad_out)
    three = cuda_scan.CudaScanBackward(threads=threads, defines={"REIDCAM_BWD_DESIGN": 3}).backward(
        xc, z, dbl, tables, grad_out)
    assert_same_per_channel(one, three)
    assert ((three.dbc - one.dbc).abs().max() / one.dbc.abs().max()).item() < 1e-5  # 2e-7 in the CPU emulation
    errors = relative_errors(three, reference_grads(xc, z, dbl, tables, grad_out))
    assert all(errors[name] < TOLERANCE[dtype][name] for name in GRAD_NAMES), errors


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 131, 300), (3, 140, 768), (1, 7, 34)])
def test_cuda_design_4_equals_design_3(dtype, shape):
    """Design 4 (two channels a thread) against design 3 (design 1 for fp16, which design 3 does not build): every
    per-channel gradient bit for bit, dbc up to the order of its sums; and against the float64 definition."""
    xc, z, dbl, tables, grad_out = scan_inputs(*shape, dtype, "cuda", seed=5)
    earlier = cuda_scan.CudaScanBackward(defines={"REIDCAM_BWD_DESIGN": 1 if dtype == torch.float16 else 3})
    one = earlier.backward(xc, z, dbl, tables, grad_out)
    four = cuda_scan.CudaScanBackward(defines={"REIDCAM_BWD_DESIGN": 4}).backward(xc, z, dbl, tables, grad_out)
    assert_same_per_channel(one, four)
    assert ((four.dbc - one.dbc).abs().max() / one.dbc.abs().max()).item() < 1e-5
    errors = relative_errors(four, reference_grads(xc, z, dbl, tables, grad_out))
    assert all(errors[name] < TOLERANCE[dtype][name] for name in GRAD_NAMES), errors


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_backward_leaves_each_sequences_partial_sums_in_one_buffer(monkeypatch, dtype):
    """Each build's parts (design 4, as the mixer runs them; design 1, the default build)."""
    from reidcam.reid.model.kernels import mixer_core

    xc, z, dbl, tables, grad_out = scan_inputs(3, 37, 300, dtype, "cuda", seed=6)
    made = captured_buffers(monkeypatch)
    mixer_core.cuda_scan_backward(xc, z, grad_out).backward(xc, z, dbl, tables, grad_out)
    cuda_scan.CudaScanBackward().backward(xc, z, dbl, tables, grad_out)
    for buffers in made:
        check_parts_layout(buffers.parts, xc, z, dbl, tables, grad_out)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_backward_writes_dz_into_a_view(dtype):
    from reidcam.reid.model.kernels import mixer_core

    xc, z, dbl, tables, grad_out = scan_inputs(2, 131, 300, dtype, "cuda", seed=7)
    scan = mixer_core.cuda_scan_backward(xc, z, grad_out)
    packed = torch.full((2, 131, 600), float("nan"), dtype=dtype, device="cuda")
    fresh = scan.backward(xc, z, dbl, tables, grad_out)
    got = scan.backward(xc, z, dbl, tables, grad_out, packed[..., 300:])
    assert torch.equal(packed[..., 300:], fresh.dz) and packed[..., :300].isnan().all()
    assert got.dz.data_ptr() == packed[..., 300:].data_ptr()


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
    kernels = mixer_core.cuda_scan_backward(xc, z, grad_out)
    monkeypatch.setattr(kernels, "backward",
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


def test_the_cuda_backward_runs_where_its_offsets_within_a_sequence_fit_32_bits():
    xc = torch.empty((2, 256, 1164, 1536), device="meta")  # 1.4e9 values in all, 1.8e6 a sequence
    assert cuda_scan.backward_offsets_fit(xc, torch.empty((2, 256 * 1164, 88), device="meta"))
    long = torch.empty((2, 1, 2**21, 1024), device="meta")  # one sequence of 2^31 values
    assert not cuda_scan.backward_offsets_fit(long, torch.empty((2, 2**21, 56), device="meta"))
    assert not cuda_scan.backward_offsets_fit(long[..., :8], torch.empty((2, 2**21, 2**10), device="meta"))  # dbl's


def test_the_checkpoints_are_one_per_sub_chunk_but_the_first():
    assert [cuda_scan.checkpoint_count(length, 4) for length in (1, 4, 5, 8, 131, 140)] == [0, 0, 1, 1, 32, 34]
    # the training shape: ~214 MB of scratch at batch 64 (bench/NOTES-speed.md, next GPU session)
    assert 2 * 64 * cuda_scan.checkpoint_count(140) * 16 * 768 * 4 / 1e6 == pytest.approx(214, abs=1)


def test_design_3_tiles_the_checkpoints_by_channel_block():
    """Design 3's scratch is (2, B, checkpoints, blocks, d_state, threads): a thread's states a compile-time stride
    apart; designs 0 and 1 keep (2, B, checkpoints, d_state, dim). Where dim is a multiple of the block, the same
    size (the model's 768 at 256 threads)."""
    assert cuda_scan.checkpoint_shape(64, 140, 16, 768, 256, 4, 3) == (2, 64, 34, 3, 16, 256)
    assert cuda_scan.checkpoint_shape(2, 131, 16, 300, 128, 4, 3) == (2, 2, 32, 3, 16, 128)
    for design in (0, 1):
        assert cuda_scan.checkpoint_shape(2, 131, 16, 300, 256, 4, design) == (2, 2, 32, 16, 300)
    # design 4's tiles are its blocks' channels, two a thread
    assert cuda_scan.checkpoint_shape(64, 140, 16, 768, 64, 4, 4) == (2, 64, 34, 6, 16, 128)


def test_the_channel_pairs_run_where_they_fit_else_the_unpaired_design():
    """Design 4 takes an even D whose pairs are aligned loads (z a view of the packed xz, as the model passes it);
    an odd D, or a z whose pairs straddle a word, runs the dtype's unpaired design."""
    for dtype in DTYPES:
        xc, z, _, _, grad_out = scan_inputs(2, 9, 40, dtype, "cpu")
        assert cuda_scan.backward_design_for(xc, z, grad_out) == 4
        xz = torch.zeros(2, 9, 81, dtype=dtype)
        assert cuda_scan.backward_design_for(xc, xz[..., 41:], grad_out) == cuda_scan.BWD_UNPAIRED_DESIGN_OF[dtype]
        xc, z, _, _, grad_out = scan_inputs(2, 9, 33, dtype, "cpu")
        assert cuda_scan.backward_design_for(xc, z, grad_out) == cuda_scan.BWD_UNPAIRED_DESIGN_OF[dtype]
