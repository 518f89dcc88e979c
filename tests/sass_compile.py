"""Compiles one reidcam Triton kernel for sm_90 and prints {"spill": bytes, "registers": per thread, "sass": [lines]}
as JSON.

Run by tests/test_kernels_sass.py in a child process without TRITON_INTERPRET:
    python tests/sass_compile.py '{"module": "triton_scan", "kernel": "...", "constexprs": {...},
                                   "num_warps": 4, "fp32_args": ["dbl", ...], "maxnreg": null}'
Pointer arguments are bf16 unless their name starts with one of fp32_args; eps is fp32, other scalars i32.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def signature_of(fn, constexprs: dict, fp32_args: tuple[str, ...]) -> dict[str, str]:
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = "*fp32" if arg.startswith(fp32_args) else "*bf16"
        else:
            signature[arg] = "fp32" if arg == "eps" else "i32"
    return signature


def specialisations(fn, constexprs: dict) -> dict:
    """What Triton's launcher tells the compiler at run time for the shapes reidcam runs: tensors are
    16-byte aligned, and integer arguments (dims like 768, strides) are multiples of 16, except those
    the kernel lists in ``do_not_specialize``. Compiling without these hints gives other layouts than
    the GPU runs: tokens kept inside a thread here can be spread over lanes there, with shuffles."""
    unspecialised = {fn.arg_names[a] if isinstance(a, int) else a for a in (fn.do_not_specialize or ())}
    hinted = [arg for arg in fn.arg_names if arg not in constexprs and arg not in unspecialised and arg != "eps"]
    return {(fn.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in hinted}


def compile_sm90(fn, constexprs: dict, num_warps: int, fp32_args: tuple[str, ...], maxnreg: int | None) -> dict:
    source = ASTSource(fn, signature_of(fn, constexprs, fp32_args), constexprs, specialisations(fn, constexprs))
    options = {"num_warps": num_warps} if maxnreg is None else {"num_warps": num_warps, "maxnreg": maxnreg}
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(kernel.asm["ptx"])
        cubin.write_bytes(kernel.asm["cubin"])
        report = subprocess.run([BIN / "ptxas", "-arch=sm_90a", "-v", ptx, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True).stdout
    spill = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", report))
    registers = max((int(v) for v in re.findall(r"Used (\d+) registers", report)), default=0)
    return {"spill": spill, "registers": registers, "sass": sass.splitlines()}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("sass_compile: unset TRITON_INTERPRET")
    request = json.loads(sys.argv[1])
    module = importlib.import_module(f"reidcam.reid.model.kernels.{request['module']}")
    fn = getattr(module, request["kernel"])
    print(json.dumps(compile_sm90(fn, request["constexprs"], request["num_warps"], tuple(request["fp32_args"]),
                                  request.get("maxnreg"))))


if __name__ == "__main__":
    main()
