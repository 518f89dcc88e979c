// Forward of the fused bidirectional selective scan, as a CUDA kernel compiled at first use (NVRTC).
//
// The same function as _bimamba_scan_fwd_kernel in triton_scan.py, with the same tensors. One thread owns
// CH adjacent channels of one sequence and runs both directions over the sequence, token by token:
//   delta = softplus(pre + dt_bias), h_n = exp2(delta a2_n) h_n + delta u B_n, y = D u + sum_n C_n h_n.
// Per (token, channel, state) that is one MUFU.EX2 and four FP32 instructions, the floor the Triton
// kernel could not get near (about 11 instructions there: bench/NOTES-speed.md). B and C are the same for
// every channel of a token, so a block stages them for CHUNK tokens in shared memory and its threads read
// them as broadcasts, four states per load; with two channels per thread each of those loads, the
// pointer arithmetic and the loop control serve twice the work. Each thread loads the next token's u and
// pre before it computes the current one, so the load latency overlaps the exponentials.
//
// This is the measured form: a rewrite with plain next-token registers instead of the one-slot ring, and
// both directions sharing one shared-memory buffer, computed the same bits 30 % slower on an H200
// (0.579 vs 0.447 ms at batch 256; bench/NOTES-speed.md, attempt 34), so change it only with a timing.
//
// No headers: bf16 travels as its 16 bits (load: a shift; store: cvt.rn.bf16x2.f32), and fp16 as its own
// (f16_bits; load: cvt.f32.f16; store: cvt.rn.f16x2.f32), so NVRTC needs no include path. REIDCAM_N is d_state,
// REIDCAM_THREADS the block size.

#ifndef REIDCAM_N
#define REIDCAM_N 16
#endif
#ifndef REIDCAM_THREADS
#define REIDCAM_THREADS 256
#endif
#ifndef REIDCAM_CHUNK
#define REIDCAM_CHUNK 32
#endif
// Blocks per SM that ptxas must fit (a register cap). The H200 sweep of bench/cuda_scan_variants.py
// (BENCHMARKS.md, session 5) chose 256 threads, one channel per thread, 3 blocks (80 registers: 24
// warps per SM, which at batch 256 makes 1.94 waves of 196,608 (sequence, channel) threads, and an fp32
// spill of 8 bytes) and one token loaded ahead; two channels per thread, 2 blocks (124 registers).
#ifndef REIDCAM_MIN_BLOCKS_C1
#define REIDCAM_MIN_BLOCKS_C1 3
#endif
#ifndef REIDCAM_MIN_BLOCKS_C2
#define REIDCAM_MIN_BLOCKS_C2 2
#endif
#define CHUNK REIDCAM_CHUNK
#ifndef REIDCAM_AHEAD
#define REIDCAM_AHEAD 1
#endif
#define AHEAD REIDCAM_AHEAD  // CHUNK must be a multiple of it

typedef unsigned short bf16_bits;
// fp16's 16 bits, a type of their own for load and store to overload on (bf16_bits is the unsigned short). A scalar
// one: a struct of an unsigned short cost the fp16 c1 kernel 10 more instructions per token (gating direction)
enum class f16_bits : unsigned short {};


__device__ __forceinline__ void load(const float* p, float (&v)[1]) { v[0] = *p; }
__device__ __forceinline__ void load(const float* p, float (&v)[2]) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x;
    v[1] = q.y;
}
__device__ __forceinline__ void load(const bf16_bits* p, float (&v)[1]) { v[0] = __uint_as_float(((unsigned int)*p) << 16); }
__device__ __forceinline__ void load(const bf16_bits* p, float (&v)[2]) {
    const unsigned int q = *reinterpret_cast<const unsigned int*>(p);
    v[0] = __uint_as_float(q << 16);
    v[1] = __uint_as_float(q & 0xffff0000u);
}

// The low or the high half of w as fp32: cvt.f32.f16 on a half of a 32-bit register, into which the value is
// loaded as bf16's are. Converted from a 16-bit register (or by libdevice's __nv_half2float, as conv_fwd.cu does),
// the c1 kernel spilled 16 bytes at its 80 registers.
__device__ __forceinline__ float low_f16_to_float(unsigned int w) {
    float r;
    asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo;}" : "=f"(r) : "r"(w));
    return r;
}
__device__ __forceinline__ float high_f16_to_float(unsigned int w) {
    float r;
    asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi;}" : "=f"(r) : "r"(w));
    return r;
}
__device__ __forceinline__ void load(const f16_bits* p, float (&v)[1]) { v[0] = low_f16_to_float((unsigned int)*p); }
__device__ __forceinline__ void load(const f16_bits* p, float (&v)[2]) {
    const unsigned int q = *reinterpret_cast<const unsigned int*>(p);
    v[0] = low_f16_to_float(q);
    v[1] = high_f16_to_float(q);
}

__device__ __forceinline__ void store(float* p, const float (&v)[1]) { *p = v[0]; }
__device__ __forceinline__ void store(float* p, const float (&v)[2]) { *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]); }
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[1]) {
    bf16_bits r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v[0]));
    *p = r;
}
__device__ __forceinline__ void store(bf16_bits* p, const float (&v)[2]) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v[1]), "f"(v[0]));
    *reinterpret_cast<unsigned int*>(p) = r;
}

__device__ __forceinline__ void store(f16_bits* p, const float (&v)[1]) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v[0]));
    *p = (f16_bits)r;
}
__device__ __forceinline__ void store(f16_bits* p, const float (&v)[2]) {
    unsigned int r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v[1]), "f"(v[0]));  // v[0] in the low half, as bf16x2
    *reinterpret_cast<unsigned int*>(p) = r;
}

__device__ __forceinline__ float exp2_approx(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// log(1 + exp(x)) with torch's threshold of 20 and a series where exp(x) is tiny, as _softplus in Triton.
__device__ __forceinline__ float softplus(float x) {
    const float e = __expf(fminf(x, 20.0f));
    const float soft = e < 1e-3f ? e * (1.0f - e * (0.5f - e * (1.0f / 3.0f))) : __logf(1.0f + e);
    return x > 20.0f ? x : soft;
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

// B and C (2N fp32 per token) of the direction's steps step0 .. step0 + CHUNK - 1. A thread stages
// column k = tid % 2N of rows tid / 2N + j * ROWS_PER_PASS: first into registers (the loads of the next
// chunk are then in flight while this one is computed), then into the shared-memory buffer read next.
#define ROWS_PER_PASS (REIDCAM_THREADS / (2 * REIDCAM_N))
#define STAGED (CHUNK / ROWS_PER_PASS)

template <int DIR>
__device__ __forceinline__ void load_bc(float (&staged)[STAGED], const float* dbl_seq, int step0, int L, int E, int R) {
    const int row0 = threadIdx.x / (2 * REIDCAM_N);
    const int first = step0 + row0;
    const long long pass = (DIR == 0 ? 1 : -1) * (long long)ROWS_PER_PASS * E;
    const float* p = dbl_seq + (long long)(DIR == 0 ? first : L - 1 - first) * E + R + threadIdx.x % (2 * REIDCAM_N);
#pragma unroll
    for (int j = 0; j < STAGED; ++j) staged[j] = first + j * ROWS_PER_PASS < L ? p[j * pass] : 0.0f;
}

__device__ __forceinline__ void store_bc(float (*bc)[2 * REIDCAM_N], const float (&staged)[STAGED]) {
    const int row0 = threadIdx.x / (2 * REIDCAM_N), k = threadIdx.x % (2 * REIDCAM_N);
#pragma unroll
    for (int j = 0; j < STAGED; ++j) bc[row0 + j * ROWS_PER_PASS][k] = staged[j];
}

// One token's inputs of this thread's channels: u and the dt pre-activation; in the gating direction also
// the first direction's output and z.
template <int DIR, int CH, typename T>
__device__ __forceinline__ void load_token(const T* u_ptr, const T* pre_ptr, const T* y_ptr, const T* z_ptr,
                                           float (&u)[CH], float (&pre)[CH], float (&y)[CH], float (&z)[CH]) {
    load(u_ptr, u);
    load(pre_ptr, pre);
    if (DIR == 1) {
        load(y_ptr, y);
        load(z_ptr, z);
    }
}

template <int DIR, int CH, typename T>
__device__ __forceinline__ void scan_direction(const T* __restrict__ xc, const T* __restrict__ z,
                                               const float* __restrict__ dbl, const T* __restrict__ pre,
                                               const float* __restrict__ dt_bias, T* __restrict__ out,
                                               const float* __restrict__ a2, const float* __restrict__ dskip,
                                               int b, int d, int Bsz, int L, int D, int R, long long stride_zb,
                                               long long stride_zl) {
    __shared__ __align__(16) float bc[2][CHUNK][2 * REIDCAM_N];
    const int E = R + 2 * REIDCAM_N;
    const bool live = d < D;
    const int dd = live ? d : 0;  // threads past D keep the block's barriers and compute on channel 0
    float a[CH][REIDCAM_N], h[CH][REIDCAM_N], bias[CH], skip[CH];
#pragma unroll
    for (int c = 0; c < CH; ++c) {
#pragma unroll
        for (int n = 0; n < REIDCAM_N; ++n) {
            a[c][n] = a2[(DIR * REIDCAM_N + n) * D + dd + c];
            h[c][n] = 0.0f;
        }
        bias[c] = dt_bias[DIR * D + dd + c];
        skip[c] = dskip[DIR * D + dd + c];
    }
    const long long seq_row = (long long)(DIR * Bsz + b) * L;
    const float* dbl_seq = dbl + seq_row * E;
    // this thread's channels at the direction's first token; each step moves the pointers by one token
    const long long first = DIR == 0 ? 0 : L - 1;
    const long long token_step = DIR == 0 ? D : -(long long)D;
    const long long z_step = DIR == 0 ? stride_zl : -stride_zl;
    T* out_ptr = out + ((long long)b * L + first) * D + dd;
    // the per-token inputs travel through a ring of AHEAD tokens: a token's loads are issued AHEAD tokens
    // before it is computed, so their latency hides behind that many tokens' exponentials (more than one
    // ahead measured slower: the registers cost more warps than the latency they hide)
    const T* u_ahead = xc + (seq_row + first) * D + dd;
    const T* pre_ahead = pre + (seq_row + first) * D + dd;
    const T* y_ahead = out_ptr;  // the gating direction reads back what the first one stored
    const T* z_ahead = z + (long long)b * stride_zb + first * stride_zl + dd;
    float u_ring[AHEAD][CH], pre_ring[AHEAD][CH], y_ring[AHEAD][CH], z_ring[AHEAD][CH];
#pragma unroll
    for (int r = 0; r < AHEAD; ++r) {
        if (r < L) load_token<DIR>(u_ahead, pre_ahead, y_ahead, z_ahead, u_ring[r], pre_ring[r], y_ring[r], z_ring[r]);
        u_ahead += token_step, pre_ahead += token_step, y_ahead += token_step, z_ahead += z_step;
    }

    float staged[STAGED];
    __syncthreads();  // the other direction's last chunk is read
    load_bc<DIR>(staged, dbl_seq, 0, L, E, R);
    store_bc(bc[0], staged);
    __syncthreads();
    for (int step0 = 0, buffer = 0; step0 < L; step0 += CHUNK, buffer ^= 1) {
        const bool more = step0 + CHUNK < L;
        if (more) load_bc<DIR>(staged, dbl_seq, step0 + CHUNK, L, E, R);
        const int steps = min(CHUNK, L - step0);
#pragma unroll 1
        for (int s0 = 0; s0 < steps; s0 += AHEAD) {
#pragma unroll
            for (int r = 0; r < AHEAD; ++r) {  // the ring slot of step step0 + s0 + r is r
                if (s0 + r >= steps) break;
                float u[CH], delta[CH], du[CH], y[CH], y_fwd[CH], zz[CH];
#pragma unroll
                for (int c = 0; c < CH; ++c) {
                    u[c] = u_ring[r][c];
                    delta[c] = softplus(pre_ring[r][c] + bias[c]);
                    du[c] = delta[c] * u[c];
                    y[c] = skip[c] * u[c];
                    y_fwd[c] = y_ring[r][c];
                    zz[c] = z_ring[r][c];
                }
                if (step0 + s0 + r + AHEAD < L)
                    load_token<DIR>(u_ahead, pre_ahead, y_ahead, z_ahead, u_ring[r], pre_ring[r], y_ring[r], z_ring[r]);
                u_ahead += token_step, pre_ahead += token_step, y_ahead += token_step, z_ahead += z_step;
                const float4* row = reinterpret_cast<const float4*>(bc[buffer][s0 + r]);
#pragma unroll
                for (int q = 0; q < REIDCAM_N / 4; ++q) {
                    const float4 bq = row[q];
                    const float4 cq = row[REIDCAM_N / 4 + q];
                    const float bn[4] = {bq.x, bq.y, bq.z, bq.w};
                    const float cn[4] = {cq.x, cq.y, cq.z, cq.w};
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
#pragma unroll
                        for (int c = 0; c < CH; ++c) {
                            const int n = 4 * q + k;
                            h[c][n] = fmaf(exp2_approx(delta[c] * a[c][n]), h[c][n], du[c] * bn[k]);
                            y[c] = fmaf(cn[k], h[c][n], y[c]);
                        }
                    }
                }
                if (DIR == 1) {
#pragma unroll
                    for (int c = 0; c < CH; ++c) y[c] = (y_fwd[c] + y[c]) * 0.5f * silu(zz[c]);
                }
                if (live) store(out_ptr, y);
                out_ptr += token_step;
            }
        }
        if (more) store_bc(bc[buffer ^ 1], staged);
        __syncthreads();
    }
}

template <int CH, typename T>
__device__ __forceinline__ void scan_fwd(const T* xc, const T* z, const float* dbl, const T* pre, const float* dt_bias,
                                         T* out, const float* a2, const float* dskip, int Bsz, int L, int D, int R,
                                         long long stride_zb, long long stride_zl) {
    const int d = (blockIdx.x * REIDCAM_THREADS + threadIdx.x) * CH;
    const int b = blockIdx.y;
    scan_direction<0, CH>(xc, z, dbl, pre, dt_bias, out, a2, dskip, b, d, Bsz, L, D, R, stride_zb, stride_zl);
    scan_direction<1, CH>(xc, z, dbl, pre, dt_bias, out, a2, dskip, b, d, Bsz, L, D, R, stride_zb, stride_zl);
}

// xc (2, B, L, D), pre (2, B*L, D) and z (B, L, D; strides given) in the compute dtype; dbl (2, B*L, R + 2N),
// dt_bias (2, D), a2 (2, N, D) = A * log2(e) and dskip (2, D) fp32; out (B, L, D) in the compute dtype.
// The _c2 kernels take two adjacent channels per thread: D, the z strides and every base even.
#define REIDCAM_SCAN_KERNEL(NAME, T, CH)                                                                          \
    extern "C" __global__ void __launch_bounds__(REIDCAM_THREADS, REIDCAM_MIN_BLOCKS_C##CH)                     \
        NAME(const T* xc, const T* z, const float* dbl, const T* pre, const float* dt_bias, T* out, const float* a2, \
             const float* dskip, int Bsz, int L, int D, int R, long long stride_zb, long long stride_zl) {       \
        scan_fwd<CH>(xc, z, dbl, pre, dt_bias, out, a2, dskip, Bsz, L, D, R, stride_zb, stride_zl);            \
    }

REIDCAM_SCAN_KERNEL(bimamba_scan_fwd_bf16_c1, bf16_bits, 1)
REIDCAM_SCAN_KERNEL(bimamba_scan_fwd_bf16_c2, bf16_bits, 2)
REIDCAM_SCAN_KERNEL(bimamba_scan_fwd_f16_c1, f16_bits, 1)
REIDCAM_SCAN_KERNEL(bimamba_scan_fwd_f16_c2, f16_bits, 2)
REIDCAM_SCAN_KERNEL(bimamba_scan_fwd_f32_c1, float, 1)
REIDCAM_SCAN_KERNEL(bimamba_scan_fwd_f32_c2, float, 2)
