"""The Triton kernels compiled for an H100 (sm_90) on this CPU-only machine, and their machine code checked.

Triton's CPU interpreter runs the kernels' logic but not the GPU compiler: a kernel can pass every
interpreter test and still fail to compile (a non-constexpr global, an op without a GPU lowering), or
compile into something slow (a layout that sends the 16 states across lanes costs ~4 shuffles per
(token, channel, state)). Triton ships ptxas and nvdisasm, so both are checked here without a GPU.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

KERNELS = Path(__file__).parents[1] / "reidcam" / "reid" / "model" / "kernels"
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "nvdisasm").exists(),
                       reason="this Triton has no bundled ptxas / nvdisasm"),
]


def compiled_module(name: str):
    """A private copy of a kernel module whose kernels are real JIT functions, even when other tests
    switched Triton to its interpreter (TRITON_INTERPRET is read when a kernel is defined)."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        spec = importlib.util.spec_from_file_location(f"_sm90_{name}", KERNELS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return module


def compile_sm90(fn, constexprs: dict, num_warps: int, fp32_args: tuple[str, ...] = ()):
    """(ptxas spill bytes, SASS lines) of fn compiled for sm_90; pointers are bf16 unless named fp32."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = "*fp32" if arg.startswith(fp32_args) else "*bf16"
        else:
            signature[arg] = "fp32" if arg == "eps" else "i32"
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(kernel.asm["ptx"])
        cubin.write_bytes(kernel.asm["cubin"])
        report = subprocess.run([BIN / "ptxas", "-arch=sm_90a", "-v", ptx, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True).stdout
    spill = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", report))
    return spill, sass.splitlines()


def loop_opcodes(sass: list[str]) -> list[collections.Counter]:
    """Opcode counts of each loop body (from a label to the last branch back to it)."""
    loops = []
    for start, line in enumerate(sass):
        if not line.startswith(".L_x_"):
            continue
        label = line.split(":")[0]
        ends = [j for j in range(start, len(sass)) if f"BRA `({label})" in sass[j]]
        if ends:
            counts = collections.Counter()
            for body_line in sass[start:ends[-1]]:
                op = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", body_line)
                if op:
                    counts[op.group(1)] += 1
            loops.append(counts)
    return loops


@pytest.fixture(scope="module")
def scan():
    return compiled_module("triton_scan")


def test_forward_scan_loops_need_no_shuffles_and_barely_spill(scan):
    cfg = scan.ScanBlocks(16, 128, 4)
    spill, sass = compile_sm90(
        scan._bimamba_scan_fwd_kernel,
        {"N": 16, "R_PAD": 32, "IS_FP32": False, "BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d},
        cfg.num_warps, fp32_args=("dbl", "a2", "wdt", "bdt", "dskip"),
    )
    chunk_loops = [c for c in loop_opcodes(sass) if c["MUFU"] >= 16]  # one per direction
    assert len(chunk_loops) == 2
    per_thread_cells = cfg.block_t * cfg.block_d // (32 * cfg.num_warps) * 16  # (token, channel, state)
    for counts in chunk_loops:
        assert counts["SHFL"] == 0, counts
        assert sum(counts.values()) / per_thread_cells < 16, counts
    assert spill <= 256


def test_backward_scan_adjoint_loop_stays_lean(scan):
    cfg = scan.ScanBlocks(4, 64, 1)
    spill, sass = compile_sm90(
        scan._bimamba_scan_bwd_kernel, {"N": 16, "BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d}, cfg.num_warps,
        fp32_args=("dbl", "pre", "a2", "dskip", "dbc", "da_", "dd_", "dbias", "state", "dh_"),
    )
    per_thread_cells = cfg.block_t * cfg.block_d // (32 * cfg.num_warps) * 16
    adjoint = max((c for c in loop_opcodes(sass) if c["MUFU"] >= 16), key=lambda c: sum(c.values()))
    # the only shuffles left are the sums over channels for dB and dC (2 x 5 rounds / 2 channels)
    assert adjoint["SHFL"] / per_thread_cells <= 5.5, adjoint
    assert sum(adjoint.values()) / per_thread_cells < 45, adjoint
    assert spill <= 256


def test_conv_and_norm_kernels_compile_without_spills():
    conv = compiled_module("triton_conv")
    norm = compiled_module("add_rmsnorm")
    builds = [
        (conv._biconv_fwd_kernel, {"BLOCK_T": conv._FWD_BLOCK_T, "BLOCK_D": conv._FWD_BLOCK_D}, 4, ("wf", "bf", "wb", "bb")),
        (conv._biconv_bwd_kernel, {"BLOCK_T": conv._BWD_BLOCK_T, "BLOCK_D": conv._BWD_BLOCK_D}, conv._BWD_WARPS,
         ("wf", "bf", "wb", "bb", "dw_part", "db_part")),
        (norm._add_rmsnorm_fwd_kernel, {"HAS_RES": True, "HAS_SCALE": True, "BLOCK_C": 512, "ROWS": norm._ROWS}, 4,
         ("r_ptr", "scale", "w_ptr", "res_out", "rstd")),
        (norm._add_rmsnorm_bwd_kernel, {"HAS_RES": True, "HAS_SCALE": True, "HAS_DRES": True, "BLOCK_C": 512,
                                        "ROWS": norm._ROWS, "ROW_BLOCKS": norm._BWD_ROW_BLOCKS}, 4,
         ("res_ptr", "rstd", "w_ptr", "scale", "dres_out", "dr_ptr", "dw_part")),
    ]
    for fn, constexprs, warps, fp32_args in builds:
        spill, _ = compile_sm90(fn, constexprs, warps, fp32_args)
        assert spill == 0, fn
