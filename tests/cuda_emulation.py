"""Run a header-free CUDA kernel file on the CPU, one OS thread per CUDA thread, for tests without a GPU.

g++ compiles the .cu file after a small shim: ``__shared__`` variables become function statics (blocks run one
after another, so a block's threads share them), an ``extern __shared__`` array (dynamic shared memory) a pointer
to a buffer of the launch's size that each block gets afresh, filled with NaN bytes as a GPU leaves it undefined
(a read before a write shows in the results), ``__syncthreads`` and ``__syncwarp`` are std::barriers,
``__shfl_xor_sync`` goes through a per-warp exchange array, ``atomicAdd`` is an atomic_ref. That checks what a
compiler cannot: the indexing, the barriers' placement (a missing one shows as a wrong sum under the OS's
interleaving, not always), the warp transposition and the reductions. Fast-math intrinsics become the libm
functions, so results differ from the GPU's in the last bits only.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

SHIM = r"""
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct EmuDim { unsigned x, y, z; };
static thread_local EmuDim threadIdx, blockIdx;
struct float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
#define __expf(x) std::exp(x)  // glibc declares functions of these names
#define __logf(x) std::log(x)
using std::min;
using std::max;

static unsigned char* emu_dynamic_shared;  // the running block's dynamic shared memory
static std::barrier<>* emu_block_barrier;
static std::vector<std::barrier<>*> emu_warp_barriers;
static float emu_exchange[1024];
static inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int offset) {
    emu_exchange[threadIdx.x] = v;
    __syncwarp();
    const float r = emu_exchange[(threadIdx.x & ~31u) | ((threadIdx.x % 32) ^ offset)];
    __syncwarp();
    return r;
}
static inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

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
                    body();
                });
            for (auto& thread : pool) thread.join();
            for (auto* w : warps) delete w;
        }
}
"""


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
    kernel_source = EXTERN_SHARED.sub(r"unsigned char* \1 = emu_dynamic_shared;", source.read_text())
    text = "".join(f"#define {k} {v}\n" for k, v in defines.items()) + SHIM + kernel_source + LAUNCHER
    text += "\n".join(wrappers) + "\n"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    library = workdir / f"emu_{key}.so"
    if not library.exists():
        cpp = workdir / f"emu_{key}.cpp"
        cpp.write_text(text)
        subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-w", "-o", library, cpp],
                       check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))
