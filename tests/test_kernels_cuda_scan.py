"""The CUDA forward scan (kernels/scan_fwd.cu, kernels/cuda_scan.py).

Without a GPU: NVRTC compiles the source for sm_90 as a user's machine would, and the compiled loop is
held to what makes it worth having (registers for 24 warps per SM, barely a spill; about one exponential and under 10 instructions per
(token, channel, state) where the Triton forward needs ~11). The kernels also run on the CPU, one OS thread per
CUDA thread (cuda_emulation.py): the unsplit and split kernels against the float64 definition and each other on
ragged shapes, the split kernels with either direction's threads made to lag at every barrier. With a GPU (run
on the device, see bench/NOTES-speed.md): its output equals a float64 step-by-step definition on ragged shapes,
every variant gives the same bits, and the split path equals the unsplit one and replays in a CUDA graph.
In bf16 and fp16 the mixer core runs the CUDA kernels only, forward and backward.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import pytest
import torch

from reidcam.reid.model.kernels import cuda_scan

pytest.importorskip("triton")

import cuda_emulation  # noqa: E402
from cubin_tools import compiled_or_skip, kernel_reports, kernel_sass  # noqa: E402


@pytest.fixture(scope="module")
def sm90() -> cuda_scan.CompiledScan:
    return compiled_or_skip(lambda: cuda_scan.compile_scan(90, d_state=16))


def token_loops(cubin: bytes, tmp_path: Path) -> dict[str, list[dict[str, int]]]:
    """Opcode counts of each kernel's per-token loop (the loop bodies with the 16 exponentials and B and C from
    shared memory; the split kernels' gating of the stored tokens has exponentials but no LDS)."""
    from test_kernels_sass import loop_opcodes

    kernels = kernel_sass(cubin, tmp_path)
    return {name: [c for c in loop_opcodes(lines) if c["MUFU"] >= 16 and c["LDS"] and not c["BAR"]]
            for name, lines in kernels.items()}


def all_kernel_names() -> set[str]:
    return {name(dt, v) for name in (cuda_scan.kernel_name, cuda_scan.split_kernel_name)
            for dt, variants in cuda_scan.VARIANTS.items() for v in variants}


def test_every_variant_compiles_for_sm90_within_its_register_cap(sm90):
    reports = kernel_reports(sm90.log)
    assert set(reports) == all_kernel_names()
    for name, (registers, spills) in reports.items():
        # the register caps are the H200 sweep's choice: 80 (24 warps per SM) costs the unsplit fp32 kernel 8 bytes
        # (a store and a load), the 2-byte kernels (bf16, fp16) nothing; the split kernels, new, are held to none
        assert spills <= (16 if "_f32_" in name and "_split_" not in name else 0), (name, reports)
        assert registers <= (80 if name.endswith("_c1") else 128), (name, reports)


def test_the_token_loop_spends_about_one_exponential_and_few_instructions_per_cell(sm90, tmp_path):
    loops = token_loops(sm90.cubin, tmp_path)
    for name, bodies in loops.items():
        channels = cuda_scan.channels_per_thread(name.rsplit("_", 1)[1])
        # one per direction; the split kernels' directions each have a loop of steps that store y and one of
        # steps that gate it
        assert len(bodies) == (4 if "_split_" in name else 2), (name, bodies)
        for counts in bodies:
            cells = 16 * channels  # (channel, state) pairs of one token
            # 16 exponentials per channel, plus softplus (2) and, in the gating direction, silu (2)
            assert counts["MUFU"] <= 20 * channels, (name, counts)
            # the split kernels' steps also stage B and C of both directions, read the scratch and prefetch the next
            # token's inputs into L1 (scan_fwd.cu's prefetch_l1): the fp32 one gates in 169 instructions a token
            # (10.6 a cell)
            assert sum(counts.values()) / cells < (11 if "_split_" in name else 10), (name, counts)
            # B and C: 4 states per broadcast load; the split 16-bit c1 kernels read u and pre there too (staged)
            staged = "_split_" in name and "_f32_" not in name and name.endswith("_c1")
            assert counts["LDS"] <= (10 if staged else 8), (name, counts)


# ---- on a GPU ---------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def scan_inputs(bsz: int, length: int, dim: int, dtype: torch.dtype, seed: int = 0, device: str = "cuda"):
    """Random inputs of the forward scan at the model's ranges, z a strided view as in the model."""
    from mixer_fixtures import random_direction

    from reidcam.reid.model.kernels import triton_scan

    gen = torch.Generator().manual_seed(seed)
    rank, d_state = 6, 16
    params = [random_direction(dim, d_state, rank, gen, dt_max=0.5, perturbed=True) for _ in range(2)]
    scan = [triton_scan.ScanParams(p.dt_proj_weight, p.dt_proj_bias, p.A_log, p.D) for p in params]
    scan = [triton_scan.ScanParams(*(t.to(device) for t in (s.dt_proj_weight, s.dt_bias, s.a_log, s.d_skip)))
            for s in scan]
    xc = torch.randn(2, bsz, length, dim, generator=gen).to(device).to(dtype)
    xz = torch.randn(bsz, length, 2 * dim, generator=gen).to(device).to(dtype)
    z = xz[..., dim:]
    dbl = torch.randn(2, bsz * length, rank + 2 * d_state, generator=gen).to(device)
    tables = triton_scan.scan_tables(dbl, scan[0], scan[1], dtype)
    return xc, z, dbl, tables


def reference_forward(xc, z, dbl, tables) -> torch.Tensor:
    """The forward scan in float64, step by step, from the same tensors (the definition in triton_scan)."""
    _, bsz, length, dim = xc.shape
    rank, d_state = tables.dt.shape[-1], tables.a.shape[-1]
    pre = tables.dt_projection().double().view(2, bsz, length, dim) + tables.dt_bias.double()[:, None, None, :]
    delta = torch.nn.functional.softplus(pre)
    u = xc.double()
    bc = dbl.double().view(2, bsz, length, -1)[..., rank:]
    ys = []
    for direction in range(2):
        h = torch.zeros(bsz, dim, d_state, dtype=torch.float64, device=xc.device)
        y = torch.empty(bsz, length, dim, dtype=torch.float64, device=xc.device)
        steps = range(length) if direction == 0 else range(length - 1, -1, -1)
        for t in steps:
            d_t = delta[direction, :, t, :, None]
            h = torch.exp(d_t * tables.a[direction].double()) * h + d_t * u[direction, :, t, :, None] * bc[direction, :, t, None, :d_state]
            y[:, t] = (h * bc[direction, :, t, None, d_state:]).sum(-1) + tables.d_skip[direction].double() * u[direction, :, t]
        ys.append(y)
    zz = z.double()
    return (ys[0] + ys[1]) * 0.5 * zz * torch.sigmoid(zz)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).norm() / expected.norm()).item()


# fp32: the 1e-3 with a wide margin; bf16: the output's own rounding (2^-9) and the bf16 pre
# fp32: the 1e-3 with a wide margin; bf16: the output's own rounding (2^-9) and the bf16 pre; fp16: the
# same with 3 more mantissa bits, so an eighth of bf16's bound
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


# ---- on the CPU: the kernels emulated, one OS thread per CUDA thread ------------------------------------------

KERNEL_PARAMS = ("const {T}* xc, const {T}* z, const float* dbl, const {T}* pre, const float* dt_bias, {T}* out, "
                 "const float* a2, const float* dskip, int Bsz, int L, int D, int R, long long stride_zb, "
                 "long long stride_zl")
# small blocks and chunks, so that short sequences cross several chunks and narrow ones several blocks, with one
# token loaded ahead (the default) and two
EMULATED_BUILDS = {
    "64 threads": {"REIDCAM_THREADS": 64, "REIDCAM_CHUNK": 8, "REIDCAM_SPLIT_CHUNK": 8},
    "128 threads, 2 ahead": {"REIDCAM_THREADS": 128, "REIDCAM_CHUNK": 16, "REIDCAM_SPLIT_CHUNK": 8, "REIDCAM_AHEAD": 2},
}
# ragged: lengths across 0-6 chunks and not a multiple of one (1 is gated wholly after the scan), channel counts
# not a multiple of a block (33 is odd: c1 only)
EMULATED_SHAPES = [(2, 23, 70), (1, 45, 130), (2, 1, 33), (3, 5, 40)]


@pytest.fixture(scope="module", params=list(EMULATED_BUILDS))
def emulated(request, tmp_path_factory) -> tuple[ctypes.CDLL, int]:
    if not cuda_emulation.available():
        pytest.skip("no g++ to emulate the kernel")
    kernels = {}
    for dtype, t in ((torch.bfloat16, "bf16_bits"), (torch.float16, "f16_bits"), (torch.float32, "float")):
        for variant in cuda_scan.VARIANTS[dtype]:
            kernels[cuda_scan.kernel_name(dtype, variant)] = KERNEL_PARAMS.format(T=t)
            kernels[cuda_scan.split_kernel_name(dtype, variant)] = KERNEL_PARAMS.format(T=t) + ", float* ys"
    defines = {"REIDCAM_N": 16, **EMULATED_BUILDS[request.param]}
    library = cuda_emulation.build(cuda_scan.SOURCE, kernels, defines, tmp_path_factory.mktemp("emulated"))
    return library, defines["REIDCAM_THREADS"]


class EmulatedScan(cuda_scan.CudaScan):
    """CudaScan with its launches replaced by the CPU emulation of the same kernels, the variant fixed (no
    timing) and ``wave`` blocks to a wave of every unsplit kernel; it records the kernels it launches."""

    def __init__(self, emulated: tuple[ctypes.CDLL, int], variant: str, split: str, wave: int = 1) -> None:
        self.library, threads = emulated
        super().__init__(threads=threads, split=split)
        self._driver = self
        self.variant = variant
        names = all_kernel_names()
        self.device_kernels = cuda_scan._DeviceKernels(
            functions={name: f"emu_{name}" for name in names}, choice={},
            waves={name: wave for name in names if "_split_" not in name})
        self.launched: list[str] = []

    def kernels(self, device, d_state):
        return self.device_kernels

    def forward(self, xc, z, dbl, tables):
        self.device_kernels.choice[(xc.dtype, *xc.shape[1:])] = self.variant
        return super().forward(xc, z, dbl, tables)

    def ensure_context(self, device: int) -> None:
        pass

    def launch(self, function: str, grid, threads, args, stream, shared_bytes: int = 0) -> None:
        self.launched.append(function.removeprefix("emu_"))
        cuda_emulation.launch(self.library, function, grid, threads, shared_bytes, args)


@pytest.fixture
def on_the_cpu(monkeypatch):
    """The CUDA calls of CudaScan.forward answered on the CPU, and every tensor it makes filled with NaN: an
    output element the kernel leaves unwritten, or scratch it reads before writing, shows in the result."""
    monkeypatch.setattr(cuda_scan.torch.cuda, "current_stream", lambda device: type("S", (), {"cuda_stream": 0}))
    monkeypatch.setattr(cuda_scan, "device_index", lambda device: 0)
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        return empty(*args, **kwargs).fill_(math.nan)

    monkeypatch.setattr(cuda_scan.torch, "empty", nan_empty)


def emulated_options(xc: torch.Tensor, z: torch.Tensor) -> list[str]:
    """The variants that take these tensors (c2: even channels, 8-byte aligned; z at channel 70 of bf16 is not)."""
    return [v for v in cuda_scan.VARIANTS[xc.dtype] if cuda_scan._variant_fits(v, [xc, z], z, xc.shape[-1])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", EMULATED_SHAPES)
def test_the_emulated_kernels_equal_the_float64_definition(emulated, on_the_cpu, dtype, shape):
    xc, z, dbl, tables = scan_inputs(*shape, dtype, device="cpu")
    expected = reference_forward(xc, z, dbl, tables)
    for variant in emulated_options(xc, z):
        for split in ("off", "on"):
            scan = EmulatedScan(emulated, variant, split)
            got = scan.forward(xc, z, dbl, tables)
            name = cuda_scan.split_kernel_name if split == "on" else cuda_scan.kernel_name
            assert scan.launched == [name(dtype, variant)]
            assert got.dtype == dtype and not got.isnan().any(), (variant, split)
            assert relative_error(got, expected) < TOLERANCE[dtype], (variant, split)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", EMULATED_SHAPES)
def test_the_emulated_split_kernels_equal_the_unsplit_ones(emulated, on_the_cpu, dtype, shape):
    """fp32: the same bits (the same arithmetic; the scratch holds y_f exactly as the unsplit kernel's out does).
    bf16: the unsplit kernel rounds y_f to bf16 before it adds y_b, the split one does not: at most that rounding
    apart, and the split output is the closer to the definition."""
    xc, z, dbl, tables = scan_inputs(*shape, dtype, seed=1, device="cpu")
    expected = reference_forward(xc, z, dbl, tables)
    for variant in emulated_options(xc, z):
        split = EmulatedScan(emulated, variant, "on").forward(xc, z, dbl, tables)
        unsplit = EmulatedScan(emulated, variant, "off").forward(xc, z, dbl, tables)
        if dtype == torch.float32:
            assert torch.equal(split, unsplit), variant
        else:
            assert relative_error(split, unsplit.double()) < 4e-3, variant
            assert relative_error(split, expected) <= relative_error(unsplit, expected), variant


@pytest.mark.parametrize("lagging", ["forward", "backward"])
def test_the_emulated_split_kernel_orders_its_directions_with_barriers(emulated, on_the_cpu, lagging):
    """One direction's threads start every barrier phase 2 ms late, so that the other's do their share of it
    first: a load of the other's y that no barrier separates from its store then reads the NaN of the fresh
    scratch (never by chance), and the output differs. It equals the output without the lag, run twice."""
    library, threads = emulated
    # 45 tokens: in both builds the first gating step follows a chunk's first step, so that a rule that read the
    # chunk of the step itself rather than of its loads would let a load pass the store in the chunk before
    xc, z, dbl, tables = scan_inputs(2, 45, 40, torch.float32, seed=2, device="cpu")
    scan = EmulatedScan(emulated, "c1", "on")
    plain = scan.forward(xc, z, dbl, tables)
    first = threads // 2 if lagging == "backward" else 0
    library.emu_set_lag(first, first + threads // 2, 2000)
    try:
        lagged = [scan.forward(xc, z, dbl, tables) for _ in range(2)]
    finally:
        library.emu_set_lag(0, 0, 0)
    assert all(torch.equal(out, plain) for out in lagged)


@pytest.mark.parametrize("split, wave, runs_split", [("auto", 1, False), ("auto", 1000, True), ("on", 1, True),
                                                     ("off", 1000, False)])
def test_the_forward_runs_the_split_kernel_below_a_wave_of_blocks(emulated, on_the_cpu, split, wave, runs_split):
    """2 sequences of 70 channels: 2 or 4 blocks of the unsplit kernel (64 or 128 threads), split under auto where
    that is less than the wave."""
    xc, z, dbl, tables = scan_inputs(2, 5, 70, torch.float32, device="cpu")
    scan = EmulatedScan(emulated, "c1", split, wave=wave)
    scan.forward(xc, z, dbl, tables)
    name = cuda_scan.split_kernel_name if runs_split else cuda_scan.kernel_name
    assert scan.launched == [name(torch.float32, "c1")]


def test_the_split_choice_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("REIDCAM_SCAN_FWD_SPLIT", raising=False)
    assert cuda_scan.forward_split_choice() == "auto"
    monkeypatch.setenv("REIDCAM_SCAN_FWD_SPLIT", "ON")
    assert cuda_scan.forward_split_choice() == "on"
    monkeypatch.setenv("REIDCAM_SCAN_FWD_SPLIT", "yes")
    with pytest.raises(ValueError, match="REIDCAM_SCAN_FWD_SPLIT"):
        cuda_scan.forward_split_choice()
    with pytest.raises(ValueError):
        cuda_scan.CudaScan(split="sometimes")


def test_the_split_rule_on_an_h200():
    """132 SMs x 3 blocks of the c1 kernel; d_inner 768 makes 3 blocks per sequence (the measured cases of
    cuda_scan.SPLIT_BELOW_WAVES)."""
    wave = 132 * 3
    assert cuda_scan.use_split("auto", 3 * 32, wave)  # 96 blocks: 0.191 -> 0.173 ms split
    assert cuda_scan.use_split("auto", 3 * 64, wave)  # the training batch, 192: 0.225 -> 0.195
    assert not cuda_scan.use_split("auto", 3 * 128, wave)  # 384, 12 slots empty: split 0.253 -> 0.326
    assert not cuda_scan.use_split("auto", 3 * 256, wave)  # 768: 1.94 waves
    assert cuda_scan.use_split("on", 3 * 256, wave) and not cuda_scan.use_split("off", 3 * 64, wave)


def test_the_split_kernels_run_where_int_indices_reach_every_element():
    xc = torch.empty((2, 256, 1164, 768), device="meta")
    z = torch.empty((256, 1164, 2 * 768), device="meta")[..., 768:]
    assert cuda_scan.split_fits(xc, z)
    xc = torch.empty((2, 4096, 140, 1024), device="meta")  # 1.17e9 elements
    z = torch.empty((4096, 140, 2048), device="meta")[..., 1024:]
    assert not cuda_scan.split_fits(xc, z)
    assert not cuda_scan.split_fits(xc[:, :64], torch.empty((64, 140, 2**18), device="meta")[..., :1024])  # z's rows


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 140, 768), (3, 45, 130), (1, 7, 33), (5, 33, 256)])
def test_cuda_forward_equals_the_float64_definition(dtype, shape):
    xc, z, dbl, tables = scan_inputs(*shape, dtype)
    expected = reference_forward(xc, z, dbl, tables)
    got = cuda_scan.CudaScan().forward(xc, z, dbl, tables)
    assert relative_error(got, expected) < TOLERANCE[dtype]


@gpu
@pytest.mark.parametrize("split", ["off", "on"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_variant_gives_the_same_output(dtype, split):
    xc, z, dbl, tables = scan_inputs(2, 70, 256, dtype)
    scan = cuda_scan.CudaScan(split=split)
    kernels = scan.kernels(xc.device, 16)
    outputs = []
    for variant in cuda_scan.VARIANTS[dtype]:
        kernels.choice[(dtype, 2, 70, 256)] = variant
        outputs.append(scan.forward(xc, z, dbl, tables))
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])


def core_leaves(directions: list, device: str = "cuda") -> list:
    """Both directions' DirectionParams as fresh leaves on ``device``."""
    from reidcam.reid.model.kernels import mixer_core
    from reidcam.reid.model.scan import DirectionParams

    return [DirectionParams(**{f: getattr(p, f).to(device).requires_grad_(True) for f in mixer_core.FIELDS})
            for p in directions]


def run_core(xz: torch.Tensor, params: list, backend: str, packed: bool) -> torch.Tensor:
    """The core of in_proj's output xz: whole (packed, as the model calls it) or as its halves."""
    from reidcam.reid.model.scan import bidirectional_mixer_core, bidirectional_mixer_core_packed

    if packed:
        return bidirectional_mixer_core_packed(xz, *params, backend=backend)
    return bidirectional_mixer_core(*xz.chunk(2, dim=-1), *params, backend=backend)


@gpu
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "x-z"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_mixer_core_runs_only_cuda_kernels_in_16_bits(monkeypatch, dtype, packed):
    """In bf16, and in fp16 as the benchmark recipes train (autocast with a loss scaler), the core's conv and scan,
    forward and backward, are the CUDA kernels, none of Triton's; output and gradients follow the torch backend's.
    Packed (the model's call), the conv backward writes dx into the packed gradient of in_proj's output."""
    from mixer_fixtures import random_direction

    from reidcam.reid.model.kernels import mixer_core

    for variable in ("REIDCAM_SCAN_FWD", "REIDCAM_SCAN_BWD", "REIDCAM_CONV_FWD", "REIDCAM_CONV_BWD"):
        monkeypatch.delenv(variable, raising=False)
    for name in ("scan_forward", "scan_backward", "biconv_forward", "biconv_backward"):
        monkeypatch.setattr(mixer_core, name, lambda *args, name=name: pytest.fail(f"Triton's {name} ran"))
    gen = torch.Generator().manual_seed(5)
    dim, length = 64, 37
    directions = [random_direction(dim, 16, 4, gen, dt_max=0.5, perturbed=True) for _ in range(2)]
    xz = torch.randn(2, length, 2 * dim, generator=gen).to(dtype).cuda()  # in_proj's output under autocast
    grad_out = torch.randn(2, length, dim, generator=gen).cuda()
    results = {}
    for backend, compute in (("triton", dtype), ("torch", torch.float32)):
        leaf = xz.to(compute).requires_grad_(True)
        params = core_leaves(directions)
        out = run_core(leaf, params, backend, packed)
        assert out.dtype == compute
        leaves = [leaf] + [getattr(p, f) for p in params for f in mixer_core.FIELDS]
        results[backend] = [out.float(), *torch.autograd.grad(out.float(), leaves, grad_out)]
    errors = [((got.double() - want.double()).norm() / want.double().norm()).item()
              for got, want in zip(results["triton"], results["torch"])]
    # the 16-bit xc, dt, output and gradients against fp32 (test_kernels_triton's bound for bf16 inputs)
    assert max(errors) < 0.1 and errors[0] < 0.03, errors


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 45, 130), (64, 140, 768)])
def test_the_packed_core_gives_the_same_gradients_as_the_core_of_the_halves(dtype, shape):
    """With the CUDA kernels (the defaults): the same output; the z half of xz's gradient is the halves' dz bit for
    bit (dz's shares, added into it); its x half (dx, written by the conv backward into the packed gradient) and the
    parameters' gradients are the same up to the order of the atomic sums (dB and dC, the conv weights' sums)."""
    from mixer_fixtures import random_direction

    from reidcam.reid.model.kernels import mixer_core

    batch, length, dim = shape
    gen = torch.Generator().manual_seed(8)
    directions = [random_direction(dim, 16, 8, gen, dt_max=0.5, perturbed=True) for _ in range(2)]
    xz = torch.randn(batch, length, 2 * dim, generator=gen).to(dtype).cuda()
    grad_out = torch.randn(batch, length, dim, generator=gen).to(dtype).cuda()
    results = {}
    for packed in (True, False):
        leaf = xz.clone().requires_grad_(True)
        params = core_leaves(directions)
        out = run_core(leaf, params, "triton", packed)
        leaves = [leaf] + [getattr(p, f) for p in params for f in mixer_core.FIELDS]
        results[packed] = [out, *torch.autograd.grad(out, leaves, grad_out)]
    assert torch.equal(results[True][0], results[False][0])
    assert torch.equal(results[True][1][..., dim:], results[False][1][..., dim:])
    limit = {torch.float32: 1e-5, torch.bfloat16: 4e-3, torch.float16: 1e-3}[dtype]  # a 16-bit dx may round apart
    for got, want in zip(results[True][1:], results[False][1:]):
        assert ((got.double() - want.double()).norm() / want.double().norm()).item() < limit


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 140, 768), (3, 45, 130), (1, 7, 33), (5, 33, 256), (64, 140, 768)])
def test_the_split_forward_equals_the_definition_and_the_unsplit_one(dtype, shape):
    xc, z, dbl, tables = scan_inputs(*shape, dtype)
    expected = reference_forward(xc, z, dbl, tables)
    for variant in cuda_scan.VARIANTS[dtype]:
        outputs = {}
        for split in ("on", "off"):
            scan = cuda_scan.CudaScan(split=split)
            scan.kernels(xc.device, 16).choice[(dtype, *shape)] = variant
            outputs[split] = scan.forward(xc, z, dbl, tables)
        assert relative_error(outputs["on"], expected) < TOLERANCE[dtype], variant
        # the same arithmetic; the compiler may fuse the gating's products otherwise; in bf16 the unsplit kernel
        # rounds y_f to bf16 first
        limit = 1e-6 if dtype == torch.float32 else 4e-3
        assert relative_error(outputs["on"], outputs["off"].double()) < limit, variant


@gpu
def test_the_split_forward_replays_in_a_cuda_graph():
    """Captured once, replayed on new values of the captured inputs: the scratch needs nothing between launches."""
    scan = cuda_scan.CudaScan(split="on")
    xc, z, dbl, tables = scan_inputs(4, 140, 768, torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        scan.forward(xc, z, dbl, tables)  # the variant is timed outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = scan.forward(xc, z, dbl, tables)
    for _ in range(2):
        xc.mul_(-0.75)
        z.add_(0.25)
        graph.replay()
        torch.testing.assert_close(captured, scan.forward(xc, z, dbl, tables), rtol=0, atol=0)


@gpu
def test_auto_splits_small_grids_and_not_full_ones():
    scan = cuda_scan.CudaScan(split="auto")
    kernels = scan.kernels(torch.device("cuda"), 16)
    wave = kernels.waves[cuda_scan.kernel_name(torch.bfloat16, "c1")]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert wave % sms == 0 and wave // sms >= 3  # the c1 kernel's launch bounds promise 3 blocks per SM
    small = scan_inputs(1, 9, 64, torch.bfloat16)
    assert scan.splits(kernels, "c1", small[0], small[1])
    bsz = -(-wave // 3)  # d_inner 768: 3 blocks per sequence, a full wave
    xc = torch.empty((2, bsz, 140, 768), device="meta", dtype=torch.bfloat16)
    z = torch.empty((bsz, 140, 2 * 768), device="meta", dtype=torch.bfloat16)[..., 768:]
    assert not scan.splits(kernels, "c1", xc, z)
