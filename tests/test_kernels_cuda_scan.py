"""The CUDA forward scan (kernels/scan_fwd.cu, kernels/cuda_scan.py).

Without a GPU: NVRTC compiles the source for sm_90 as a user's machine would, and the compiled loop is
held to what makes it worth having (registers for 24 warps per SM, barely a spill; about one exponential and under 10 instructions per
(token, channel, state) where the Triton forward needs ~11). With a GPU (run on the device, see
bench/NOTES-speed.md): its output equals a float64 step-by-step definition on ragged shapes, and every variant gives the same bits.
In bf16 and fp16 the mixer core runs the CUDA kernels only, forward and backward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reidcam.reid.model.kernels import cuda_scan

pytest.importorskip("triton")

from cubin_tools import compiled_or_skip, kernel_reports, kernel_sass  # noqa: E402


@pytest.fixture(scope="module")
def sm90() -> cuda_scan.CompiledScan:
    return compiled_or_skip(lambda: cuda_scan.compile_scan(90, d_state=16))


def token_loops(cubin: bytes, tmp_path: Path) -> dict[str, list[dict[str, int]]]:
    """Opcode counts of each kernel's per-token loop (the loop bodies with the 16 exponentials)."""
    from test_kernels_sass import loop_opcodes

    kernels = kernel_sass(cubin, tmp_path)
    return {name: [c for c in loop_opcodes(lines) if c["MUFU"] >= 16 and not c["BAR"]] for name, lines in kernels.items()}


def test_every_variant_compiles_for_sm90_within_its_register_cap(sm90):
    reports = kernel_reports(sm90.log)
    names = {cuda_scan.kernel_name(dt, v) for dt, variants in cuda_scan.VARIANTS.items() for v in variants}
    assert set(reports) == names
    for name, (registers, spills) in reports.items():
        # the register caps are the H200 sweep's choice: 80 (24 warps per SM) costs the fp32 kernel 8 bytes
        # (a store and a load), the 2-byte kernels (bf16, fp16) nothing
        assert spills <= (16 if "_f32_" in name else 0), (name, reports)
        assert registers <= (80 if name.endswith("_c1") else 128), (name, reports)


def test_the_token_loop_spends_about_one_exponential_and_few_instructions_per_cell(sm90, tmp_path):
    loops = token_loops(sm90.cubin, tmp_path)
    for name, bodies in loops.items():
        channels = cuda_scan.channels_per_thread(name.rsplit("_", 1)[1])
        assert len(bodies) == 2, (name, bodies)  # one per direction
        for counts in bodies:
            cells = 16 * channels  # (channel, state) pairs of one token
            # 16 exponentials per channel, plus softplus (2) and, in the gating direction, silu (2)
            assert counts["MUFU"] <= 20 * channels, (name, counts)
            assert sum(counts.values()) / cells < 10, (name, counts)
            assert counts["LDS"] <= 8, (name, counts)  # B and C: 4 states per broadcast load


# ---- on a GPU ---------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def scan_inputs(bsz: int, length: int, dim: int, dtype: torch.dtype, seed: int = 0):
    """Random inputs of the forward scan at the model's ranges, z a strided view as in the model."""
    from mixer_fixtures import random_direction

    from reidcam.reid.model.kernels import triton_scan

    gen = torch.Generator().manual_seed(seed)
    rank, d_state = 6, 16
    params = [random_direction(dim, d_state, rank, gen, dt_max=0.5, perturbed=True) for _ in range(2)]
    scan = [triton_scan.ScanParams(p.dt_proj_weight, p.dt_proj_bias, p.A_log, p.D) for p in params]
    scan = [triton_scan.ScanParams(*(t.cuda() for t in (s.dt_proj_weight, s.dt_bias, s.a_log, s.d_skip))) for s in scan]
    xc = torch.randn(2, bsz, length, dim, generator=gen).cuda().to(dtype)
    xz = torch.randn(bsz, length, 2 * dim, generator=gen).cuda().to(dtype)
    z = xz[..., dim:]
    dbl = torch.randn(2, bsz * length, rank + 2 * d_state, generator=gen).cuda()
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


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 140, 768), (3, 45, 130), (1, 7, 33), (5, 33, 256)])
def test_cuda_forward_equals_the_float64_definition(dtype, shape):
    xc, z, dbl, tables = scan_inputs(*shape, dtype)
    expected = reference_forward(xc, z, dbl, tables)
    got = cuda_scan.CudaScan().forward(xc, z, dbl, tables).double()
    error = ((got - expected).norm() / expected.norm()).item()
    # fp32: the 1e-3 with a wide margin; bf16: the output's own rounding (2^-9) and the bf16 pre; fp16:
    # the same with 3 more mantissa bits, so an eighth of bf16's bound
    assert error < {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype], error


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_variant_gives_the_same_output(dtype):
    xc, z, dbl, tables = scan_inputs(2, 70, 256, dtype)
    scan = cuda_scan.CudaScan()
    kernels = scan.kernels(xc.device, 16)
    outputs = []
    for variant in cuda_scan.VARIANTS[dtype]:
        kernels.choice[(dtype, 2, 70, 256)] = variant
        outputs.append(scan.forward(xc, z, dbl, tables))
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_mixer_core_runs_only_cuda_kernels_in_16_bits(monkeypatch, dtype):
    """In bf16, and in fp16 as the benchmark recipes train (autocast with a loss scaler), the core's conv and scan,
    forward and backward, are the CUDA kernels, none of Triton's; output and gradients follow the torch backend's."""
    from mixer_fixtures import random_direction

    from reidcam.reid.model.kernels import mixer_core
    from reidcam.reid.model.scan import DirectionParams, bidirectional_mixer_core

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
        params = [DirectionParams(**{f: getattr(p, f).cuda().requires_grad_(True) for f in mixer_core.FIELDS})
                  for p in directions]
        x, z = leaf.chunk(2, dim=-1)
        out = bidirectional_mixer_core(x, z, *params, backend=backend)
        assert out.dtype == compute
        leaves = [leaf] + [getattr(p, f) for p in params for f in mixer_core.FIELDS]
        results[backend] = [out.float(), *torch.autograd.grad(out.float(), leaves, grad_out)]
    errors = [((got.double() - want.double()).norm() / want.double().norm()).item()
              for got, want in zip(results["triton"], results["torch"])]
    # the 16-bit xc, dt, output and gradients against fp32 (test_kernels_triton's bound for bf16 inputs)
    assert max(errors) < 0.1 and errors[0] < 0.03, errors
