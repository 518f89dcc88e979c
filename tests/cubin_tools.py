"""Reading what NVRTC compiled, for the tests of the CUDA kernels (test_kernels_cuda_*.py): the compile itself
(skipped where no NVRTC is found), ptxas' register and spill report from the compile log, and each kernel's SASS
and opcode counts from Triton's nvdisasm."""

from __future__ import annotations

import collections
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import triton

from reidcam.reid.model.kernels import cuda_scan

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
# the suffix of a global load or store's SASS opcode (LDG.E.64, STG.E.U16...) by the bytes it moves
_ACCESS_SUFFIX = {2: "E.U16", 4: "E", 8: "E.64", 16: "E.128"}


def access_width(dtype: torch.dtype, channels: int) -> str:
    """The opcode suffix of a load or store of ``channels`` adjacent values of ``dtype`` (LDG.<suffix>)."""
    return _ACCESS_SUFFIX[channels * torch.empty((), dtype=dtype).element_size()]


def compiled_or_skip(compile_source: Callable[[], cuda_scan.CompiledSource]) -> cuda_scan.CompiledSource:
    """``compile_source()``, or a skip where this machine has no NVRTC; any other compile error fails."""
    try:
        return compile_source()
    except cuda_scan.CudaKernelUnavailable as error:
        if "not found" in str(error):
            pytest.skip(str(error))
        raise


def _entries(log: str) -> list[tuple[str, str]]:
    """(kernel name, its part of ptxas' verbose report) for each kernel in the NVRTC log."""
    return re.findall(r"Compiling entry function '(\w+)'(.*?)(?=Compiling entry|\Z)", log, re.S)


def kernel_reports(log: str) -> dict[str, tuple[int, int]]:
    """(registers, spill bytes) of each kernel, from ptxas' verbose report in the NVRTC log."""
    reports = {}
    for name, body in _entries(log):
        registers = int(re.search(r"Used (\d+) registers", body).group(1))
        spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", body))
        reports[name] = (registers, spills)
    return reports


def kernel_static_shared(log: str) -> dict[str, int]:
    """Each kernel's static shared memory in bytes (0 where ptxas reports none), from the NVRTC log."""
    return {name: int(found.group(1)) if (found := re.search(r"(\d+) bytes smem", body)) else 0
            for name, body in _entries(log)}


def kernel_sass(cubin: bytes, tmp_path: Path) -> dict[str, list[str]]:
    """The SASS lines of each kernel in ``cubin``, disassembled by nvdisasm."""
    path = tmp_path / "kernels.cubin"
    path.write_bytes(cubin)
    sass = subprocess.run([NVDISASM, "-c", path], capture_output=True, text=True, check=True).stdout.splitlines()
    kernels: dict[str, list[str]] = {}
    current = None
    for line in sass:
        if line.startswith(".text."):
            current = line[len(".text."):].rstrip(":")
            kernels[current] = []
        elif current:
            kernels[current].append(line)
    return kernels


def kernel_opcodes(cubin: bytes, tmp_path: Path) -> dict[str, collections.Counter]:
    """Opcode counts of each kernel (with their modifiers, less .CONSTANT: the read-only path)."""
    if not NVDISASM.exists():
        pytest.skip("this Triton has no bundled nvdisasm")
    opcodes = {}
    for name, lines in kernel_sass(cubin, tmp_path).items():
        found = (re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line) for line in lines)
        opcodes[name] = collections.Counter(op.group(1).replace(".CONSTANT", "") for op in found if op)
    return opcodes
