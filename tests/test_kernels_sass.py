"""The Triton kernels compiled for an H100 (sm_90) on this CPU-only machine, and their machine code checked.

Triton's CPU interpreter runs the kernels' logic but not the GPU compiler: a kernel can pass every
interpreter test and still fail to compile (a non-constexpr global, an op without a GPU lowering), or
compile into something slow (a layout that sends the 16 states across lanes costs ~4 shuffles per
(token, channel, state)). Triton ships ptxas and nvdisasm, so both are checked here without a GPU.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from reidcam.reid.model.kernels.triton_scan import _BWD_CONFIGS, _FWD_CONFIGS  # noqa: E402

# pointer arguments read as fp32 (name prefixes); the others are bf16
FWD_FP32_ARGS = ("dbl", "dt_bias", "a2", "dskip")
BWD_FP32_ARGS = ("dbl", "dt_bias", "a2", "dskip", "dbc", "parts", "state", "dh_")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "nvdisasm").exists(),
                       reason="this Triton has no bundled ptxas / nvdisasm"),
]


def compile_sm90(module: str, kernel: str, constexprs: dict, num_warps: int, fp32_args: tuple[str, ...] = (),
                 maxnreg: int | None = None):
    """(ptxas spill bytes, SASS lines) of ``module.kernel`` compiled for sm_90.

    Compiled in a child process: Triton's own jit helpers (``tl.cdiv`` ...) become interpreter
    functions when ``triton.language`` is imported under TRITON_INTERPRET=1, as the test session does,
    and the code generator cannot call those.
    """
    result = _compiled(module, kernel, constexprs, num_warps, fp32_args, maxnreg)
    return result["spill"], result["sass"]


def registers_sm90(module: str, kernel: str, constexprs: dict, num_warps: int, fp32_args: tuple[str, ...] = ()) -> int:
    """Registers per thread ptxas gives ``module.kernel`` for sm_90 (the same compile as compile_sm90)."""
    return _compiled(module, kernel, constexprs, num_warps, fp32_args, None)["registers"]


def _compiled(module: str, kernel: str, constexprs: dict, num_warps: int, fp32_args: tuple[str, ...],
              maxnreg: int | None) -> dict:
    request = json.dumps({"module": module, "kernel": kernel, "constexprs": constexprs,
                          "num_warps": num_warps, "fp32_args": list(fp32_args), "maxnreg": maxnreg}, sort_keys=True)
    return _compile_in_child(request)


@functools.lru_cache(maxsize=None)
def _compile_in_child(request: str) -> dict:
    """One compile per kernel and config in a test process (the per-config test meets the others' configs).
    The child imports reidcam from this checkout (PYTHONPATH), not from wherever the environment installed it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("sass_compile.py")), request],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


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


def test_forward_scan_loops_need_no_shuffles_and_barely_spill():
    cfg = _FWD_CONFIGS[0]  # the H100 autotuning pick
    spill, sass = compile_sm90(
        "triton_scan", "_bimamba_scan_fwd_kernel",
        {"N": 16, "BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d},
        cfg.num_warps, fp32_args=FWD_FP32_ARGS,
    )
    chunk_loops = [c for c in loop_opcodes(sass) if c["MUFU"] >= 16]  # one per direction
    assert len(chunk_loops) == 2
    per_thread_cells = cfg.block_t * cfg.block_d // (32 * cfg.num_warps) * 16  # (token, channel, state)
    for counts in chunk_loops:
        assert counts["SHFL"] == 0, counts
        assert sum(counts.values()) / per_thread_cells < 16, counts
    assert spill <= 256


def test_backward_scan_adjoint_loop_stays_lean():
    cfg = _BWD_CONFIGS[0]  # 4 x 32 in one warp: one channel per thread
    spill, sass = compile_sm90(
        "triton_scan", "_bimamba_scan_bwd_kernel", {"N": 16, "BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d}, cfg.num_warps,
        fp32_args=BWD_FP32_ARGS,
    )
    per_thread_cells = cfg.block_t * cfg.block_d // (32 * cfg.num_warps) * 16
    adjoint = max((c for c in loop_opcodes(sass) if c["MUFU"] >= 16), key=lambda c: sum(c.values()))
    # the only shuffles left are the sums over the warp's channels for dB and dC (2 x 5 rounds)
    channels_per_thread = cfg.block_d // (32 * cfg.num_warps)
    assert adjoint["SHFL"] / per_thread_cells <= 10 / channels_per_thread + 0.5, adjoint
    assert sum(adjoint.values()) / per_thread_cells < 56, adjoint
    assert spill <= 256


def test_conv_and_norm_kernels_compile_without_spills():
    from reidcam.reid.model.kernels import add_rmsnorm as norm
    from reidcam.reid.model.kernels import triton_conv as conv
    from reidcam.reid.model.kernels import triton_param_grads as grads

    builds = [
        ("triton_conv", "_biconv_fwd_kernel", {"BLOCK_T": conv._FWD_BLOCK_T, "BLOCK_D": conv._FWD_BLOCK_D}, 4,
         ("wf", "bf", "wb", "bb")),
        ("triton_conv", "_biconv_bwd_kernel", {"BLOCK_T": conv._BWD_BLOCK_T, "BLOCK_D": conv._BWD_BLOCK_D},
         conv._BWD_WARPS, ("wf", "bf", "wb", "bb", "dw_part", "db_part")),
        ("add_rmsnorm", "_add_rmsnorm_fwd_kernel",
         {"HAS_RES": True, "HAS_SCALE": True, "BLOCK_C": 512, "ROWS": norm._ROWS}, 4,
         ("r_ptr", "scale", "w_ptr", "res_out", "rstd")),
        ("add_rmsnorm", "_add_rmsnorm_bwd_kernel",
         {"HAS_RES": True, "HAS_SCALE": True, "HAS_DRES": True, "BLOCK_C": 512, "ROWS": norm._BWD_ROWS,
          "ROW_BLOCKS": norm._BWD_ROW_BLOCKS}, 4,
         ("res_ptr", "rstd", "w_ptr", "scale", "dres_out", "dr_ptr", "dw_ptr")),
        ("triton_param_grads", "_param_grads_kernel",
         {"BLOCK_B": 64, "BLOCK_MP": grads._TILE // 64, "BLOCK_C_DT": 8, "BLOCK_C_X": 8, "BLOCK_M": grads._TILE // 8},
         4,
         ("parts", "a_ptr", "dt_", "x_", "da_log", "skip", "bias")),
    ]
    for module, kernel, constexprs, warps, fp32_args in builds:
        spill, sass = compile_sm90(module, kernel, constexprs, warps, fp32_args)
        assert spill == 0, kernel
        if kernel == "_biconv_bwd_kernel":  # its sums over a chunk's tokens stay inside each thread
            assert not any(" SHFL" in line for line in sass), "shuffles in the conv backward"


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_every_autotuned_scan_config_barely_spills(direction):
    """A config that spills ~1 KB of registers per thread runs several times slower; keep none in the lists."""
    if direction == "fwd":
        configs, kernel, fp32_args = _FWD_CONFIGS, "_bimamba_scan_fwd_kernel", FWD_FP32_ARGS
    else:
        configs, kernel, fp32_args = _BWD_CONFIGS, "_bimamba_scan_bwd_kernel", BWD_FP32_ARGS
    for cfg in configs:
        spill, _ = compile_sm90("triton_scan", kernel, {"N": 16, "BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d},
                                cfg.num_warps, fp32_args, cfg.max_registers)
        assert spill <= 256, (cfg, spill)


def test_first_forward_scan_config_leaves_room_for_16_warps_per_sm():
    """The forward scan is latency-bound: at 255 registers per thread an SM holds 8 warps, too few to
    hide its load and exp2 latencies (bench/NOTES-speed.md, attempts 14-15); at <= 128, 16."""
    cfg = _FWD_CONFIGS[0]
    registers = registers_sm90("triton_scan", "_bimamba_scan_fwd_kernel",
                               {"N": 16, "BLOCK_T": cfg.block_t, "BLOCK_D": cfg.block_d}, cfg.num_warps, FWD_FP32_ARGS)
    assert registers <= 128, (cfg, registers)
