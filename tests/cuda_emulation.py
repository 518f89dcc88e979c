"""Run a header-free CUDA kernel file on the CPU, one OS thread per CUDA thread, for tests without a GPU.

g++ compiles the .cu file after a small shim: ``__shared__`` variables become function statics (blocks run one
after another, so a block's threads share them), an ``extern __shared__`` array (dynamic shared memory) a pointer
to a buffer of the launch's size that each block gets afresh, filled with NaN bytes as a GPU leaves it undefined
(a read before a write shows in the results), ``__syncthreads`` and ``__syncwarp`` are std::barriers,
``__shfl_xor_sync`` goes through a per-warp exchange array, ``atomicAdd`` is an atomic_ref. That checks what a
compiler cannot: the indexing, the barriers' placement (a missing one shows as a wrong sum under the OS's
interleaving, not always), the warp transposition and the reductions. Fast-math intrinsics become the libm
functions, so results differ from the GPU's in the last bits only; libdevice's fp16 conversions, which the kernels
declare, become g++'s _Float16 conversions, rounding to nearest even as the GPU's do (the same bits).

Inline PTX (``asm("op %0, %1;" : "=f"(r) : "f"(x))``) becomes a call of the shim's function of that op
(``r = emu_op(x)``, dots as underscores): the few ops the kernels use are defined below, another one fails to
compile. A braced PTX block is known by its text (``_PTX_BLOCKS``). The cache hints (prefetch.global.L1/L2) do
nothing, but ``launch`` fails a run that prefetched an address outside its tensors' memory; cp.async copies at once
(its wait does nothing), its source checked as a prefetched address is.
``emu_set_lag(first, last, us)`` makes threads first .. last - 1 start every barrier phase ``us`` microseconds
late, so that the others do their share of each phase first: a read of what a lagging thread writes in the same
phase (a missing barrier) then fails every time rather than under some interleavings.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import re
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

SHIM = r"""
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

struct EmuDim { unsigned x, y, z; };
static thread_local EmuDim threadIdx, blockIdx;
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
#define __expf(x) std::exp(x)  // glibc declares functions of these names
#define __logf(x) std::log(x)
using std::min;
using std::max;
extern "C" inline float __nv_half2float(unsigned short h) { _Float16 f; std::memcpy(&f, &h, 2); return f; }
extern "C" inline unsigned short __nv_float2half_rn(float v) {
    const _Float16 f = static_cast<_Float16>(v);
    unsigned short h;
    std::memcpy(&h, &f, 2);
    return h;
}

static unsigned char* emu_dynamic_shared;  // the running block's dynamic shared memory
static std::barrier<>* emu_block_barrier;
static std::vector<std::barrier<>*> emu_warp_barriers;
static float emu_exchange[1024];
static int emu_lag_first = 0, emu_lag_last = 0, emu_lag_us = 0;
static inline void emu_lag() {
    if ((int)threadIdx.x >= emu_lag_first && (int)threadIdx.x < emu_lag_last)
        std::this_thread::sleep_for(std::chrono::microseconds(emu_lag_us));
}
static inline void __syncthreads() {
    emu_block_barrier->arrive_and_wait();
    emu_lag();
}
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int offset) {
    emu_exchange[threadIdx.x] = v;
    __syncwarp();
    const float r = emu_exchange[(threadIdx.x & ~31u) | ((threadIdx.x % 32) ^ offset)];
    __syncwarp();
    return r;
}
static inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

// the inline PTX ops (see the module's docstring)
static inline float emu_ex2_approx_ftz_f32(float x) { return std::exp2(x); }
static inline unsigned short emu_cvt_rn_bf16_f32(float x) {  // round to nearest even; NaN stays NaN
    const unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline unsigned int emu_cvt_rn_bf16x2_f32(float high, float low) {
    return ((unsigned int)emu_cvt_rn_bf16_f32(high) << 16) | emu_cvt_rn_bf16_f32(low);
}
static inline float emu_cvt_f32_f16_low(unsigned int w) { return __nv_half2float((unsigned short)(w & 0xffffu)); }
static inline float emu_cvt_f32_f16_high(unsigned int w) { return __nv_half2float((unsigned short)(w >> 16)); }
static inline unsigned short emu_cvt_rn_f16_f32(float x) { return __nv_float2half_rn(x); }
static inline unsigned int emu_cvt_rn_f16x2_f32(float high, float low) {
    return ((unsigned int)__nv_float2half_rn(high) << 16) | __nv_float2half_rn(low);
}
static inline void emu_barrier_sync(int) { __syncthreads(); }
// The cache hints do nothing on the CPU, but the launch records their addresses, for ``launch`` to check that each
// lies in the memory of one of the launch's tensors (a GPU prefetch of a wild address may fault).
static std::mutex emu_prefetch_mutex;
static std::vector<std::uintptr_t> emu_prefetched;
static inline void emu_note_prefetch(const void* p) {
    std::lock_guard<std::mutex> lock(emu_prefetch_mutex);
    emu_prefetched.push_back(reinterpret_cast<std::uintptr_t>(p));
}
static inline void emu_prefetch_global_L2(const void* p) { emu_note_prefetch(p); }
static inline void emu_prefetch_global_L1(const void* p) { emu_note_prefetch(p); }
// cp.async of 16 bytes: copied at once (a barrier follows the wait on the GPU too); both ends of the source are
// checked as the prefetched addresses are
static inline void emu_cp_async_16(void* dst, const void* src) {
    emu_note_prefetch(src);
    emu_note_prefetch(static_cast<const unsigned char*>(src) + 15);
    std::memcpy(dst, src, 16);
}
static inline void emu_cp_async_wait_all() {}

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
"""

LAUNCHER = r"""
template <typename Body>
static void emu_launch(int grid_x, int grid_y, int threads, int shared_bytes, Body body) {
    for (int by = 0; by < grid_y; ++by)
        for (int bx = 0; bx < grid_x; ++bx) {
            std::vector<unsigned char> dynamic(shared_bytes + 16, 0xff);  // 0xffffffff: a NaN as a float
            emu_dynamic_shared = dynamic.data() + (16 - reinterpret_cast<std::uintptr_t>(dynamic.data()) % 16) % 16;
            std::barrier<> block(threads);
            std::vector<std::barrier<>*> warps;
            for (int w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
            emu_block_barrier = &block;
            emu_warp_barriers = warps;
            std::vector<std::thread> pool;
            for (int t = 0; t < threads; ++t)
                pool.emplace_back([=] {
                    threadIdx = {(unsigned)t, 0, 0};
                    blockIdx = {(unsigned)bx, (unsigned)by, 0};
                    emu_lag();
                    body();
                });
            for (auto& thread : pool) thread.join();
            for (auto* w : warps) delete w;
        }
}

extern "C" int emu_prefetch_count() {  // the distinct addresses prefetched since the last emu_take_prefetches
    std::sort(emu_prefetched.begin(), emu_prefetched.end());
    emu_prefetched.erase(std::unique(emu_prefetched.begin(), emu_prefetched.end()), emu_prefetched.end());
    return (int)emu_prefetched.size();
}

extern "C" void emu_take_prefetches(unsigned long long* out) {  // emu_prefetch_count() of them; then forgets them
    std::copy(emu_prefetched.begin(), emu_prefetched.end(), out);
    emu_prefetched.clear();
}

extern "C" void emu_set_lag(int first, int last, int microseconds) {
    emu_lag_first = first;
    emu_lag_last = last;
    emu_lag_us = microseconds;
}
"""


def launch(library: ctypes.CDLL, function: str, grid, threads: int, shared_bytes: int, args: list) -> None:
    """Run the emulated kernel ``function`` (an ``emu_<name>`` of ``build``) as a launch of (grid, threads), and fail if
    one of its cache hints named an address outside the memory of the tensors it was given: the CPU tensors alive
    now whose storages hold one of the pointer arguments."""
    getattr(library, function)(ctypes.c_int(grid[0]), ctypes.c_int(grid[1]), ctypes.c_int(threads),
                               ctypes.c_int(shared_bytes), *args)
    count = library.emu_prefetch_count()
    if count == 0:  # most kernels give no hints: no search for the tensors' storages
        return
    prefetched = (ctypes.c_ulonglong * count)()
    library.emu_take_prefetches(prefetched)
    spans = _storage_spans([a.value for a in args if isinstance(a, ctypes.c_void_p) and a.value])
    strays = [p for p in prefetched if not any(begin <= p < end for begin, end in spans)]
    assert not strays, f"{function}: {len(strays)} of {count} prefetched addresses outside the launch's tensors"


def _storage_spans(pointers: list[int]) -> list[tuple[int, int]]:
    """(begin, end) of each live CPU tensor's storage that holds one of ``pointers`` (found among the garbage
    collector's objects: the kernels' arguments include temporaries that only the launcher holds)."""
    spans = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some modules' deprecated attributes warns
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == "cpu"]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        begin = storage.data_ptr()
        end = begin + storage.nbytes()
        if any(begin <= p < end for p in pointers):
            spans.add((begin, end))
    return sorted(spans)


def available() -> bool:
    return shutil.which("g++") is not None


# `extern __shared__ __align__(16) unsigned char name[];` -> `unsigned char* name = emu_dynamic_shared;`
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?unsigned char\s+(\w+)\s*\[\s*\]\s*;")


def build(source: Path, kernels: Mapping[str, str], defines: Mapping[str, int], workdir: Path) -> ctypes.CDLL:
    """A shared library with, for each kernel name, ``emu_<name>(grid_x, grid_y, threads, shared_bytes, <the
    kernel's arguments>)``, shared_bytes the launch's dynamic shared memory; ``kernels`` maps each name to its
    parameter list as written in C (types and names)."""
    wrappers = []
    for name, params in kernels.items():
        names = ", ".join(p.strip().rsplit(" ", 1)[1].lstrip("*") for p in params.split(","))
        wrappers.append(f'extern "C" void emu_{name}(int grid_x, int grid_y, int threads, int shared_bytes, {params}) '
                        f"{{ emu_launch(grid_x, grid_y, threads, shared_bytes, [=] {{ {name}({names}); }}); }}")
    kernel_source = translate_asm(EXTERN_SHARED.sub(r"unsigned char* \1 = emu_dynamic_shared;", source.read_text()))
    text = "".join(f"#define {k} {v}\n" for k, v in defines.items()) + SHIM + kernel_source + LAUNCHER
    text += "\n".join(wrappers) + "\n"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    library = workdir / f"emu_{key}.so"
    if not library.exists():
        cpp = workdir / f"emu_{key}.cpp"
        cpp.write_text(text)
        # -fno-gnu-unique: the shared-memory statics of two builds of one kernel (say 64 and 128 threads) have one
        # name, and as GNU unique symbols the loader would make them one object, the first library's size
        flags = ["-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-fno-gnu-unique", "-w"]
        subprocess.run(["g++", *flags, "-o", library, cpp],
                       check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))


_ASM = re.compile(r'asm\s*(?:volatile\s*)?\(\s*"([^"]*)"\s*((?::[^;]*?)?)\)\s*;')


def translate_asm(source: str) -> str:
    """Each inline PTX statement of ``source`` as a call of the shim's function of its op (module docstring)."""
    return _ASM.sub(_asm_call, source)


# braced PTX blocks of the kernels, as one op each: scan_fwd.cu's fp16 loads (one half of a 32-bit register to fp32),
# and PTX whose operand is an address
_PTX_BLOCKS = {
    "{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo;}": "cvt.f32.f16.low %0, %1",
    "{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi;}": "cvt.f32.f16.high %0, %1",
    "prefetch.global.L2 [%0];": "prefetch.global.L2 %0",  # the kernels' cache hints: nothing to do on the CPU
    "prefetch.global.L1 [%0];": "prefetch.global.L1 %0",
    # scan_fwd.cu's cp_async_16: a generic shared address converted for cp.async
    "{.reg .u64 a; .reg .u32 s; cvta.to.shared.u64 a, %0; cvt.u32.u64 s, a; cp.async.ca.shared.global [s], [%1], 16;}":
        "cp.async.16 %0, %1",
}


def _asm_call(match: re.Match) -> str:
    text = match.group(1).strip()
    op, *operands = _PTX_BLOCKS.get(text, text).rstrip(";").replace(",", " ").split()
    sections = match.group(2).split(":")[1:]  # outputs, inputs, clobbers
    expressions = [_operand_expressions(part) for part in sections[:2]]
    outputs = expressions[0] if expressions else []
    bound = outputs + (expressions[1] if len(expressions) > 1 else [])
    arguments = [bound[int(o[1:])] if o.startswith("%") else o for o in operands]
    call = f"emu_{op.replace('.', '_')}({', '.join(arguments[len(outputs):])})"
    if len(outputs) > 1 or arguments[:len(outputs)] != outputs:
        raise ValueError(f"inline PTX with other than one leading output: {match.group(0)}")
    return f"{outputs[0]} = {call};" if outputs else f"{call};"


def _operand_expressions(section: str) -> list[str]:
    """The C expressions of an asm operand list: ``"=f"(r), "f"(v[0])`` -> ["r", "v[0]"]."""
    expressions = []
    for start in (m.end() for m in re.finditer(r'"[^"]*"\s*\(', section)):
        depth, end = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(section[end], 0)
            end += 1
        expressions.append(section[start:end - 1].strip())
    return expressions
