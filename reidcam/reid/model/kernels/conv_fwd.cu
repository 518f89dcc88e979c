// Forward of the bidirectional depthwise conv1d + SiLU of the mixer core, as a CUDA kernel compiled at first
// use (NVRTC), beside the forward scan (scan_fwd.cu) and through the same machinery (cuda_scan.py).
//
// The same function as _biconv_fwd_kernel in triton_conv.py, with the same tensors. For x (B, L, D),
// token-major with a contiguous channel dimension and any row strides (a view of in_proj's output), it
// writes xc (2, B, L, D) contiguous:
//   xc[0, b, t] = silu(bf + sum_k wf[k] x[t-3+k])   the causal conv of the forward direction,
//   xc[1, b, t] = silu(bb + sum_k wb[k] x[t+3-k])   the backward direction's conv in the original token
//                                                   order (an anti-causal window: no flips, no copies),
// with x zero outside [0, L) and the weights (D, 4) and biases (D,) fp32.
//
// Eight FMAs and two SiLUs per (token, channel) against 6 bytes of traffic in bf16 (x read once, two
// outputs written): the kernel is there to move memory. The Triton kernel (92 us at batch 256, 140 tokens,
// d_inner 768 on an H200, against a ~35-us floor) gathers a 4-tap window per output and direction. Here
// one thread owns CH adjacent channels, so that each of its loads and stores moves CH * sizeof(T) bytes
// (8 for bf16 c4 and fp32 c2: a warp covers 256 contiguous bytes of a row), and a chunk of TOKENS tokens of
// one sequence. It loads the TOKENS + 6 rows t0-3 .. t0+TOKENS+2 of its channels once into a register
// window, every load issued before the first output (the loops are unrolled and x is read-only), and
// computes both directions from that window; the 6 halo rows are also the neighbouring chunks' rows,
// read at about the same time by the neighbouring blocks, so they mostly come from L2. The window keeps
// the loaded words (a bf16 pair per register) and widens a value to fp32 where a tap reads it.
//
// Besides memory the bound is the special-function pipe: SiLU as x / (1 + exp(-x)) is an MUFU.EX2 and
// an MUFU.RCP per output, ~26 us at that shape on an H200 (16 per clock per SM), under the memory floor.
// Per (token, channel) the bf16 c4 kernel issues ~28 instructions (c2: ~34, the addressing and the
// ragged-edge tests shared by fewer channels; ~20 are the math), which is why four channels per thread is
// the default for bf16, at 119 registers against c2's 64.
//
// Blocks of THREADS channel groups (64: two warps, small enough that the 119-register kernel still packs
// 16 warps per SM, where blocks of 192 would fit only 12) enumerate (sequence, chunk, block of channels), the channel blocks fastest, so that
// neighbouring blocks read neighbouring parts of the same rows and the next chunk's blocks follow at once.
// The _c2 and _c1 kernels serve shapes the wide one does not fit (D, a row stride or x's base not a
// multiple of its vector).
//
// No headers: bf16 travels as its 16 bits (load: a shift; store: cvt.rn.bf16x2.f32), as in scan_fwd.cu, and fp16 as
// its own (f16_bits; load: libdevice's __nv_half2float; store: cvt.rn.f16x2.f32): the fp16 kernels are the bf16
// ones' twins.
// REIDCAM_CONV_TOKENS and REIDCAM_CONV_THREADS are TOKENS and THREADS; the launcher's grid assumes the
// values it compiled with.

#ifndef REIDCAM_CONV_TOKENS
#define REIDCAM_CONV_TOKENS 16
#endif
#ifndef REIDCAM_CONV_THREADS
#define REIDCAM_CONV_THREADS 64
#endif
#define TOKENS REIDCAM_CONV_TOKENS
#define WINDOW (TOKENS + 6)  // rows t0-3 .. t0+TOKENS+2

typedef unsigned short bf16_bits;
// fp16's 16 bits, a type of their own for Row and store to specialise on (bf16_bits is the unsigned short); a scalar
// type, as in scan_fwd.cu
enum class f16_bits : unsigned short {};


// CH adjacent fp32 values (a weight row, biases); the vector loads need a base aligned to their size
__device__ __forceinline__ void load(const float* p, float (&v)[1]) { v[0] = *p; }
__device__ __forceinline__ void load(const float* p, float (&v)[2]) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x;
    v[1] = q.y;
}
__device__ __forceinline__ void load(const float* p, float (&v)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}

// CH adjacent values of x as loaded: one load of CH * sizeof(T) bytes (aligned to it) kept in its raw form,
// so that the window holds a bf16 pair in one register, widened to fp32 only where a tap reads it (the
// window widened on load took the bf16 c4 kernel to ~150 registers)
template <typename T, int CH> struct Row;
template <> struct Row<bf16_bits, 4> {
    uint2 q;
    __device__ __forceinline__ float operator[](int c) const { return widen(c < 2 ? q.x : q.y, c); }
    static __device__ __forceinline__ float widen(unsigned int w, int c) {
        return __uint_as_float(c % 2 ? w & 0xffff0000u : w << 16);
    }
};
template <> struct Row<bf16_bits, 2> {
    unsigned int q;
    __device__ __forceinline__ float operator[](int c) const { return Row<bf16_bits, 4>::widen(q, c); }
};
template <> struct Row<bf16_bits, 1> {
    bf16_bits q;
    __device__ __forceinline__ float operator[](int) const { return __uint_as_float(((unsigned int)q) << 16); }
};
// fp16 widened by libdevice's conversion (NVRTC links libdevice): one instruction, and one per value of the window,
// where the same cvt.f32.f16 as inline PTX was repeated for every tap that reads the value (186 conversions of 88
// values in the c4 kernel, 122 registers) since the compiler does not merge inline PTX
extern "C" __device__ float __nv_half2float(unsigned short);
template <> struct Row<f16_bits, 4> {
    uint2 q;
    __device__ __forceinline__ float operator[](int c) const { return widen(c < 2 ? q.x : q.y, c); }
    static __device__ __forceinline__ float widen(unsigned int w, int c) {
        return __nv_half2float((unsigned short)(c % 2 ? w >> 16 : w));
    }
};
template <> struct Row<f16_bits, 2> {
    unsigned int q;
    __device__ __forceinline__ float operator[](int c) const { return Row<f16_bits, 4>::widen(q, c); }
};
template <> struct Row<f16_bits, 1> {
    f16_bits q;
    __device__ __forceinline__ float operator[](int) const { return __nv_half2float((unsigned short)q); }
};
template <> struct Row<float, 2> {
    float2 q;
    __device__ __forceinline__ float operator[](int c) const { return c ? q.y : q.x; }
};
template <> struct Row<float, 1> {
    float q;
    __device__ __forceinline__ float operator[](int) const { return q; }
};

__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ unsigned int pack_f16x2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void store(float* p, const float (&v)[1]) { *p = v[0]; }
__device__ __forceinline__ void store(float* p, const float (&v)[2]) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
}
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[1]) {
    bf16_bits r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v[0]));
    *p = r;
}
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[2]) {
    *reinterpret_cast<unsigned int*>(p) = pack_bf16x2(v[0], v[1]);
}
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]));
}

__device__ __forceinline__ void store(f16_bits* p, const float (&v)[1]) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v[0]));
    *p = (f16_bits)r;
}
__device__ __forceinline__ void store(f16_bits* p, const float (&v)[2]) {
    *reinterpret_cast<unsigned int*>(p) = pack_f16x2(v[0], v[1]);
}
__device__ __forceinline__ void store(f16_bits* p, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_f16x2(v[0], v[1]), pack_f16x2(v[2], v[3]));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

// One direction's taps (a float4 per channel: the weight rows are 16 bytes) and biases of channels d ..
// d + CH - 1.
template <int CH>
__device__ __forceinline__ void load_params(const float* __restrict__ w, const float* __restrict__ bias, int d,
                                            float (&taps)[CH][4], float (&b)[CH]) {
#pragma unroll
    for (int c = 0; c < CH; ++c) load(w + 4 * (d + c), taps[c]);
    load(bias + d, b);
}

template <int CH, typename T>
__device__ __forceinline__ void conv_fwd(const T* __restrict__ x, const float* __restrict__ wf,
                                         const float* __restrict__ bf, const float* __restrict__ wb,
                                         const float* __restrict__ bb, T* __restrict__ xc, int Bsz, int L, int D,
                                         long long stride_xb, long long stride_xl) {
    // blocks enumerate (sequence, chunk of tokens, block of channel groups), the channel blocks fastest
    const int channel_blocks = ((D + CH - 1) / CH + REIDCAM_CONV_THREADS - 1) / REIDCAM_CONV_THREADS;
    const int seq_chunk = blockIdx.x / channel_blocks;
    const int d = ((blockIdx.x - seq_chunk * channel_blocks) * REIDCAM_CONV_THREADS + threadIdx.x) * CH;
    if (d >= D) return;  // no barriers: threads past D leave at once
    const int chunks = (L + TOKENS - 1) / TOKENS;
    const int b = seq_chunk / chunks;
    const int t0 = (seq_chunk - b * chunks) * TOKENS;

    // the window first: its loads are the kernel's latency, the parameters (L1/L2 hits) come after
    Row<T, CH> win[WINDOW];
    const char* row = reinterpret_cast<const char*>(x + (long long)b * stride_xb + (long long)t0 * stride_xl + d);
    const long long row_bytes = stride_xl * (long long)sizeof(T);
    row -= 3 * row_bytes;  // row t0 - 3, read only where it is inside the sequence
#pragma unroll
    for (int i = 0; i < WINDOW; ++i, row += row_bytes) {
        if ((unsigned int)(t0 - 3 + i) < (unsigned int)L) {  // 0 <= t < L
            win[i] = *reinterpret_cast<const Row<T, CH>*>(row);
        } else {
            win[i] = Row<T, CH>{};
        }
    }
    float taps_f[CH][4], taps_b[CH][4], bias_f[CH], bias_b[CH];
    load_params<CH>(wf, bf, d, taps_f, bias_f);
    load_params<CH>(wb, bb, d, taps_b, bias_b);

    T* out_f = xc + ((long long)b * L + t0) * D + d;
    T* out_b = out_f + (long long)Bsz * L * D;
#pragma unroll
    for (int i = 0; i < TOKENS; ++i) {  // output t0 + i: forward taps on rows i .. i+3, backward on i+6 .. i+3
        if (t0 + i >= L) break;
        float yf[CH], yb[CH];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            float pf = bias_f[c], pb = bias_b[c];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                pf = fmaf(taps_f[c][k], win[i + k][c], pf);
                pb = fmaf(taps_b[c][k], win[i + 6 - k][c], pb);
            }
            yf[c] = silu(pf);
            yb[c] = silu(pb);
        }
        store(out_f + (long long)i * D, yf);
        store(out_b + (long long)i * D, yb);
    }
}

// x (B, L, D; row strides given, channels contiguous) and xc (2, B, L, D) in the compute dtype; wf, wb (D, 4)
// and bf, bb (D,) fp32, 16-byte aligned. The _c<CH> kernels take CH adjacent channels per thread: D, both x
// strides and x's base a multiple of CH elements. Grid: B * ceil(L / TOKENS) * ceil(D / (CH * THREADS)) blocks of
// REIDCAM_CONV_THREADS.
#define REIDCAM_CONV_KERNEL(NAME, T, CH)                                                                          \
    extern "C" __global__ void __launch_bounds__(REIDCAM_CONV_THREADS)                                          \
        NAME(const T* x, const float* wf, const float* bf, const float* wb, const float* bb, T* xc, int Bsz,    \
             int L, int D, long long stride_xb, long long stride_xl) {                                          \
        conv_fwd<CH>(x, wf, bf, wb, bb, xc, Bsz, L, D, stride_xb, stride_xl);                                    \
    }

REIDCAM_CONV_KERNEL(bimamba_conv_fwd_bf16_c4, bf16_bits, 4)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_bf16_c2, bf16_bits, 2)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_bf16_c1, bf16_bits, 1)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_f16_c4, f16_bits, 4)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_f16_c2, f16_bits, 2)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_f16_c1, f16_bits, 1)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_f32_c2, float, 2)
REIDCAM_CONV_KERNEL(bimamba_conv_fwd_f32_c1, float, 1)
