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
// The split kernels (their section, below scan_fwd) compute the same output with the two directions in
// different threads, in parallel, for grids too small to fill the GPU.
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

// A hint that the line holding p is read soon: prefetch.global.L1 (no register, no scoreboard). Why: a split
// kernel's step loads the next token's inputs before its own states are computed, so that the load latency hides
// behind them, but ptxas sinks those loads below the step's 16 states (as the SASS shows), right before the next
// step uses them, where their L2 latency is all exposed: Nsight Compute on the split c1 kernel at batch 64 (session
// 11) had 5.5 of the 10.9 cycles between a warp's instructions waiting on global loads, most of the samples at the
// first use of u. A prefetch into L1 of the same addresses at the step's start stays there (it has no result to
// sink), and the late loads then find their lines in L1 (a split block has 4 KB of shared memory: L1 has room). The
// unsplit kernels' loads stay where the source puts them (their SASS), so they go without.
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// log(1 + exp(x)) with torch's threshold of 20 and a series where exp(x) is tiny, as _softplus in Triton.
__device__ __forceinline__ float softplus(float x) {
    const float e = __expf(fminf(x, 20.0f));
    const float soft = e < 1e-3f ? e * (1.0f - e * (0.5f - e * (1.0f / 3.0f))) : __logf(1.0f + e);
    return x > 20.0f ? x : soft;
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

// One token's step of the N states of CH channels: h_n = exp2(delta a2_n) h_n + delta u B_n, y += C_n h_n, with
// the token's B then C read from its staged shared-memory row, four states per broadcast load.
template <int CH>
__device__ __forceinline__ void advance_states(float (&h)[CH][REIDCAM_N], const float (&a)[CH][REIDCAM_N],
                                               const float (&delta)[CH], const float (&du)[CH], float (&y)[CH],
                                               const float4* row) {
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
}

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
                advance_states<CH>(h, a, delta, du, y, reinterpret_cast<const float4*>(bc[buffer][s0 + r]));
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

// ---- The split forward: the two directions of a sequence in parallel ------------------------------------------
//
// Why: the kernels above give a thread both directions, 2L steps one after the other. At the training batch
// (64 sequences, 140 tokens, d_inner 768) their grid is 192 blocks for 132 SMs x 3 slots, 1-2 blocks (8-16 warps)
// per SM, and the forward took 158 us on an H200, against 0.448 ms for four times the work at batch 256. The
// split kernels give the two directions to different threads: twice the threads, each with half the serial
// work (L steps), for grids that leave block slots empty (cuda_scan.py chooses).
//
// Design: a block is HALF = THREADS / 2 channel groups of one sequence, both directions: its first HALF threads
// (whole warps) scan forward, the others backward, over the same channels; grid (ceil(D / (HALF CH)), B), the
// threads of (ceil(D / (THREADS CH)), B, 2), at the unsplit kernels' launch bounds. Per token and channel the
// arithmetic is theirs (B and C staged in shared memory a chunk per barrier, inputs loaded a token ahead); what
// differs is what becomes of y. The directions meet in the middle of the sequence: in its first steps a
// direction stores its pre-gate y in the scratch ys (2, B, L, D), fp32; in its later steps it loads the other
// direction's y of its token, stored there chunks before, and stores out = (y_f + y_b) / 2 silu(z) as the
// unsplit kernels' backward direction does, but from an unrounded y_f (fp32: the same arithmetic; bf16: the
// unsplit kernels round y_f to bf16 first, so the outputs differ by up to that rounding, the split one the
// closer to the exact). The barrier that ends each chunk orders the other's store before the load: a direction gates
// step s only where the other reached s's token in a chunk before the one in which s's inputs are loaded (at
// step s - AHEAD): finishing_step, a rule of the step alone, the same in both directions. The few tokens near
// the middle that neither may gate (12 of 140 at 16-token chunks) both store, and the block's threads gate
// them after the last barrier (gate_stored).
//
// Why not blocks of one direction, the second of the two to finish gating both (a __threadfence, then an
// atomic counter per (sequence, channel block), reset by that block): the counters must start zeroed and be
// shared by no two launches in flight (concurrent streams, graph replays), and the last block gates all L
// tokens alone after its scan, a serial tail of L loads per thread while its partner's slot idles. Here every
// synchronisation is a block barrier, a launch leaves no state behind (it reads only scratch it wrote, so
// repeated launches and graph replays need no reset), and the gating is spread over the scan's later steps.
// The costs: y's round trip through the scratch, 8 bytes per (token, channel) plus out's 2, mostly in L2, where
// the unsplit kernels write out twice and read it once (6); a block stages two directions' B and C
// (SPLIT_STAGED registers per thread, twice the unsplit kernels' STAGED at the same chunk, hence 16-token
// chunks); and an index computation per load, the indices depending on the direction (SplitScan).
//
// The two directions run different code (template DIR) and meet at barrier.sync without .aligned, which
// threads may reach from different instructions; __syncthreads is bar.sync, the .aligned form, which every
// thread of the block must execute at the same instruction.

// Tokens per chunk. 16: at 32 the 8 staged registers per thread spilled 8 bytes at 3 blocks per SM (80 registers).
#ifndef REIDCAM_SPLIT_CHUNK
#define REIDCAM_SPLIT_CHUNK 16
#endif
#define SPLIT_CHUNK REIDCAM_SPLIT_CHUNK
#define HALF (REIDCAM_THREADS / 2)  // the threads of one direction
#define SPLIT_ROWS_PER_PASS (HALF / (2 * REIDCAM_N))
#define SPLIT_STAGED (SPLIT_CHUNK / SPLIT_ROWS_PER_PASS)
static_assert(SPLIT_ROWS_PER_PASS > 0 && SPLIT_CHUNK % SPLIT_ROWS_PER_PASS == 0,
              "a direction's threads stage whole rows");
static_assert(SPLIT_CHUNK % AHEAD == 0, "a chunk holds whole rings of loads ahead");

// The first step a direction gates rather than stores: the first s >= AHEAD whose token the other direction
// reached (its step L - 1 - s) in an earlier chunk than step s - AHEAD, where s's inputs are loaded, rounded up to
// a multiple of AHEAD (the ring slot of a step is then its index in either kind of loop); L where there is none.
// The condition holds from this step on and never for both steps of a token, so each token is gated by at most
// one direction, and those that neither gates are L - first .. first - 1.
__device__ __forceinline__ int finishing_step(int L) {
    int s = max(AHEAD, (L - 1 + AHEAD) / 2 + 1);  // below it, the other's step is not even earlier
    while (s < L && (L - 1 - s) / SPLIT_CHUNK >= (s - AHEAD) / SPLIT_CHUNK) ++s;
    return min((s + AHEAD - 1) / AHEAD * AHEAD, L);
}

__device__ __forceinline__ void split_barrier() { asm volatile("barrier.sync 0;" ::: "memory"); }

// B and C of the direction's steps step0 .. step0 + SPLIT_CHUNK - 1, staged as load_bc does but by the
// direction's HALF threads (lane = the thread's index among them).
template <int DIR>
__device__ __forceinline__ void load_bc_split(float (&staged)[SPLIT_STAGED], const float* dbl_seq, int lane, int step0,
                                              int L, int E, int R) {
    const int first = step0 + lane / (2 * REIDCAM_N);
    const long long pass = (DIR == 0 ? 1 : -1) * (long long)SPLIT_ROWS_PER_PASS * E;
    const float* p = dbl_seq + (long long)(DIR == 0 ? first : L - 1 - first) * E + R + lane % (2 * REIDCAM_N);
#pragma unroll
    for (int j = 0; j < SPLIT_STAGED; ++j) staged[j] = first + j * SPLIT_ROWS_PER_PASS < L ? p[j * pass] : 0.0f;
}

__device__ __forceinline__ void store_bc_split(float (*bc)[2 * REIDCAM_N], const float (&staged)[SPLIT_STAGED],
                                               int lane) {
    const int row0 = lane / (2 * REIDCAM_N), k = lane % (2 * REIDCAM_N);
#pragma unroll
    for (int j = 0; j < SPLIT_STAGED; ++j) bc[row0 + j * SPLIT_ROWS_PER_PASS][k] = staged[j];
}

// The split kernels of 16-bit values and one channel per thread (the training step's, bf16 c1 at batch 64) take each
// chunk's u and pre from shared memory, copied there a chunk ahead by cp.async (no registers held in flight; sm_80,
// as the file's bf16 conversions), where the other builds load each token's one step ahead into registers (the ring
// below). Why: Nsight Compute's source view of the split bf16 c1 kernel at batch 64 (session 13, H200) had 35 % of
// its stall samples on long-scoreboard waits, a quarter of all samples at the first use of u or pre: ptxas sinks
// the next token's loads to the end of the step (attempt 76's L1 prefetch left most of that wait). A chunk of 16
// steps of the direction's HALF channels is 4 KB per tensor, copied in 16-byte pieces; the barrier that ends each
// chunk orders the copies before their reads, and the reads of a buffer before its next copies. A piece that is
// not 16-byte aligned or not all within D (where D * 2 bytes is not a multiple of 16) is copied value by value
// through a register instead.
template <typename T, int CH>
struct StagedInputs {
    static constexpr bool value = sizeof(T) == 2 && CH == 1;
};

// 16 bytes from global src to shared dst, asynchronously (cp.async.ca: through L1).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
    asm volatile("{.reg .u64 a; .reg .u32 s; cvta.to.shared.u64 a, %0; cvt.u32.u64 s, a; cp.async.ca.shared.global [s], [%1], 16;}" ::"l"(dst), "l"(src) : "memory");
}

// Waits for this thread's copies (a barrier after it makes everyone's visible).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// u (tensor 0) and pre (1) of the direction's steps step0 .. step0 + SPLIT_CHUNK - 1 and the block's HALF channels
// from channel0, into tile[tensor][step - step0][channel - channel0]; nothing for steps past the end or channels
// past D (their columns keep what they held: only the threads past D read them, and they store nothing).
template <int DIR, typename T>
__device__ __forceinline__ void stage_inputs(T (*tile)[SPLIT_CHUNK][HALF], const T* __restrict__ xc,
                                             const T* __restrict__ pre, int lane, int step0, int L, int D, int seq_row,
                                             int channel0) {
    constexpr int per_piece = 16 / (int)sizeof(T), per_row = HALF / per_piece, per_tensor = SPLIT_CHUNK * per_row;
    static_assert(HALF % per_piece == 0 && 2 * per_tensor % HALF == 0, "whole pieces, whole rounds");
#pragma unroll
    for (int round = 0; round < 2 * per_tensor / HALF; ++round) {
        const int j = lane + round * HALF;
        const int tensor = j / per_tensor, row = j % per_tensor / per_row, column = j % per_row * per_piece;
        const int step = step0 + row;
        if (step >= L || channel0 + column >= D) continue;
        const int token = DIR == 0 ? step : L - 1 - step;
        const T* src = (tensor == 0 ? xc : pre) + ((seq_row + token) * D + channel0 + column);
        if ((reinterpret_cast<unsigned long long>(src) & 15) == 0 && channel0 + column + per_piece <= D) {
            cp_async_16(&tile[tensor][row][column], src);
        } else {  // rare (no model's D): a loop, not unrolled, so that its registers do not crowd the scan's
#pragma unroll 1
            for (int e = 0; e < per_piece && channel0 + column + e < D; ++e) tile[tensor][row][column + e] = src[e];
        }
    }
}

// What one thread of the split kernels carries from step to step. Element indices are int (cuda_scan.py runs the
// split kernels where every index of xc and z is below 2^30): xc, pre and ys share a layout, so one index (and a
// shift of B L D) addresses all of them and out, each address one IMAD.WIDE from the kernel parameter; a first
// version with a 64-bit pointer per tensor spilled 88 bytes at the 80 registers of 3 blocks per SM.
template <int CH>
struct SplitScan {
    float a[CH][REIDCAM_N], h[CH][REIDCAM_N], bias[CH], skip[CH];
    float u_ring[AHEAD][CH], pre_ring[AHEAD][CH], y_ring[AHEAD][CH], z_ring[AHEAD][CH];
    int i;   // the step's token in xc, pre and ys (and in out, less the backward direction's B L D)
    int iz;  // z's index of the token loaded next
};

// What the steps of a split launch read besides the thread's state.
template <typename T>
struct SplitArgs {
    const T* __restrict__ xc;
    const T* __restrict__ z;
    const T* __restrict__ pre;
    T* __restrict__ out;
    float* ys;  // written and read by the block's threads in turn: no __restrict__, no read-only loads
    int rows;   // B L D: from the forward direction's rows of ys to the backward one's
    int D, stride_zl;
    bool live;
};

// One token's inputs of the step AHEAD on, into ring slot r: u and the dt pre-activation; where that step gates,
// also the other direction's y (stored chunks before) and z.
template <int DIR, int CH, typename T>
__device__ __forceinline__ void load_ahead(SplitScan<CH>& st, const SplitArgs<T>& g, int r, bool gates) {
    const int ahead = st.i + AHEAD * (DIR == 0 ? g.D : -g.D);
    if constexpr (!StagedInputs<T, CH>::value) {
        load(g.xc + ahead, st.u_ring[r]);
        load(g.pre + ahead, st.pre_ring[r]);
    }
    if (gates) {
        load(g.ys + (DIR == 0 ? ahead + g.rows : ahead - g.rows), st.y_ring[r]);
        load(g.z + st.iz, st.z_ring[r]);
    }
}

// load_ahead's addresses into L1 (prefetch_l1 says why).
template <int DIR, int CH, typename T>
__device__ __forceinline__ void prefetch_ahead(const SplitScan<CH>& st, const SplitArgs<T>& g, bool gates) {
    const int ahead = st.i + AHEAD * (DIR == 0 ? g.D : -g.D);
    if constexpr (!StagedInputs<T, CH>::value) {
        prefetch_l1(g.xc + ahead);
        prefetch_l1(g.pre + ahead);
    }
    if (gates) {
        prefetch_l1(g.ys + (DIR == 0 ? ahead + g.rows : ahead - g.rows));
        prefetch_l1(g.z + st.iz);
    }
}

// One step of a direction: scan_direction's, with y stored in ys (GATE false) or averaged with the other
// direction's, gated and stored in out (GATE true). `next` says whether a step AHEAD on exists, `next_gates`
// whether it gates. StagedInputs: `tile` is this thread's u of the chunk's first step in shared memory, the step's
// `row` steps on, its pre SPLIT_CHUNK HALF values after its u.
template <int DIR, bool GATE, int CH, typename T>
__device__ __forceinline__ void split_step(SplitScan<CH>& st, const SplitArgs<T>& g, int r, const float* bc_row,
                                           const T* tile, int row, bool next, bool next_gates) {
    if (next) prefetch_ahead<DIR>(st, g, next_gates);
    float u[CH], pre[CH], delta[CH], du[CH], y[CH], y_other[CH], zz[CH];
    if constexpr (StagedInputs<T, CH>::value) {
        load(tile + row * HALF, u);
        load(tile + (SPLIT_CHUNK + row) * HALF, pre);
    } else {
#pragma unroll
        for (int c = 0; c < CH; ++c) u[c] = st.u_ring[r][c], pre[c] = st.pre_ring[r][c];
    }
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        delta[c] = softplus(pre[c] + st.bias[c]);
        du[c] = delta[c] * u[c];
        y[c] = st.skip[c] * u[c];
        y_other[c] = st.y_ring[r][c];
        zz[c] = st.z_ring[r][c];
    }
    if (next) load_ahead<DIR>(st, g, r, next_gates);
    st.iz += DIR == 0 ? g.stride_zl : -g.stride_zl;
    advance_states<CH>(st.h, st.a, delta, du, y, reinterpret_cast<const float4*>(bc_row));
    if (GATE) {
#pragma unroll
        for (int c = 0; c < CH; ++c) y[c] = (y_other[c] + y[c]) * 0.5f * silu(zz[c]);
        if (g.live) store(g.out + (DIR == 0 ? st.i : st.i - g.rows), y);
    } else if (g.live) {
        store(g.ys + st.i, y);
    }
    st.i += DIR == 0 ? g.D : -g.D;
}

// One direction's scan in the split kernels, its steps below first_gating storing y, the others gating.
template <int DIR, int CH, typename T>
__device__ __forceinline__ void scan_split_direction(const SplitArgs<T>& g, const float* __restrict__ dbl,
                                                     const float* __restrict__ dt_bias, const float* __restrict__ a2,
                                                     const float* __restrict__ dskip, int lane, int b, int dd,
                                                     int first_gating, int Bsz, int L, int R, int stride_zb) {
    __shared__ __align__(16) float bc[2][SPLIT_CHUNK][2 * REIDCAM_N];  // one per direction (instantiation)
    constexpr bool staging = StagedInputs<T, CH>::value;
    __shared__ __align__(16) T xp[staging ? 2 : 1][2][SPLIT_CHUNK][staging ? HALF : 1];  // [buffer][u, pre][step][lane]
    const int E = R + 2 * REIDCAM_N, D = g.D, channel0 = blockIdx.x * HALF * CH;
    SplitScan<CH> st;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
#pragma unroll
        for (int n = 0; n < REIDCAM_N; ++n) {
            st.a[c][n] = a2[(DIR * REIDCAM_N + n) * D + dd + c];
            st.h[c][n] = 0.0f;
        }
        st.bias[c] = dt_bias[DIR * D + dd + c];
        st.skip[c] = dskip[DIR * D + dd + c];
    }
    const int seq_row = (DIR * Bsz + b) * L;
    const float* dbl_seq = dbl + (long long)seq_row * E;
    const int first = DIR == 0 ? 0 : L - 1;
    st.i = (seq_row + first) * D + dd - AHEAD * (DIR == 0 ? D : -D);  // as if AHEAD steps before the first
    st.iz = b * stride_zb + first * g.stride_zl + dd;
#pragma unroll
    for (int r = 0; r < AHEAD; ++r) {  // the first AHEAD steps: none gates
        if (r < L) load_ahead<DIR>(st, g, r, false);
        st.iz += DIR == 0 ? g.stride_zl : -g.stride_zl;
        st.i += DIR == 0 ? D : -D;
    }

    float staged[SPLIT_STAGED];
    if constexpr (staging) stage_inputs<DIR>(xp[0], g.xc, g.pre, lane, 0, L, D, seq_row, channel0);
    load_bc_split<DIR>(staged, dbl_seq, lane, 0, L, E, R);
    store_bc_split(bc[0], staged, lane);
    if constexpr (staging) cp_async_wait_all();
    split_barrier();
    for (int step0 = 0, buffer = 0; step0 < L; step0 += SPLIT_CHUNK, buffer ^= 1) {
        const bool more = step0 + SPLIT_CHUNK < L;
        if (more) load_bc_split<DIR>(staged, dbl_seq, lane, step0 + SPLIT_CHUNK, L, E, R);
        if constexpr (staging) {
            if (more)
                stage_inputs<DIR>(xp[buffer ^ 1], g.xc, g.pre, lane, step0 + SPLIT_CHUNK, L, D, seq_row, channel0);
        }
        const T* tile = nullptr;  // this thread's u of the chunk's first step (StagedInputs)
        if constexpr (staging) tile = &xp[buffer][0][0][lane];
        const int steps = min(SPLIT_CHUNK, L - step0);
        const int stores = min(steps, max(first_gating - step0, 0));  // a multiple of AHEAD, or steps
#pragma unroll 1
        for (int s0 = 0; s0 < stores; s0 += AHEAD) {
#pragma unroll
            for (int r = 0; r < AHEAD; ++r) {  // the ring slot of step step0 + s0 + r is r
                if (s0 + r >= stores) break;
                const int step = step0 + s0 + r;
                split_step<DIR, false>(st, g, r, bc[buffer][s0 + r], tile, s0 + r, step + AHEAD < L,
                                       step + AHEAD >= first_gating);
            }
        }
#pragma unroll 1
        for (int s0 = stores; s0 < steps; s0 += AHEAD) {
#pragma unroll
            for (int r = 0; r < AHEAD; ++r) {
                if (s0 + r >= steps) break;
                split_step<DIR, true>(st, g, r, bc[buffer][s0 + r], tile, s0 + r, step0 + s0 + r + AHEAD < L, true);
            }
        }
        if (more) store_bc_split(bc[buffer ^ 1], staged, lane);
        if constexpr (staging) cp_async_wait_all();
        split_barrier();  // also orders this chunk's stores of y before the other direction's loads of them, the
                          // next chunk's copies before their reads, this chunk's reads before the copies into it
    }
}

// The tokens both directions stored (L - first_gating .. first_gating - 1): their gated average, every other
// token by each direction's threads. After the block's last barrier.
template <int CH, typename T>
__device__ __forceinline__ void gate_stored(const SplitArgs<T>& g, int first_gating, int dir, int b, int dd, int L,
                                            int stride_zb) {
    for (int t = L - first_gating + dir; t < first_gating; t += 2) {
        const int i = (b * L + t) * g.D + dd;  // out's index, and the forward direction's in ys
        float y_f[CH], y_b[CH], zz[CH], y[CH];
        load(g.ys + i, y_f);
        load(g.ys + (i + g.rows), y_b);
        load(g.z + (b * stride_zb + t * g.stride_zl + dd), zz);
#pragma unroll
        for (int c = 0; c < CH; ++c) y[c] = (y_f[c] + y_b[c]) * 0.5f * silu(zz[c]);
        store(g.out + i, y);
    }
}

template <int CH, typename T>
__device__ __forceinline__ void scan_fwd_split(const T* xc, const T* z, const float* dbl, const T* pre,
                                               const float* dt_bias, T* out, const float* a2, const float* dskip,
                                               int Bsz, int L, int D, int R, long long stride_zb, long long stride_zl,
                                               float* ys) {
    const int dir = threadIdx.x / HALF, lane = threadIdx.x % HALF;
    const int b = blockIdx.y;
    const int d = (blockIdx.x * HALF + lane) * CH;
    const bool live = d < D;
    const int dd = live ? d : 0;  // threads past D keep the block's barriers and compute on channel 0
    const SplitArgs<T> g{xc, z, pre, out, ys, Bsz * L * D, D, (int)stride_zl, live};
    const int first_gating = finishing_step(L);
    if (dir == 0)
        scan_split_direction<0, CH>(g, dbl, dt_bias, a2, dskip, lane, b, dd, first_gating, Bsz, L, R, (int)stride_zb);
    else
        scan_split_direction<1, CH>(g, dbl, dt_bias, a2, dskip, lane, b, dd, first_gating, Bsz, L, R, (int)stride_zb);
    if (live) gate_stored<CH>(g, first_gating, dir, b, dd, L, (int)stride_zb);
}

// The unsplit kernels' arguments (below), then ys: (2, B, L, D) fp32 scratch, of which the kernel reads only
// what it wrote in the same launch.
#define REIDCAM_SCAN_SPLIT_KERNEL(NAME, T, CH)                                                                    \
    extern "C" __global__ void __launch_bounds__(REIDCAM_THREADS, REIDCAM_MIN_BLOCKS_C##CH)                     \
        NAME(const T* xc, const T* z, const float* dbl, const T* pre, const float* dt_bias, T* out, const float* a2, \
             const float* dskip, int Bsz, int L, int D, int R, long long stride_zb, long long stride_zl, float* ys) { \
        scan_fwd_split<CH>(xc, z, dbl, pre, dt_bias, out, a2, dskip, Bsz, L, D, R, stride_zb, stride_zl, ys);  \
    }

REIDCAM_SCAN_SPLIT_KERNEL(bimamba_scan_fwd_split_bf16_c1, bf16_bits, 1)
REIDCAM_SCAN_SPLIT_KERNEL(bimamba_scan_fwd_split_bf16_c2, bf16_bits, 2)
REIDCAM_SCAN_SPLIT_KERNEL(bimamba_scan_fwd_split_f16_c1, f16_bits, 1)
REIDCAM_SCAN_SPLIT_KERNEL(bimamba_scan_fwd_split_f16_c2, f16_bits, 2)
REIDCAM_SCAN_SPLIT_KERNEL(bimamba_scan_fwd_split_f32_c1, float, 1)
REIDCAM_SCAN_SPLIT_KERNEL(bimamba_scan_fwd_split_f32_c2, float, 2)

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
