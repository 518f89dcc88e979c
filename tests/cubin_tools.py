"""Reading what NVRTC compiled, for the tests of the CUDA kernels (test_kernels_cuda_scan.py, _conv.py):
ptxas' register and spill report from the compile log, and each kernel's SASS from Triton's nvdisasm."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import triton

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


def kernel_reports(log: str) -> dict[str, tuple[int, int]]:
    """(registers, spill bytes) of each kernel, from ptxas' verbose report in the NVRTC log."""
    reports = {}
    for name, body in re.findall(r"Compiling entry function '(\w+)'(.*?)(?=Compiling entry|\Z)", log, re.S):
        registers = int(re.search(r"Used (\d+) registers", body).group(1))
        spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", body))
        reports[name] = (registers, spills)
    return reports


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
