"""The forward scan as a CUDA kernel (scan_fwd.cu), compiled at first use with NVRTC and launched through
the CUDA driver API, both over ctypes.

Why not the Triton forward: it issues about 11 instructions per (token, channel, state) where the math
needs five, and ran at 0.61-0.65 ms per block at batch 256, twice what tying ViT-B needs
(bench/NOTES-speed.md, attempt 31). The CUDA kernel computes the same function from the same tensors
(``ScanTables``), so the Triton backward still serves it.

Why NVRTC and the driver API rather than a C++ extension: every CUDA build of PyTorch ships libnvrtc, and
libcuda comes with the driver, so nothing needs nvcc, a host compiler or PyTorch's headers; compiling the
forward's twelve kernels (split and unsplit, two variants each, in bf16, fp16 and fp32) took 2.7 s on a 2-core
CPU (session 9). Kernels run on PyTorch's current stream, so CUDA graphs capture them. ``compile_source`` keeps
every cubin, with NVRTC's log, in a disk cache (kernel_cache.py): ``REIDCAM_KERNEL_CACHE`` names its folder, or
``off``; by default ``$XDG_CACHE_HOME/reidcam/kernels``, else ``~/.cache/reidcam/kernels``. A later process
compiling the same source with the same options and NVRTC loads the cubin instead.

``REIDCAM_SCAN_FWD`` picks the forward kernel: ``auto`` (default: CUDA where it compiles, else Triton),
``cuda`` (an error if it cannot compile) or ``triton``.

The split kernels of the same file run a sequence's two directions in different threads, in parallel: twice
the threads, each with half the serial work, for grids that leave the GPU's block slots empty (the training
batch of 64 filled 192 of an H200's 396). ``REIDCAM_SCAN_FWD_SPLIT`` chooses them: ``auto`` (default: where
the unsplit grid is less than SPLIT_BELOW_WAVES full waves, ``use_split``), ``on`` or ``off``.

The backward scan of scan_bwd.cu (``CudaScanBackward``) computes triton_scan.scan_backward's gradients from the
same tensors, with a thread per channel and the states in registers where the Triton kernel holds (token,
state) tiles: 1.07 ms against 2.05 at batch 64 on an H200 (session 7). ``REIDCAM_SCAN_BWD`` chooses it the
same way.

The same machinery (``compile_source``, ``reidcam.cuda_driver``, ``_LazyKernels``) builds the conv forward of
conv_fwd.cu (``CudaConv``): the function of triton_conv.biconv_forward at near the memory floor, where the
Triton kernel ran at 92 us against ~35 (batch 256, 140 tokens, d_inner 768, bf16, H200).
``REIDCAM_CONV_FWD`` chooses it the same way.

Its backward, conv_bwd.cu (``CudaConvBackward``), computes triton_conv.biconv_backward's dx and weight and bias
sums from the same tensors, reading x and the output gradient once and adding each block's sums with atomics,
where the Triton kernel writes and reads back per-chunk partials (89.6 us per call at batch 64 on an H200).
``REIDCAM_CONV_BWD`` chooses it the same way.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reidcam.cuda_driver import CudaDriver, CudaUnavailable
from reidcam.devices import device_index

from . import kernel_cache
from .kernel_cache import CompiledSource
from .triton_conv import D_CONV, ConvParams, conv_grad_output
from .triton_scan import GradBuffers, ScanGrads, ScanTables

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("scan_fwd.cu")
THREADS = 256  # channels (c1) or channel pairs (c2) per block
# the kernel variants of each dtype, tried on a new shape, the default first: "c1" one channel per thread,
# "c2" two (fewer loads and less loop overhead per channel, more registers)
VARIANTS = {torch.bfloat16: ("c1", "c2"), torch.float16: ("c1", "c2"), torch.float32: ("c1", "c2")}
# every kernel has a build per compute dtype: bf16, fp16 (the training recipes' autocast, with a loss scaler; its
# kernels are the bf16 ones' twins, with the GPU's fp16 conversions) and fp32
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


CudaKernelUnavailable = CudaUnavailable  # NVRTC or the driver could not be loaded, or a kernel did not compile
CudaScanUnavailable = CudaKernelUnavailable  # the scan's callers' name for it


def kernel_name(dtype: torch.dtype, variant: str) -> str:
    return f"bimamba_scan_fwd_{_DTYPE_NAMES[dtype]}_{variant}"


def split_kernel_name(dtype: torch.dtype, variant: str) -> str:
    """The variant's split kernel: a block's threads split between the two directions (scan_fwd.cu)."""
    return f"bimamba_scan_fwd_split_{_DTYPE_NAMES[dtype]}_{variant}"


# The split kernels run where the unsplit grid is less than this many full waves (SMs x the blocks one SM
# holds): where block slots would stay empty for the whole scan, the split's twice as many blocks of half the
# serial work fill them. Near a full wave the SMs are at their issue limit, and the split only adds its staging
# of both directions' B and C and its scratch traffic. On an H200 (session 9, 140 tokens, d_inner 768, bf16,
# c1; bench/cuda_scan_variants.py): batch 32 (96 blocks for 396 slots) 0.191 -> 0.173 ms, batch 64 (192)
# 0.225 -> 0.195, but batch 128 (384) 0.253 -> 0.326 and batch 256 (768) 0.449 -> 0.580. Three quarters of a
# wave lies between the last grid that gained (0.48 of a wave) and the first that lost (0.97).
SPLIT_BELOW_WAVES = 0.75
# The split kernels index in int: xc's and z's elements below this (half of int's range, which leaves room
# for the indices one token past either end of a sequence).
SPLIT_INDEX_LIMIT = 2**30


def channels_per_thread(variant: str) -> int:
    return 2 if variant == "c2" else 1


# --- NVRTC -------------------------------------------------------------------------------------------------


def _nvrtc_library() -> ctypes.CDLL:
    """libnvrtc: by soname (PyTorch may have loaded it), else from the nvidia wheels beside PyTorch."""
    names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    for entry in sys.path:
        names += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libnvrtc.so.*")))
    for name in names:
        if "builtins" in name or ".alt." in name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise CudaKernelUnavailable("libnvrtc not found (it comes with CUDA builds of PyTorch)")


CompiledScan = CompiledSource


def compile_scan(arch: int, d_state: int, threads: int = THREADS, defines: Mapping[str, int] | None = None,
                 source: Path = SOURCE) -> CompiledSource:
    """Compile scan_fwd.cu for sm_<arch> (e.g. 90) into a cubin; needs no GPU. ``defines`` override the
    source's tuning macros (REIDCAM_CHUNK, REIDCAM_MIN_BLOCKS_C1, ...) and ``source`` the file, both for
    bench/cuda_scan_variants.py."""
    return compile_source(source, arch, {"REIDCAM_N": d_state, "REIDCAM_THREADS": threads, **(defines or {})})


def compile_source(source: Path, arch: int, defines: Mapping[str, int] | None = None) -> CompiledSource:
    """Compile a header-free .cu file for sm_<arch> into a cubin, fast math, with -D``defines``; needs no GPU.
    The disk cache of kernel_cache returns an earlier process's identical compile."""
    nvrtc = _nvrtc_library()
    code = source.read_bytes()
    options = [
        f"--gpu-architecture=sm_{arch}",
        "--use_fast_math",
        "--std=c++17",
        "--ptxas-options=-v",
        *[f"-D{name}={value}" for name, value in (defines or {}).items()],
    ]
    return kernel_cache.cached(kernel_cache.key(code, source.name, options, _nvrtc_version(nvrtc)),
                               lambda: _compile(nvrtc, code, source.name, options, arch))


def _nvrtc_version(nvrtc: ctypes.CDLL) -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    if nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        raise CudaKernelUnavailable("nvrtcVersion failed")
    return major.value, minor.value


def _compile(nvrtc: ctypes.CDLL, code: bytes, name: str, options: list[str], arch: int) -> CompiledSource:
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(result: int, what: str) -> None:
        if result != 0:
            raise CudaKernelUnavailable(f"NVRTC {what}: {nvrtc.nvrtcGetErrorString(result).decode()}")

    program = ctypes.c_void_p()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), code, name.encode(), 0, None, None), "create")
    encoded = [o.encode() for o in options]
    try:
        compiled = nvrtc.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        log = _nvrtc_text(nvrtc, program, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").decode(errors="replace")
        if compiled != 0:
            raise CudaKernelUnavailable(f"{name} did not compile for sm_{arch}: {log.strip()[:2000]}")
        cubin = _nvrtc_text(nvrtc, program, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return CompiledSource(cubin=cubin, log=log)


def _nvrtc_text(nvrtc: ctypes.CDLL, program: ctypes.c_void_p, size_fn: str, get_fn: str) -> bytes:
    size = ctypes.c_size_t()
    getattr(nvrtc, size_fn)(program, ctypes.byref(size))
    buffer = ctypes.create_string_buffer(size.value)
    getattr(nvrtc, get_fn)(program, buffer)
    return buffer.raw[: size.value].rstrip(b"\0") if get_fn == "nvrtcGetProgramLog" else buffer.raw[: size.value]


# --- kernels per device, and the choice of variant per shape ------------------------------------------------


@dataclass
class _DeviceKernels:
    functions: dict[str, ctypes.c_void_p]
    choice: dict[tuple, str]  # (dtype, batch, length, channels) -> variant, timed on first use
    waves: dict[str, int] = field(default_factory=dict)  # unsplit kernel -> blocks of one full wave on the device


@dataclass
class _Launch:
    """One launch of a forward: the kernel, its grid and arguments, and the split kernels' scratch (kept with
    the arguments that point at it)."""

    function: ctypes.c_void_p
    grid: tuple[int, int]
    args: list
    scratch: torch.Tensor | None = None


class _LazyKernels:
    """Kernels compiled and loaded per key (the device first) on first use, thread-safe. The first failure
    is remembered and logged once; every later use raises it again at once, and the callers run Triton."""

    description = "CUDA kernels"  # for the log: "<description> unavailable, the Triton one runs instead"

    def __init__(self) -> None:
        self._driver: CudaDriver | None = None
        self._kernels: dict[tuple, Any] = {}
        self._failed: str | None = None
        self._lock = threading.Lock()

    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._kernels:
                self._kernels[key] = build()
            return self._kernels[key]

    def _load(self, device: int, compile_for: Callable[[int], CompiledSource], names: list[str],
              detail: str = "", optional: Sequence[str] = (), dynamic_shared: int = 0
              ) -> dict[str, ctypes.c_void_p]:
        """The kernels ``names`` of compile_for(arch)'s cubin, loaded in the device's context, and those of
        ``optional`` that it has; each allowed ``dynamic_shared`` bytes of dynamic shared memory where that is
        not 0."""
        if self._failed is not None:
            raise CudaKernelUnavailable(self._failed)
        try:
            self._driver = self._driver or CudaDriver()
            major, minor = torch.cuda.get_device_capability(device)
            compiled = compile_for(major * 10 + minor)
            self._driver.ensure_context(device)
            functions = self._driver.load(compiled.cubin, names, optional)
            if dynamic_shared:
                for function in functions.values():
                    self._driver.allow_dynamic_shared(function, dynamic_shared)
        except CudaKernelUnavailable as error:
            self._failed = str(error)
            logger.warning("%s unavailable, the Triton one runs instead: %s", self.description, error)
            raise
        logger.info("%s compiled for sm_%d%d%s", self.description, major, minor, detail)
        return functions


class _SourceKernels(_LazyKernels):
    """Kernels of one .cu file with one set of macros, the same for every d_state: one key per device."""

    def __init__(self, source: Path, defines: Mapping[str, int]) -> None:
        super().__init__()
        self.source = source
        self.defines = dict(defines)

    def kernel_names(self) -> list[str]:
        raise NotImplementedError

    def kernels(self, device: torch.device) -> dict[str, ctypes.c_void_p]:
        index = device_index(device)
        return self._cached((index,), lambda: self._load(index, self.compile, self.kernel_names()))

    def compile(self, arch: int) -> CompiledSource:
        return compile_source(self.source, arch, self.defines)


class CudaScan(_LazyKernels):
    """The compiled kernels of each device and d_state; compiles on first use, thread-safe.
    ``threads`` and ``defines`` (compile_scan's) are for the variant bench; the defaults are the tuned ones.
    ``split`` (auto, on, off) overrides REIDCAM_SCAN_FWD_SPLIT, for tests and benches."""

    description = "CUDA forward scan"

    def __init__(self, threads: int = THREADS, defines: Mapping[str, int] | None = None, source: Path = SOURCE,
                 split: str | None = None) -> None:
        super().__init__()
        self.threads = threads
        self.defines = dict(defines or {})
        self.source = source
        self.split = None if split is None else _split_choice(split, "split")

    def kernels(self, device: torch.device, d_state: int) -> _DeviceKernels:
        key = (device_index(device), d_state)
        return self._cached(key, lambda: self._build(*key))

    def _build(self, device: int, d_state: int) -> _DeviceKernels:
        unsplit = [kernel_name(dt, v) for dt, variants in VARIANTS.items() for v in variants]
        split = [split_kernel_name(dt, v) for dt, variants in VARIANTS.items() for v in variants]
        functions = self._load(
            device, lambda arch: compile_scan(arch, d_state, self.threads, self.defines, self.source), unsplit,
            f", d_state {d_state}", optional=split,  # a source without them (an earlier one, a bench's) runs unsplit
        )
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        waves = {name: sms * self._driver.max_active_blocks(functions[name], self.threads) for name in unsplit}
        return _DeviceKernels(functions=functions, choice={}, waves=waves)

    def forward(self, xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables) -> torch.Tensor:
        """Gated, averaged output (B, L, D) of both scan directions; the arguments of triton_scan.scan_forward."""
        _, bsz, length, dim = xc.shape
        d_state = tables.a.shape[-1]
        kernels = self.kernels(xc.device, d_state)
        pre = tables.dt_projection()
        out = torch.empty((bsz, length, dim), device=xc.device, dtype=xc.dtype)
        tensors = [xc, z, dbl, pre, tables.dt_bias, out, tables.a2, tables.d_skip]
        args = [ctypes.c_void_p(t.data_ptr()) for t in tensors] + [
            ctypes.c_int(bsz), ctypes.c_int(length), ctypes.c_int(dim), ctypes.c_int(tables.dt.shape[-1]),
            ctypes.c_longlong(z.stride(0)), ctypes.c_longlong(z.stride(1)),
        ]
        options = [v for v in VARIANTS[xc.dtype] if _variant_fits(v, tensors, z, dim)]
        key = (xc.dtype, bsz, length, dim)
        stream = torch.cuda.current_stream(xc.device).cuda_stream
        self._driver.ensure_context(device_index(xc.device))
        if key not in kernels.choice and len(options) > 1 and not torch.cuda.is_current_stream_capturing():
            kernels.choice[key] = self._fastest({v: self._plan(kernels, v, xc, z, args) for v in options}, stream)
        variant = kernels.choice.get(key, options[0])
        variant = variant if variant in options else options[0]
        self._launch(self._plan(kernels, variant, xc, z, args), stream)
        return out

    def _plan(self, kernels: _DeviceKernels, variant: str, xc: torch.Tensor, z: torch.Tensor, args: list) -> _Launch:
        """The variant's launch for these tensors: its split kernel (with a fresh scratch) where ``splits`` says
        so, else the unsplit one."""
        _, bsz, length, dim = xc.shape
        channels = self.threads * channels_per_thread(variant)  # per block of the unsplit kernel
        grid = (-(-dim // channels), bsz)
        if not self.splits(kernels, variant, xc, z):
            return _Launch(kernels.functions[kernel_name(xc.dtype, variant)], grid, args)
        # the forward direction's y, then the backward one's, each (B, L, D), each element written before it is read
        scratch = torch.empty((2, bsz, length, dim), device=xc.device, dtype=torch.float32)
        return _Launch(kernels.functions[split_kernel_name(xc.dtype, variant)], (-(-dim // (channels // 2)), bsz),
                       [*args, ctypes.c_void_p(scratch.data_ptr())], scratch)

    def splits(self, kernels: _DeviceKernels, variant: str, xc: torch.Tensor, z: torch.Tensor) -> bool:
        """Whether the variant runs its split kernel on these tensors: ``use_split`` of this object's choice (else
        REIDCAM_SCAN_FWD_SPLIT's), where the source has the split kernel and its int indices reach every element."""
        if split_kernel_name(xc.dtype, variant) not in kernels.functions or not split_fits(xc, z):
            return False
        _, bsz, _, dim = xc.shape
        blocks = -(-dim // (self.threads * channels_per_thread(variant))) * bsz
        return use_split(self.split or forward_split_choice(), blocks, kernels.waves[kernel_name(xc.dtype, variant)])

    def _launch(self, launch: _Launch, stream: int) -> None:
        self._driver.launch(launch.function, launch.grid, self.threads, launch.args, stream)

    def _fastest(self, launches: dict[str, _Launch], stream: int) -> str:
        """Time each variant's launch twice on this shape (a kernel only writes its output and its own scratch, so
        reruns are harmless)."""
        times = {}
        for variant, launch in launches.items():
            self._launch(launch, stream)  # warm-up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(2):
                self._launch(launch, stream)
            end.record()
            end.synchronize()
            times[variant] = start.elapsed_time(end)
        logger.debug("CUDA scan variants (ms for 2 runs): %s", times)
        return min(times, key=times.get)


def _variant_fits(variant: str, tensors: list[torch.Tensor], z: torch.Tensor, dim: int) -> bool:
    """c2 loads two adjacent channels at once: even channel count and strides, 8-byte bases."""
    if variant == "c2":
        return dim % 2 == 0 and z.stride(0) % 2 == 0 and z.stride(1) % 2 == 0 and all(t.data_ptr() % 8 == 0 for t in tensors)
    return True


def supports(xc: torch.Tensor, tables: ScanTables) -> bool:
    """Whether the CUDA kernel handles these tensors: on a GPU, bf16, fp16 or fp32, d_state a multiple of 4."""
    return xc.is_cuda and xc.dtype in _DTYPE_NAMES and tables.a.shape[-1] % 4 == 0


def forward_kernel_choice() -> str:
    return _kernel_choice("REIDCAM_SCAN_FWD")


def forward_split_choice() -> str:
    """REIDCAM_SCAN_FWD_SPLIT: auto (default: the split kernels where ``use_split`` finds the unsplit grid
    small), on (always) or off (never)."""
    return _split_choice(os.environ.get("REIDCAM_SCAN_FWD_SPLIT", "auto"), "REIDCAM_SCAN_FWD_SPLIT")


def _split_choice(choice: str, what: str) -> str:
    return _one_of(choice, ("auto", "on", "off"), what)


def use_split(choice: str, blocks: int, wave: int) -> bool:
    """Whether the split kernel runs for an unsplit grid of ``blocks`` where one full wave is ``wave`` blocks
    (SMs x the blocks one SM holds): under ``auto`` where the grid is less than SPLIT_BELOW_WAVES waves."""
    return choice == "on" or (choice == "auto" and blocks < SPLIT_BELOW_WAVES * wave)


def split_fits(xc: torch.Tensor, z: torch.Tensor) -> bool:
    """Whether the split kernels' int indices reach every element of xc (2, B, L, D) and z (B, L, D; strided)."""
    _, bsz, length, dim = xc.shape
    z_extent = (bsz - 1) * z.stride(0) + (length - 1) * z.stride(1) + dim
    return max(xc.numel(), z_extent) < SPLIT_INDEX_LIMIT


def _kernel_choice(variable: str, default: str = "auto") -> str:
    return _one_of(os.environ.get(variable, default), ("auto", "cuda", "triton"), variable)


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` in lower case, which must be one of ``allowed``; else a ValueError naming ``what``."""
    choice = value.lower()
    if choice not in allowed:
        raise ValueError(f"{what} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {choice!r}")
    return choice


# --- the backward scan (scan_bwd.cu) ----------------------------------------------------------------------------

BWD_SOURCE = Path(__file__).with_name("scan_bwd.cu")
BWD_THREADS = 256  # channels per block, design 1 (and 0)
# Design 3's block: 128 threads, 6 blocks per SM (the same 24 warps as 3 of 256). On an H200 0.438 ms against 256
# threads' 0.444 at batch 64 and 1.623 against 1.689 at 256 (session 10); the training step 28.2 -> 28.0 ms, twice
# each, alternated (session 11, bench/NOTES-speed.md attempt 70). Design 4's: 128 threads (256 channels), 3 blocks per
# SM: 0.378 ms against 64 threads' 0.416 at batch 64 and 1.403 against 1.517 at 256 (session 14, attempt 94).
BWD_THREADS_OF_DESIGN = {3: 128, 4: 128}
BWD_STEPS = 4  # tokens between the checkpointed states (scan_bwd.cu says why 4)
BWD_MAX_STATE = 16  # the kernel keeps a[N][threads] and per-state sums in shared memory: 45 KB at 16
BWD_DESIGN = 1  # REIDCAM_BWD_DESIGN where the defines name none (every build gets it; scan_bwd.cu's default too)
BWD_SHARED_DESIGNS = (3, 4)  # the designs whose shared memory is dynamic (over the 48 KB of a static allocation)
BWD_PAIR_DESIGNS = (4,)  # the designs whose threads run two adjacent channels each
# The design that runs each dtype. Design 3 (80 registers: 3 blocks of 256 threads per SM, so that batch 64's 384
# blocks are one wave) took 0.538 ms against design 1's 0.597 at batch 64 on an H200, 1.952 against 1.907 at
# batch 256 (session 9, bench/cuda_scan_bwd_variants.py): the training batch is 64. Its fp16 build spills 100 B
# at 80 registers, so scan_bwd.cu builds no fp16 kernel in design 3 and fp16 runs design 1. Design 4 (design 3 with
# two adjacent channels a thread, 168 registers, every dtype) took 0.372 ms against design 3's 0.418 at batch 64 and
# 1.404 against 1.442 at 256 on an H200, the training step 24.9 -> 23.8 ms (session 14, bench/NOTES-speed.md
# attempts 93-96). Since session 15 its pass 1 runs as a kernel of its own (backward_pass_one_apart) and it
# transposes dB/dC every second state (backward_flush): 0.383 / 1.427 -> 0.372 / 1.337 ms at batch 64 / 256, the
# step 23.9, 24.0 -> 23.7, 23.7 ms (session 15, attempts 97-98).
BWD_DESIGN_OF = {torch.bfloat16: 4, torch.float32: 4, torch.float16: 4}
# The design that runs each dtype where design 4's channel pairs do not fit the tensors (backward_pairs_fit).
BWD_UNPAIRED_DESIGN_OF = {torch.bfloat16: 3, torch.float32: 3, torch.float16: 1}


def backward_dtypes(design: int) -> tuple[torch.dtype, ...]:
    """The dtypes that scan_bwd.cu builds a kernel of in this design."""
    return tuple(dt for dt in _DTYPE_NAMES if design != 3 or dt != torch.float16)


def backward_pairs_fit(xc: torch.Tensor, z: torch.Tensor, grad_out: torch.Tensor) -> bool:
    """Whether a design whose threads run channel pairs takes these tensors: D even, and each pair of z and of the
    output's gradient (xc is contiguous; the kernel's other tensors are buffers of its own) one aligned load."""
    pair = 2 * xc.element_size()
    return (xc.shape[-1] % 2 == 0 and all(t.data_ptr() % pair == 0 for t in (xc, z, grad_out))
            and z.stride(0) % 2 == 0 and z.stride(1) % 2 == 0 and grad_out.is_contiguous())


def backward_design_for(xc: torch.Tensor, z: torch.Tensor, grad_out: torch.Tensor) -> int:
    """The design that runs these tensors: their dtype's (BWD_DESIGN_OF), unless its channel pairs do not fit them."""
    design = BWD_DESIGN_OF[xc.dtype]
    if design in BWD_PAIR_DESIGNS and not backward_pairs_fit(xc, z, grad_out):
        return BWD_UNPAIRED_DESIGN_OF[xc.dtype]
    return design


def backward_kernel_name(dtype: torch.dtype) -> str:
    return f"bimamba_scan_bwd_{_DTYPE_NAMES[dtype]}"


def backward_checkpoint_kernel_name(dtype: torch.dtype) -> str:
    """The kernel of pass 1 alone (design 4: backward_pass_one_apart)."""
    return f"bimamba_scan_ckpt_{_DTYPE_NAMES[dtype]}"


BWD_CHECKPOINT_BLOCKS = 4  # pass 1's kernel: blocks per SM that ptxas must fit (scan_bwd.cu's REIDCAM_CKPT_MIN_BLOCKS)


def backward_pass_one_apart(design: int) -> bool:
    """Whether the design runs pass 1 as a kernel of its own before pass 2's (design 4, since session 15)."""
    return design in BWD_PAIR_DESIGNS


def backward_block_channels(threads: int, design: int) -> int:
    """The channels of a block of ``threads`` in the design (scan_bwd.cu's BLOCK_CHANNELS): the width of its grid's
    channel blocks and checkpoint tiles, and the block size of pass 1's kernel, a thread per channel."""
    return threads * backward_channels_per_thread(design)


def backward_design(defines: Mapping[str, int] | None) -> int:
    return int((defines or {}).get("REIDCAM_BWD_DESIGN", BWD_DESIGN))


def backward_channels_per_thread(design: int) -> int:
    """Channels a thread of the design runs: its blocks are threads times as many channels."""
    return 2 if design in BWD_PAIR_DESIGNS else 1


def backward_flush(defines: Mapping[str, int] | None) -> int:
    """State indices per warp transposition of a build (scan_bwd.cu's FLUSH): REIDCAM_FLUSH where the defines name
    it (bench variants), else the design's own (1 in design 3, 2 in the others)."""
    design = backward_design(defines)
    return int((defines or {}).get("REIDCAM_FLUSH", 1 if design == 3 else 2))


def backward_shared_bytes(threads: int, d_state: int, steps: int, design: int, flush: int | None = None) -> int:
    """sizeof(SharedRows) of scan_bwd.cu, which every build gets as REIDCAM_SHARED_BYTES and asserts equal: the
    count that a launch of a design with dynamic shared memory passes (backward_dynamic_bytes). ``flush``: the
    build's FLUSH where it is not the design's own (backward_flush)."""
    warps = threads // 32
    flush = flush or backward_flush({"REIDCAM_BWD_DESIGN": design})
    channels = backward_block_channels(threads, design)
    common = d_state * channels + 2 * 2 * d_state * steps + 2 * warps * 2 * steps * d_state  # a, bc, warp_sums
    if design in BWD_SHARED_DESIGNS:  # the values by column; carry, da and dz_factor by channel
        own = warps * 2 * steps * flush * (32 + 4) + (2 * d_state + steps) * channels
    else:  # the values by row
        own = threads * (2 * steps * flush + 4)
    return 4 * (common + own)


def backward_dynamic_bytes(threads: int, d_state: int, steps: int, design: int, flush: int | None = None) -> int:
    """The dynamic shared memory a launch of the design passes: 0 where it is static."""
    return backward_shared_bytes(threads, d_state, steps, design, flush) if design in BWD_SHARED_DESIGNS else 0


def backward_threads(design: int) -> int:
    """The block size that a design's kernels are built and launched with unless a bench asks for another."""
    return BWD_THREADS_OF_DESIGN.get(design, BWD_THREADS)


def compile_scan_backward(arch: int, d_state: int, threads: int | None = None, steps: int = BWD_STEPS,
                          defines: Mapping[str, int] | None = None, source: Path = BWD_SOURCE) -> CompiledSource:
    """Compile scan_bwd.cu for sm_<arch> (e.g. 90) into a cubin; needs no GPU. The design and its shared memory
    count go to every build, so that the source checks the count that the launch passes. ``threads`` defaults to
    the design's block size (backward_threads)."""
    design = backward_design(defines)
    threads = threads or backward_threads(design)
    return compile_source(source, arch, {
        "REIDCAM_N": d_state, "REIDCAM_THREADS": threads, "REIDCAM_STEPS": steps, "REIDCAM_BWD_DESIGN": design,
        "REIDCAM_SHARED_BYTES": backward_shared_bytes(threads, d_state, steps, design, backward_flush(defines)),
        **(defines or {})})


def checkpoint_count(length: int, steps: int = BWD_STEPS) -> int:
    """States the backward keeps per (direction, sequence, state, channel): one before each sub-chunk but the first."""
    return max(-(-length // steps) - 1, 0)


def checkpoint_shape(bsz: int, length: int, d_state: int, dim: int, threads: int, steps: int,
                     design: int) -> tuple[int, ...]:
    """The backward's checkpoint scratch (fp32): (2, B, checkpoints, d_state, dim); designs 3's and 4's are tiled by
    channel block, (2, B, checkpoints, blocks, d_state, block channels), so that a thread's states are a compile-time
    stride apart (scan_bwd.cu's checkpoint_stride)."""
    count = checkpoint_count(length, steps)
    if design in BWD_SHARED_DESIGNS:
        channels = backward_block_channels(threads, design)
        return 2, bsz, count, -(-dim // channels), d_state, channels
    return 2, bsz, count, d_state, dim


class CudaScanBackward(_LazyKernels):
    """The backward scan kernels of each device and d_state; compiles on first use, thread-safe. ``threads``,
    ``steps`` and ``defines`` (more of scan_bwd.cu's macros) are for benches; the defaults are the designed ones."""

    description = "CUDA backward scan"

    def __init__(self, threads: int | None = None, steps: int = BWD_STEPS, defines: Mapping[str, int] | None = None,
                 source: Path = BWD_SOURCE) -> None:
        super().__init__()
        self.steps = steps
        self.defines = dict(defines or {})
        self.source = source
        self.design = backward_design(self.defines)
        self.threads = threads or backward_threads(self.design)
        self.pass_one_apart = backward_pass_one_apart(self.design)

    def dynamic_shared(self, d_state: int) -> int:
        """The dynamic shared memory of this build's launches: 0 where the design's is static."""
        return backward_dynamic_bytes(self.threads, d_state, self.steps, self.design, backward_flush(self.defines))

    def compile(self, arch: int, d_state: int) -> CompiledSource:
        return compile_scan_backward(arch, d_state, self.threads, self.steps, self.defines, self.source)

    def kernels(self, device: torch.device, d_state: int) -> dict[str, ctypes.c_void_p]:
        index = device_index(device)
        names = [backward_kernel_name(dt) for dt in backward_dtypes(self.design)]
        if self.pass_one_apart:
            names += [backward_checkpoint_kernel_name(dt) for dt in backward_dtypes(self.design)]
        return self._cached((index, d_state), lambda: self._load(
            index, lambda arch: self.compile(arch, d_state), names, f", d_state {d_state}",
            dynamic_shared=self.dynamic_shared(d_state)))

    def backward(self, xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables,
                 grad_out: torch.Tensor, dz_out: torch.Tensor | None = None) -> ScanGrads:
        """triton_scan.scan_backward's gradients, from its arguments."""
        launch, out = self.launcher(xc, z, dbl, tables, grad_out)
        if xc.numel():
            launch()
        return out.grads(tables, z.dtype, dz_out)

    def launcher(self, xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables,
                 grad_out: torch.Tensor) -> tuple[Callable[[], None], GradBuffers]:
        """The kernel's launch on buffers made once (pass 1's kernel first where it runs apart:
        backward_pass_one_apart), and those buffers (for backward, and for benches that time the kernels alone: a
        second launch adds into dbc again, which only the values notice)."""
        _, bsz, length, dim = xc.shape
        d_state = tables.a.shape[-1]
        kernels = self.kernels(xc.device, d_state)
        dev = xc.device
        grad_out = grad_out.to(xc.dtype).contiguous()  # the kernel reads it in the compute dtype
        out = GradBuffers.for_inputs(xc, d_state)
        checkpoints = torch.empty(checkpoint_shape(bsz, length, d_state, dim, self.threads, self.steps, self.design),
                                  device=dev, dtype=torch.float32)
        pre = tables.dt_projection()
        tensors = [xc, z, grad_out, dbl, pre, tables.dt_bias, tables.a2, tables.d_skip,
                   out.dz, out.dxc, out.ddt, out.dbc, out.parts, checkpoints]
        sizes = [ctypes.c_int(bsz), ctypes.c_int(length), ctypes.c_int(dim), ctypes.c_int(tables.dt.shape[-1])]
        args = [ctypes.c_void_p(t.data_ptr()) for t in tensors] + sizes + [
            ctypes.c_longlong(z.stride(0)), ctypes.c_longlong(z.stride(1))]
        function = kernels[backward_kernel_name(xc.dtype)]
        channels = backward_block_channels(self.threads, self.design)
        grid = (-(-dim // channels), 2 * bsz)
        shared = self.dynamic_shared(d_state)

        pass_one = kernels[backward_checkpoint_kernel_name(xc.dtype)] if self.pass_one_apart else None
        pass_one_args = [ctypes.c_void_p(t.data_ptr())
                         for t in (xc, pre, dbl, tables.dt_bias, tables.a2, checkpoints)] + sizes

        def launch() -> None:
            _ = tensors  # the launch reads them: kept alive with it
            self._driver.ensure_context(device_index(dev))
            stream = torch.cuda.current_stream(dev).cuda_stream
            if pass_one is not None:
                self._driver.launch(pass_one, grid, channels, pass_one_args, stream)  # a thread per channel
            self._driver.launch(function, grid, self.threads, args, stream, shared)

        return launch, out


def backward_supports(xc: torch.Tensor, z: torch.Tensor, dbl: torch.Tensor, tables: ScanTables) -> bool:
    """Whether the CUDA backward handles these tensors: on a GPU, xc, z and dt in one dtype, bf16, fp16 or fp32;
    d_state a multiple of 4 up to BWD_MAX_STATE; xc and dbl (fp32) contiguous, z's channels contiguous; a
    sequence's offsets within 32 bits (backward_offsets_fit)."""
    d_state = tables.a.shape[-1]
    return (xc.is_cuda and xc.dtype in _DTYPE_NAMES and z.dtype == xc.dtype == tables.dt.dtype
            and xc.is_contiguous() and z.stride(-1) == 1 and dbl.dtype == torch.float32 and dbl.is_contiguous()
            and d_state % 4 == 0 and 0 < d_state <= BWD_MAX_STATE and backward_offsets_fit(xc, dbl))


def backward_offsets_fit(xc: torch.Tensor, dbl: torch.Tensor) -> bool:
    """Whether the backward kernel's offsets within a sequence reach every element of its rows: it adds them, 32-bit,
    to the sequence's 64-bit base (scan_bwd.cu's Lane), so a sequence's L rows of xc (2, B, L, D) and of dbl (2, B L,
    R + 2N) must hold fewer than 2^31 values."""
    return xc.shape[-2] * max(xc.shape[-1], dbl.shape[-1]) < 2**31


def backward_kernel_choice() -> str:
    """REIDCAM_SCAN_BWD: auto (default: the CUDA kernel, or Triton's where NVRTC is missing), cuda or triton.
    The CUDA backward took 1.07 ms against Triton's 2.05 at batch 64 on an H200, and the training step
    68.6 against 93.3 ms (BENCHMARKS.md, session 7)."""
    return _kernel_choice("REIDCAM_SCAN_BWD")


# --- the conv forward (conv_fwd.cu) ---------------------------------------------------------------------------

CONV_SOURCE = Path(__file__).with_name("conv_fwd.cu")
CONV_THREADS = 64  # channel groups per block
CONV_TOKENS = 16  # tokens per thread
# channels per thread of each dtype's kernels, widest first; a call runs the first that fits its tensors
# (bf16 and fp16 c4 and fp32 c2 move 8 bytes per load and store; conv_fwd.cu says why c4 rather than c2 for bf16)
CONV_CHANNELS = {torch.bfloat16: (4, 2, 1), torch.float16: (4, 2, 1), torch.float32: (2, 1)}


def conv_kernel_name(dtype: torch.dtype, channels: int) -> str:
    return f"bimamba_conv_fwd_{_DTYPE_NAMES[dtype]}_c{channels}"


class CudaConv(_SourceKernels):
    """The conv forward kernels of each device; compiles on first use, thread-safe. ``tokens``, ``threads``
    and ``defines`` (more of conv_fwd.cu's macros) are for benches; the defaults are the designed ones."""

    description = "CUDA conv forward"

    def __init__(self, tokens: int = CONV_TOKENS, threads: int = CONV_THREADS, defines: Mapping[str, int] | None = None,
                 source: Path = CONV_SOURCE) -> None:
        super().__init__(source, {"REIDCAM_CONV_TOKENS": tokens, "REIDCAM_CONV_THREADS": threads, **(defines or {})})
        self.tokens = tokens
        self.threads = threads

    def kernel_names(self) -> list[str]:
        return [conv_kernel_name(dt, ch) for dt, options in CONV_CHANNELS.items() for ch in options]

    def forward(self, x: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams,
                channels: int | None = None) -> torch.Tensor:
        """xc (2, B, L, D) in x's dtype, as triton_conv.biconv_forward computes it from the same arguments.
        ``channels`` per thread picks a kernel (tests, benches); by default the widest that fits x."""
        bsz, length, dim = x.shape
        kernels = self.kernels(x.device)
        options = conv_channel_options(x)
        channels = channels or options[0]
        if channels not in options:
            raise ValueError(f"{channels} channels per thread do not fit x {tuple(x.shape)}, strides {x.stride()}")
        xc = torch.empty((2, bsz, length, dim), device=x.device, dtype=x.dtype)
        if xc.numel() == 0:
            return xc
        params = [_conv_param(t) for t in (conv_f.weight, conv_f.bias, conv_b.weight, conv_b.bias)]
        args = [ctypes.c_void_p(t.data_ptr()) for t in (x, *params, xc)] + [
            ctypes.c_int(bsz), ctypes.c_int(length), ctypes.c_int(dim),
            ctypes.c_longlong(x.stride(0)), ctypes.c_longlong(x.stride(1)),
        ]
        blocks = bsz * -(-length // self.tokens) * -(-dim // (channels * self.threads))
        self._driver.ensure_context(device_index(x.device))
        stream = torch.cuda.current_stream(x.device).cuda_stream
        self._driver.launch(kernels[conv_kernel_name(x.dtype, channels)], (blocks, 1), self.threads, args, stream)
        return xc


def conv_channel_options(x: torch.Tensor) -> list[int]:
    """Channels per thread whose vector loads fit x, widest first: D, both row strides and the base a
    multiple of the vector (the output is fresh and D wide, so it fits whenever x does)."""
    return [ch for ch in CONV_CHANNELS[x.dtype] if x.shape[-1] % ch == 0 and _rows_fit(x, ch)]


def _rows_fit(t: torch.Tensor, channels: int) -> bool:
    """Whether words of ``channels`` adjacent values fit t (B, L, D): both row strides and the base a multiple."""
    return (t.stride(0) % channels == 0 and t.stride(1) % channels == 0
            and t.data_ptr() % (channels * t.element_size()) == 0)


def _conv_param(t: torch.Tensor) -> torch.Tensor:
    """A conv weight or bias as the kernel reads it: fp32, contiguous, 16-byte aligned (a float4 per
    channel's taps); the model's fp32 parameters pass unchanged."""
    t = t.float().contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def conv_supports(x: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams) -> bool:
    """Whether the CUDA conv handles these tensors: x (B, L, D) on a GPU, bf16, fp16 or fp32, contiguous
    channels; 4-tap weights and a bias per channel, on x's device."""
    if not (x.is_cuda and x.dtype in CONV_CHANNELS and x.dim() == 3 and x.stride(-1) == 1):
        return False
    dim = x.shape[-1]
    return all(t.device == x.device and t.numel() == dim * size
               for p in (conv_f, conv_b) for t, size in ((p.weight, D_CONV), (p.bias, 1)))


def conv_kernel_choice() -> str:
    """REIDCAM_CONV_FWD: auto (default: CUDA where it compiles, else Triton), cuda or triton."""
    return _kernel_choice("REIDCAM_CONV_FWD")


# --- the conv backward (conv_bwd.cu) --------------------------------------------------------------------------

CONV_BWD_SOURCE = Path(__file__).with_name("conv_bwd.cu")
CONV_BWD_TOKENS = 16  # tokens per warp (conv_bwd.cu: 132 registers for bf16 c2, no spills)
CONV_BWD_MAX_WARPS = 4  # chunks of one sequence per block, whose weight-gradient sums meet in shared memory
# channels per lane of each dtype's kernels, widest first (one 32-bit word per row and lane: bf16, fp16 c2; fp32 c1)
CONV_BWD_CHANNELS = {torch.bfloat16: (2, 1), torch.float16: (2, 1), torch.float32: (1,)}
CONV_BWD_SUMS = 5  # fp32 sums per (direction, channel): 4 taps and the bias


def conv_backward_kernel_name(dtype: torch.dtype, channels: int) -> str:
    return f"bimamba_conv_bwd_{_DTYPE_NAMES[dtype]}_c{channels}"


def conv_backward_warps(length: int, tokens: int = CONV_BWD_TOKENS, max_warps: int = CONV_BWD_MAX_WARPS) -> int:
    """Warps per block (consecutive chunks of one sequence): the most whose idle share of the warps launched
    is under a quarter, so that the last segment of a sequence is not mostly idle (140 tokens: 9 chunks, 3)."""
    chunks = max(-(-length // tokens), 1)
    return next(w for w in range(max_warps, 0, -1) if 4 * (-(-chunks // w) * w - chunks) < -(-chunks // w) * w)


def conv_backward_channel_options(x: torch.Tensor, dxc: torch.Tensor, dx: torch.Tensor | None = None) -> list[int]:
    """Channels per lane whose word loads and stores fit x, dxc and dx (None: a fresh one, which fits), widest first."""
    return [ch for ch in CONV_BWD_CHANNELS[x.dtype]
            if x.shape[-1] % ch == 0 and _rows_fit(x, ch) and (dx is None or _rows_fit(dx, ch))
            and dxc.data_ptr() % (ch * dxc.element_size()) == 0]


@dataclass(frozen=True)
class ConvGrads:
    """biconv_backward's results: dx in x's dtype, and ``sums`` (2, 5 D) fp32, per direction the weight
    gradient (D, 4) then the bias gradient (D,), as conv_bwd.cu adds into it."""

    dx: torch.Tensor
    sums: torch.Tensor

    @classmethod
    def empty(cls, x: torch.Tensor, dx: torch.Tensor | None = None) -> ConvGrads:
        """dx uninitialised (``dx`` where given: conv_grad_output) and the sums zeroed (the kernel adds into them)."""
        return cls(dx=conv_grad_output(x, dx),
                   sums=torch.zeros((2, CONV_BWD_SUMS * x.shape[-1]), device=x.device, dtype=torch.float32))

    def direction(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dweight (D, 4), dbias (D,)) of direction ``index`` (0 forward, 1 backward): views of ``sums``."""
        dim = self.dx.shape[-1]
        return self.sums[index, : D_CONV * dim].view(dim, D_CONV), self.sums[index, D_CONV * dim:]

    def as_tuple(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return self.dx, self.direction(0), self.direction(1)


class CudaConvBackward(_SourceKernels):
    """The conv backward kernels of each device; compiles on first use, thread-safe. ``tokens``, ``max_warps``
    and ``defines`` (more of conv_bwd.cu's macros) are for tests and benches; the defaults are the designed ones."""

    description = "CUDA conv backward"

    def __init__(self, tokens: int = CONV_BWD_TOKENS, max_warps: int = CONV_BWD_MAX_WARPS,
                 defines: Mapping[str, int] | None = None, source: Path = CONV_BWD_SOURCE) -> None:
        super().__init__(source, {"REIDCAM_CONV_BWD_TOKENS": tokens, "REIDCAM_CONV_BWD_MAX_WARPS": max_warps,
                                  **(defines or {})})
        self.tokens = tokens
        self.max_warps = max_warps

    def kernel_names(self) -> list[str]:
        return [conv_backward_kernel_name(dt, ch) for dt, options in CONV_BWD_CHANNELS.items() for ch in options]

    def backward(self, x: torch.Tensor, dxc: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams,
                 dx: torch.Tensor | None = None, channels: int | None = None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """dx, (dweight, dbias) forward, (dweight, dbias) backward: triton_conv.biconv_backward's results from
        its arguments, dx written into ``dx`` where given (any row strides: conv_grad_output). ``channels`` per
        lane picks a kernel (tests, benches); by default the widest that fits."""
        bsz, length, dim = x.shape
        dxc = dxc.to(x.dtype).contiguous()  # the kernel reads it in the compute dtype, (2, B, L, D) dense
        kernels = self.kernels(x.device)
        out = ConvGrads.empty(x, dx)
        options = conv_backward_channel_options(x, dxc, out.dx)
        channels = channels or options[0]
        if channels not in options:
            raise ValueError(f"{channels} channels per lane do not fit x {tuple(x.shape)}, strides {x.stride()}, "
                             f"or dx, strides {out.dx.stride()}")
        if x.numel() == 0:
            return out.as_tuple()
        params = [_conv_param(t) for t in (conv_f.weight, conv_f.bias, conv_b.weight, conv_b.bias)]
        warps = conv_backward_warps(length, self.tokens, self.max_warps)
        args = [ctypes.c_void_p(t.data_ptr()) for t in (x, dxc, *params, out.dx, out.sums)] + [
            ctypes.c_int(bsz), ctypes.c_int(length), ctypes.c_int(dim),
            ctypes.c_longlong(x.stride(0)), ctypes.c_longlong(x.stride(1)),
            ctypes.c_longlong(out.dx.stride(0)), ctypes.c_int(out.dx.stride(1)), ctypes.c_int(warps),
        ]
        segments = -(-(-(-length // self.tokens)) // warps)
        blocks = bsz * segments * -(-dim // (32 * channels))
        self._driver.ensure_context(device_index(x.device))
        stream = torch.cuda.current_stream(x.device).cuda_stream
        self._driver.launch(kernels[conv_backward_kernel_name(x.dtype, channels)], (blocks, 1), 32 * warps, args,
                            stream)
        return out.as_tuple()


def conv_backward_supports(x: torch.Tensor, dxc: torch.Tensor, conv_f: ConvParams, conv_b: ConvParams,
                           dx: torch.Tensor | None = None) -> bool:
    """Whether the CUDA conv backward handles these tensors: the forward's conditions (conv_supports), dxc
    (2, B, L, D) on x's device, and dx (None: a fresh one) with a token stride that fits the kernel's int."""
    return (conv_supports(x, conv_f, conv_b) and dxc.device == x.device and dxc.shape == (2, *x.shape)
            and (dx is None or dx.stride(1) < 2**31))


def conv_backward_kernel_choice() -> str:
    """REIDCAM_CONV_BWD: auto (default: CUDA where it compiles, else Triton), cuda or triton."""
    return _kernel_choice("REIDCAM_CONV_BWD")
