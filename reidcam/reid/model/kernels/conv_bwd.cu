// Backward of the bidirectional depthwise conv1d + SiLU of the mixer core, as a CUDA kernel compiled at first
// use (NVRTC), beside its forward (conv_fwd.cu) and through the same machinery (cuda_scan.py).
//
// The same function as _biconv_bwd_kernel in triton_conv.py (biconv_backward), with the same tensors. For x
// (B, L, D) with a contiguous channel dimension and any row strides, and dxc (2, B, L, D) contiguous, the
// gradient of the forward's output, it recomputes the pre-activations (the forward keeps none)
//   pf[t] = bf + sum_k wf[k] x[t-3+k],   pb[t] = bb + sum_k wb[k] x[t+3-k]   (x zero outside [0, L)),
// their gradients gf[t] = dxc[0, b, t] silu'(pf[t]) and gb[t] = dxc[1, b, t] silu'(pb[t]), and writes
//   dx[t] = sum_k wf[k] gf[t+3-k] + sum_k wb[k] gb[t-3+k]          (B, L, D), x's dtype, row strides given,
// and adds the sums over batch and tokens dwf[k] = sum gf[t] x[t-3+k], dbf = sum gf[t], dwb[k] = sum gb[t]
// x[t+3-k], dbb = sum gb[t] into grads (2, 5 D) fp32, zeroed by the caller: per direction the weights (D, 4)
// then the biases (D,).
//
// Memory: x read once, both directions' dxc read once, dx written once: 8 bytes per (token, channel) in
// bf16, 55 MB and ~14 us at batch 64, 140 tokens, d_inner 768 on an H200. The math is about as long: per
// (token, channel) the bf16 c2 kernel issues ~79 instructions (sm_90 SASS: ~43 FP32, 4.75 MUFU, an EX2 and
// an RCP per direction's silu' with the halo, the rest addressing, predicates, bf16 unpacking and rounding),
// ~17 us of issue at that shape, so expect ~20-30 us rather than the floor.
//
// The layout is the forward's: a warp owns a chunk of TOKENS tokens of one sequence, a lane CH adjacent
// channels (bf16: two, one 32-bit word per row, so that a row of x, dxc or dx is one register and a warp moves
// 128 contiguous bytes; fp32: one). A lane loads its TOKENS + 6 rows of x (t0-3 .. t0+TOKENS+2) and the TOKENS + 3 rows
// of each direction's dxc that its tokens' dx reads (forward t0 .. t0+TOKENS+2, backward t0-3 ..
// t0+TOKENS-1) into registers, every load issued before the first use (unrolled, read-only), then walks the
// TOKENS + 3 gradient rows once, keeping the last four of each direction: the halo rows are recomputed by
// the neighbouring chunk too (3/16 more math) and read twice, the second time mostly from L2.
//
// Weight and bias gradients: a lane sums its tokens' products in registers; the warps of a block are
// consecutive chunks of one sequence and the same channels, so their sums meet in shared memory and the
// block adds its 10 values per channel with one atomicAdd each, coalesced (the lanes of a warp add to
// consecutive addresses). At batch 64, 140 tokens (9 chunks, 3 warps per block), d_inner 768: 1.5 M atomic
// adds, 192 per address, ~184 K 32-byte L2 sectors, issued as the blocks end and spread over the kernel.
// Per-block partials summed by a torch op instead would write and read 5.9 MB more (~3 us of HBM) and add a
// kernel launch; the Triton kernel's per-chunk partials (4 tokens) are 69 MB written and read again, a good
// part of its 90 us. The atomic sums are not bitwise deterministic from run to run.
//
// Threads past D and warps past the sequence's end take part in the barrier with zero sums.
//
// Registers (sm_90, TOKENS 16): bf16 c2 132 and fp16 c2 128 (60 loaded rows, 40 parameters and sums), so 15 warps
// per SM in blocks of 3 (ptxas gave 144, 12 warps, with dx contiguous); bf16, fp16 and fp32 c1 115. Shared memory:
// 10 KB (c2), 5 KB (c1).
//
// No headers, and no inline PTX but the bf16 stores' conversions: bf16 travels as its 16 bits (load: a shift; store:
// cvt.rn.bf16x2.f32 as in conv_fwd.cu, by integer arithmetic before sm_80), fp16 as its own (f16_bits: libdevice's
// conversions), as in scan_bwd.cu, so the kernel also runs in the g++ emulation of the tests. The fp16 kernels are the
// bf16 ones' twins. The conversion instruction: bf16 c2 132 -> 140 registers (12 warps per SM instead of 15), and
// 36.5 -> 35.0 us at batch 64, 123.8 -> 117.8 at 256 (session 13, H200, bench/conv_bwd_variants.py).
// REIDCAM_CONV_BWD_TOKENS is TOKENS, REIDCAM_CONV_BWD_MAX_WARPS the most warps per block; the launcher passes
// the block's warp count (it picks it per sequence length) and assumes the TOKENS it compiled with.

#ifndef REIDCAM_CONV_BWD_TOKENS
#define REIDCAM_CONV_BWD_TOKENS 16
#endif
#ifndef REIDCAM_CONV_BWD_MAX_WARPS
#define REIDCAM_CONV_BWD_MAX_WARPS 4
#endif
#define TOKENS REIDCAM_CONV_BWD_TOKENS
#define MAX_WARPS REIDCAM_CONV_BWD_MAX_WARPS
#define WINDOW (TOKENS + 6)  // x rows t0-3 .. t0+TOKENS+2
#define GRAD_ROWS (TOKENS + 3)  // gradient rows of each direction that a chunk's dx reads
#define SUMS 10  // per channel: 4 + 4 weight taps, 2 biases

typedef unsigned short bf16_bits;
// fp16's 16 bits, a type of their own (bf16_bits is the unsigned short) for Row and store to specialise on; its
// conversions are libdevice's (one instruction each; rounding to fp16 handles subnormals and overflow)
enum class f16_bits : unsigned short {};
extern "C" __device__ float __nv_half2float(unsigned short);
extern "C" __device__ unsigned short __nv_float2half_rn(float);

// CH adjacent values of one row as loaded (one load of CH * sizeof(T) bytes), widened where they are read
template <typename T, int CH> struct Row;
template <> struct Row<bf16_bits, 2> {
    unsigned int q;
    __device__ __forceinline__ float operator[](int c) const { return __uint_as_float(c ? q & 0xffff0000u : q << 16); }
};
template <> struct Row<bf16_bits, 1> {
    bf16_bits q;
    __device__ __forceinline__ float operator[](int) const { return __uint_as_float(((unsigned int)q) << 16); }
};
template <> struct Row<f16_bits, 2> {
    unsigned int q;
    __device__ __forceinline__ float operator[](int c) const {
        return __nv_half2float((unsigned short)(c ? q >> 16 : q));
    }
};
template <> struct Row<f16_bits, 1> {
    f16_bits q;
    __device__ __forceinline__ float operator[](int) const { return __nv_half2float((unsigned short)q); }
};
template <> struct Row<float, 1> {
    float q;
    __device__ __forceinline__ float operator[](int) const { return q; }
};

template <typename T, int CH>
__device__ __forceinline__ Row<T, CH> load_row(const T* p, bool inside) {
    Row<T, CH> r{};
    if (inside) r = *reinterpret_cast<const Row<T, CH>*>(p);
    return r;
}

__device__ __forceinline__ void store(float* p, const float (&v)[1]) { *p = v[0]; }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800  // no bf16 conversion before sm_80: by integer arithmetic
__device__ __forceinline__ unsigned int bf16_round(float v) {  // round to nearest even (finite v)
    const unsigned int bits = __float_as_uint(v);
    return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[1]) { *p = (bf16_bits)bf16_round(v[0]); }
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[2]) {
    *reinterpret_cast<unsigned int*>(p) = bf16_round(v[0]) | (bf16_round(v[1]) << 16);
}
#else
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[1]) {
    bf16_bits r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v[0]));
    *p = r;
}
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[2]) {  // one F2FP for both (integer rounding: ~9)
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v[1]), "f"(v[0]));
    *reinterpret_cast<unsigned int*>(p) = r;
}
#endif

__device__ __forceinline__ void store(f16_bits* p, const float (&v)[1]) { *p = (f16_bits)__nv_float2half_rn(v[0]); }
__device__ __forceinline__ void store(f16_bits* p, const float (&v)[2]) {
    *reinterpret_cast<unsigned int*>(p) = __nv_float2half_rn(v[0]) | ((unsigned int)__nv_float2half_rn(v[1]) << 16);
}

// silu'(p) = s (1 + p (1 - s)), s = sigmoid(p): one EX2 and one RCP
__device__ __forceinline__ float silu_grad(float p) {
    const float s = 1.0f / (1.0f + __expf(-p));
    return s * (1.0f + p * (1.0f - s));
}

// both directions' taps and biases of channels d .. d + CH - 1 (a weight row is one float4)
template <int CH> struct Params {
    float wf[CH][4], wb[CH][4], bf[CH], bb[CH];
};

template <int CH>
__device__ __forceinline__ Params<CH> load_params(const float* __restrict__ wf, const float* __restrict__ bf,
                                                  const float* __restrict__ wb, const float* __restrict__ bb, int d) {
    Params<CH> p;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const float4 f = *reinterpret_cast<const float4*>(wf + 4 * (d + c));
        const float4 b = *reinterpret_cast<const float4*>(wb + 4 * (d + c));
        p.wf[c][0] = f.x, p.wf[c][1] = f.y, p.wf[c][2] = f.z, p.wf[c][3] = f.w;
        p.wb[c][0] = b.x, p.wb[c][1] = b.y, p.wb[c][2] = b.z, p.wb[c][3] = b.w;
        p.bf[c] = bf[d + c];
        p.bb[c] = bb[d + c];
    }
    return p;
}

// a lane's running sums over its tokens, in grads' order within a direction: weights (channel, tap), bias
template <int CH> struct Sums {
    float dwf[CH][4], dwb[CH][4], dbf[CH], dbb[CH];
};

// One warp's chunk: tokens t0 .. t0+TOKENS-1 of sequence b, channels d .. d+CH-1 (all inside D, t0 < L).
template <typename T, int CH>
__device__ __forceinline__ void chunk_backward(const T* __restrict__ x, const T* __restrict__ dxc,
                                               const Params<CH>& p, T* __restrict__ dx, Sums<CH>& s, int b, int t0,
                                               int d, int Bsz, int L, int D, long long stride_xb, long long stride_xl,
                                               long long stride_dxb, int stride_dxl) {
    Row<T, CH> win[WINDOW], up_f[GRAD_ROWS], up_b[GRAD_ROWS];
    const T* x_row = x + (long long)b * stride_xb + (long long)(t0 - 3) * stride_xl + d;  // row t0-3
#pragma unroll
    for (int i = 0; i < WINDOW; ++i) {
        win[i] = load_row<T, CH>(x_row + i * stride_xl, (unsigned int)(t0 - 3 + i) < (unsigned int)L);  // 0 <= t < L
    }
    const T* f_row = dxc + ((long long)b * L + t0) * D + d;               // forward direction, row t0
    const T* b_row = dxc + ((long long)(Bsz + b) * L + t0 - 3) * D + d;   // backward direction, row t0-3
#pragma unroll
    for (int j = 0; j < GRAD_ROWS; ++j) {
        up_f[j] = load_row<T, CH>(f_row + (long long)j * D, t0 + j < L);
        up_b[j] = load_row<T, CH>(b_row + (long long)j * D, (unsigned int)(t0 - 3 + j) < (unsigned int)L);
    }

    // step j: gf of token t0+j (taps on win[j .. j+3]) and gb of token t0-3+j (taps on win[j+3 .. j]);
    // from j = 3 on, dx of token t0+j-3 has all eight of its gradients: gf[j-3 .. j], gb[j-3 .. j]
    float gf[CH][4], gb[CH][4];  // the last four steps', indexed by step % 4
#pragma unroll
    for (int j = 0; j < GRAD_ROWS; ++j) {
        if (t0 + j - 3 >= L) break;  // the rest of the rows are past the sequence: zero gradients
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            float pf = p.bf[c], pb = p.bb[c];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                pf = fmaf(p.wf[c][k], win[j + k][c], pf);
                pb = fmaf(p.wb[c][k], win[j + 3 - k][c], pb);
            }
            const float g_f = up_f[j][c] * silu_grad(pf), g_b = up_b[j][c] * silu_grad(pb);
            gf[c][j % 4] = g_f;
            gb[c][j % 4] = g_b;
            if (j < TOKENS) {  // token t0+j is this chunk's
#pragma unroll
                for (int k = 0; k < 4; ++k) s.dwf[c][k] = fmaf(g_f, win[j + k][c], s.dwf[c][k]);
                s.dbf[c] += g_f;
            }
            if (j >= 3) {  // token t0+j-3 is this chunk's
#pragma unroll
                for (int k = 0; k < 4; ++k) s.dwb[c][k] = fmaf(g_b, win[j + 3 - k][c], s.dwb[c][k]);
                s.dbb[c] += g_b;
            }
        }
        if (j >= 3 && t0 + j - 3 < L) {
            const int i = j - 3;
            float out[CH];
#pragma unroll
            for (int c = 0; c < CH; ++c) {
                float acc = 0.0f;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    acc = fmaf(p.wf[c][k], gf[c][(i + 3 - k) % 4], acc);
                    acc = fmaf(p.wb[c][k], gb[c][(i + k) % 4], acc);
                }
                out[c] = acc;
            }
            store(dx + (long long)b * stride_dxb + (long long)(t0 + i) * stride_dxl + d, out);
        }
    }
}

// The block's sums meet in shared memory (per warp: the direction-major layout of grads for the block's
// channels), then each thread adds some of them to grads, consecutive threads to consecutive addresses.
template <int CH>
__device__ __forceinline__ void add_block_sums(const Sums<CH>& s, float* __restrict__ grads, int d0, int D,
                                               int warps) {
    constexpr int BLOCK_CH = 32 * CH;
    __shared__ float partial[MAX_WARPS][SUMS * BLOCK_CH];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* mine = partial[warp];
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const int lc = lane * CH + c;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            mine[4 * lc + k] = s.dwf[c][k];
            mine[4 * BLOCK_CH + 4 * lc + k] = s.dwb[c][k];
        }
        mine[8 * BLOCK_CH + lc] = s.dbf[c];
        mine[9 * BLOCK_CH + lc] = s.dbb[c];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < SUMS * BLOCK_CH; j += 32 * warps) {
        // j: weights of direction 0, of direction 1 (4 BLOCK_CH each), biases of direction 0, of 1
        const bool bias = j >= 8 * BLOCK_CH;
        const int direction = bias ? (j - 8 * BLOCK_CH) / BLOCK_CH : j / (4 * BLOCK_CH);
        const int offset = bias ? j - (8 + direction) * BLOCK_CH : j - direction * 4 * BLOCK_CH;
        const int channel = d0 + (bias ? offset : offset / 4);
        if (channel >= D) continue;
        float sum = 0.0f;
        for (int w = 0; w < warps; ++w) sum += partial[w][j];
        float* row = grads + (long long)direction * 5 * D;
        atomicAdd(bias ? row + 4 * D + d0 + offset : row + 4 * d0 + offset, sum);
    }
}

template <int CH, typename T>
__device__ __forceinline__ void conv_bwd(const T* __restrict__ x, const T* __restrict__ dxc,
                                         const float* __restrict__ wf, const float* __restrict__ bf,
                                         const float* __restrict__ wb, const float* __restrict__ bb,
                                         T* __restrict__ dx, float* __restrict__ grads, int Bsz, int L, int D,
                                         long long stride_xb, long long stride_xl, long long stride_dxb,
                                         int stride_dxl, int warps) {
    // blocks enumerate (sequence, segment of `warps` chunks, block of 32 CH channels), the channel blocks fastest
    const int channel_blocks = (D + 32 * CH - 1) / (32 * CH);
    const int seq_segment = blockIdx.x / channel_blocks;
    const int d0 = (blockIdx.x - seq_segment * channel_blocks) * 32 * CH;
    const int segments = ((L + TOKENS - 1) / TOKENS + warps - 1) / warps;
    const int b = seq_segment / segments;
    const int t0 = ((seq_segment - b * segments) * warps + threadIdx.x / 32) * TOKENS;
    const int d = d0 + (threadIdx.x % 32) * CH;

    Sums<CH> s = {};
    if (d < D && t0 < L) {
        const Params<CH> p = load_params<CH>(wf, bf, wb, bb, d);
        chunk_backward<T, CH>(x, dxc, p, dx, s, b, t0, d, Bsz, L, D, stride_xb, stride_xl, stride_dxb, stride_dxl);
    }
    add_block_sums<CH>(s, grads, d0, D, warps);
}

// x (B, L, D; row strides given, channels contiguous), dxc (2, B, L, D) contiguous and dx (B, L, D; row strides
// given, channels contiguous: the mixer core passes x's half of the packed gradient of in_proj's output) in the
// compute dtype; wf, wb (D, 4) and bf, bb (D,) fp32, 16-byte aligned; grads (2, 5 D) fp32, zeroed. dx's token
// stride is an int: with a long long, ptxas gave bf16 c1 7 registers more. The _c<CH> kernels take CH adjacent
// channels per lane: D, the strides of x and dx and the bases of x, dxc and dx a multiple of CH elements.
// Grid: B * ceil(ceil(L / TOKENS) / warps) * ceil(D / (32 CH)) blocks of 32 * warps threads, warps <= MAX_WARPS.
#define REIDCAM_CONV_BWD_KERNEL(NAME, T, CH)                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * MAX_WARPS)                                                 \
        NAME(const T* x, const T* dxc, const float* wf, const float* bf, const float* wb, const float* bb,       \
             T* dx, float* grads, int Bsz, int L, int D, long long stride_xb, long long stride_xl,               \
             long long stride_dxb, int stride_dxl, int warps) {                                                  \
        conv_bwd<CH>(x, dxc, wf, bf, wb, bb, dx, grads, Bsz, L, D, stride_xb, stride_xl, stride_dxb, stride_dxl, \
                     warps);                                                                                     \
    }

REIDCAM_CONV_BWD_KERNEL(bimamba_conv_bwd_bf16_c2, bf16_bits, 2)
REIDCAM_CONV_BWD_KERNEL(bimamba_conv_bwd_bf16_c1, bf16_bits, 1)
REIDCAM_CONV_BWD_KERNEL(bimamba_conv_bwd_f16_c2, f16_bits, 2)
REIDCAM_CONV_BWD_KERNEL(bimamba_conv_bwd_f16_c1, f16_bits, 1)
REIDCAM_CONV_BWD_KERNEL(bimamba_conv_bwd_f32_c1, float, 1)
