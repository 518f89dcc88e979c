// Backward of the fused bidirectional selective scan, as a CUDA kernel compiled at first use (NVRTC).
//
// The same function as _bimamba_scan_bwd_kernel in triton_scan.py, with the same tensors: given the output's
// gradient g, it writes each direction's share of dz, the scan's direct part of dxc, the gradient of the dt
// pre-activation (ddt), adds dB and dC (sums over channels) into dbc, and leaves per-sequence partial sums
// of dA, dD and the dt bias, all in one buffer (parts: one reduction sums them, triton_scan.GradBuffers.grads).
// Per direction, with steps s in the direction's order:
//   delta = softplus(pre + dt_bias), h_s = exp2(delta_s a2) h_{s-1} + delta_s u_s B_s, y = D u + sum_n C_n h_n,
//   gy = g z sigmoid(z) / 2 (this direction's share of the gated average),
//   dh_s = C_s gy_s + exp2(delta_{s+1} a2) dh_{s+1} (the adjoint state), q = dh_s exp2(delta_s a2) h_{s-1}.
//
// A block is (THREADS channels, one sequence, one direction), a thread one channel (design 4: 2 THREADS channels, a
// thread two adjacent ones); grid (channel blocks, 2 * batch), the direction-major sequence index as in the forward's
// tensors.
// Pass 1 walks the direction forward with the N states in registers and keeps the state every STEPS tokens
// in a scratch (checkpoint k = the state before step (k + 1) STEPS; fp32, (2, B, checkpoints, N, D), so a
// warp's stores and loads are coalesced over channels; design 3 tiles it by channel block: checkpoint_stride);
// the last sub-chunk needs no checkpoint and pass 1 stops before it. Pass 2 walks the sub-chunks of STEPS tokens
// in reverse: it recomputes their states from the checkpoint and runs the adjoint back through them, state by
// state (the STEPS states of one state index, not the N states of one token, are what it holds: ~4 STEPS + 3 N
// registers instead of STEPS N).
// The adjoint state crosses sub-chunks in registers (design 3: shared memory), premultiplied by the decay of the
// step after it.
//
// dB and dC of a token are sums over all channels: each thread has 2 STEPS values per state index. A warp
// transposes them through its own rows of shared memory (no block barrier) every FLUSH state indices (design 3:
// its columns, every state index), each lane then sums one value over the warp's 32 channels; once per sub-chunk
// the warps' sums meet in shared memory and one thread per (token, state, B or C) adds the block's sum to dbc
// with one atomic, as the Triton kernel does with one atomic per program.
//
// Threads past D take part in the barriers with zero inputs, so their shares of every sum are zero.
//
// No headers, and no inline PTX but the bf16 store's conversion and design 3's L2 prefetch hint: bf16 travels as its
// 16 bits (load: a shift; store: cvt.rn.bf16.f32 as in scan_fwd.cu, by integer arithmetic before sm_80, which has
// no such instruction), and exp2f is ex2.approx under --use_fast_math. REIDCAM_N is d_state
// (a multiple of 4), REIDCAM_THREADS the block size (a multiple of 32), REIDCAM_STEPS the checkpoint interval (4 or
// 8), REIDCAM_SHARED_BYTES the block's shared memory as cuda_scan.backward_shared_bytes counts it (asserted below).

#ifndef REIDCAM_N
#define REIDCAM_N 16
#endif
#ifndef REIDCAM_THREADS
#define REIDCAM_THREADS 256
#endif
// Why 4 tokens between checkpoints: the scratch is 2 B ceil(L / 4) N D fp32 (214 MB at batch 64, 140 tokens,
// d_inner 768, d_state 16: written once and read once, ~0.13 ms of HBM traffic on an H100, beside ~18 FP32/MUFU
// instructions per (token, channel, state)); pass 2's registers and the warp rows grow with it, and at 8 the
// shared memory of d_state 16 no longer fits the 48 KB of a static allocation.
#ifndef REIDCAM_STEPS
#define REIDCAM_STEPS 4
#endif
// How pass 1 and pass 2 get their global inputs (bench/cuda_scan_bwd_variants.py times the designs side by side):
//   0: each sub-chunk loads what it needs where it needs it. The SASS shows why that is slow: the step inputs'
//      loads sit behind the `real ?` conditions (a branch per token and tensor, so 4-8 global latencies one after
//      another per sub-chunk), and each state's checkpoint is loaded just before its recurrence needs it
//      (16 more global latencies per sub-chunk, from HBM: the scratch is ~4x the L2). At 16 warps per SM these
//      latencies, not the ~45 instructions per (token, channel, state), bound the kernel (~0.3 ms of issue
//      against ~0.93 measured).
//   1: the loads are unconditional (clamped to a real token or channel, the value zeroed after), so that they
//      issue together: pass 1 loads the next sub-chunk's xc and pre one sub-chunk ahead (8 registers, which
//      pass 1 has to spare); pass 2 loads its sub-chunk's 16 step inputs together at its start (one latency per
//      sub-chunk instead of 4-8), and each checkpoint AHEAD states before its state index needs it (AHEAD
//      registers; ~150 instructions per state and 4 warps per scheduler hide an HBM latency in about 2).
//      Not tried further: the step inputs one sub-chunk ahead (16 registers) or every checkpoint one
//      sub-chunk ahead (16) spill 280-580 bytes at 128 registers, as do AHEAD 4 (40 B) and 6.
//   3: design 1's loads and arithmetic in 80 registers, so that 3 blocks of 256 threads (or 6 of 128) fit an SM:
//      24 warps per SM instead of 16 (6 per scheduler against the latencies that bound design 1), and batch 64's
//      384 blocks in one wave of 396 slots (132 SMs) instead of 1.45 waves of 264. Design 1 capped at 80
//      registers spills 632 B. What left the registers: pass 2's carry and dA sum of each state (2 N registers
//      live through the pass, each read and written once per state and sub-chunk) and the sub-chunk's dz_factor
//      while its states run move to the thread's column of shared memory (Column); the dB/dC transposition goes
//      by columns, one state index at a time (FLUSH 1: one address register, where the rotated rows of design 1
//      take one per value read, 8 at FLUSH 1); add_block_sums states its trip count (the open loop kept the
//      indices of 4 unrolled iterations live). The per-channel arithmetic and its order are design 1's: every
//      gradient bit for bit but dbc, whose warp sums add the channels in another order. Shared memory, dynamic
//      (over the 48 KB of a static allocation): 71,680 B at 256 threads, 36,352 at 128; with the driver's 1 KB
//      per block, 3 (6) blocks take 218 (224) of the 228 KB of an H100/H200 SM. Pass 2's loop, SASS per
//      sub-chunk of the bf16 kernel: 2,364 (36.9 per token, channel and state) against design 1's 2,519, of them
//      305 LDS/STS against 253. 80 registers is a fit at the edge: ptxas' spill choices flip with edits that
//      change no arithmetic (8-64 B seen, e.g. with the transposition's addresses behind a helper function, or
//      the dskip and dbias sums in shared memory too), and the compile test guards the builds.
//      Its address work (session 10), the same arithmetic bit for bit (dbc too) and design 0's and 1's SASS
//      unchanged: the checkpoints tiled by channel block (checkpoint_stride: a state THREADS floats on, immediate
//      offsets from one base register, where the runtime stride D cost a 64-bit multiply per state in pass 2
//      and a 64-bit add in pass 1; pass 2's pointer moves back a checkpoint per sub-chunk); the step inputs' and
//      outputs' rows from the sub-chunk's first by +-D (load_raw_steps, store_sub_chunk's pointers, load_xp),
//      where Lane::row cost a 64-bit multiply per step and tensor (and ptxas kept a copy of the outputs' code per
//      direction); warp_column_sum starts from its first value. SASS per sub-chunk, bf16 (f32), as counted
//      (both directions' copies) / as one thread runs it: pass 2 2,364 (2,236) / 2,173 (2,092) -> 1,930 (1,860),
//      30.2 (29.1) per token, channel and state; pass 1 552 (541) / 515 (504) -> 469 (461), 7.3 (7.2). 80
//      registers, no spill, in every design-3 build (the 96-register 128 x 5 build's 8 B of bf16 spill gone
//      too). Measured (session 10, H200, the earlier source beside it): 0.514 -> 0.444 ms at batch 64, 1.923 ->
//      1.689 at batch 256 (predicted 0.49-0.52 at 64); the training step 30.0 -> 28.2 ms. Session 13 cut a
//      sub-chunk's work around the recurrence (the bf16 stores by cvt, softplus without a branch around it, the
//      outputs' pointers moved unconditionally, offsets within a sequence in 32 bits, the prefetch's trip count):
//      pass 2 as compiled 2,206 -> 1,964 (bf16), 0.437 -> 0.419 ms at batch 64, 1.554 -> 1.444 at 256 (H200).
//   4: design 3 with two adjacent channels a thread (scan_bwd_pairs, below), for the work that design 3 does once
//      per thread and token or state, not per channel: a step's xc, pre, z and g of both channels come in one load
//      (a 32-bit word of two 16-bit values, or a float2) and its dz, dxc and ddt go out in one store each; a state's
//      B and C reads, its a, carry and dA columns (float2) and its checkpoint load serve both channels; and the
//      thread adds its two channels' dB and dC values before the warp's transposition (as an FMUL and an FFMA, no
//      more than one channel's two FMULs), so the channel sums' shared-memory stores and loads per channel halve.
//      The two recurrences are independent chains for the scheduler. Pass 2's loop, SASS per sub-chunk of the bf16
//      kernel at 128 threads: 2,850 for two channels (1,425 a channel, against design 3's 1,964); pass 1 791 (396,
//      against 469). 168 registers, 12 warps per SM (3 blocks of 128 threads: their 62,976 B of shared memory
//      leave no room for a fourth), as many channels in flight per SM as design 3's 24 warps; at batch 64, 384
//      blocks of 256 channels in one wave of 396 slots. It needs D even and z's pairs aligned
//      (cuda_scan.backward_pairs_fit; the mixer runs design 3 where they are not). Every per-channel gradient is
//      design 3's bit for bit; dbc adds the channels in another order. Measured (session 14, H200, the kernel
//      alone, batch 64 / 256): 0.372 / 1.404 ms against design 3's 0.418 / 1.442; 64-thread blocks 0.408 / 1.539;
//      the step 24.9 -> 23.8 ms. Since session 15 its pass 1 runs as a kernel of its own (scan_ckpt) and it
//      transposes dB/dC every second state (FLUSH 2): 0.383 / 1.427 -> 0.372 / 1.337 ms, the step 23.9 -> 23.7.
// Design 1 (session 8, H200): 0.570 ms against design 0's 0.956 at batch 64, 1.883 against 2.866 at batch 256,
// with the same gradients (bench/cuda_scan_bwd_variants.py). Design 3 (session 9, H200): 0.538 ms against design
// 1's 0.597 at batch 64 (one wave), 1.952 against 1.907 at batch 256. The mixer runs design 4 for every dtype
// (cuda_scan.BWD_DESIGN_OF), and where its pairs do not fit the tensors design 3 for bf16 and fp32 and design 1 for
// fp16: design 3's fp16 build spills 100 B at 80 registers, so this file builds none. The macro's default stays 1.
#ifndef REIDCAM_BWD_DESIGN
#define REIDCAM_BWD_DESIGN 1
#endif
// Blocks per SM that ptxas must fit: 2 of 256 threads leaves 128 registers per thread; design 3 is built for
// 24 warps per SM (3 blocks of 256 threads, 6 of 128: 80 registers), design 4 for 12 (3 of 128: 168 registers).
#ifndef REIDCAM_MIN_BLOCKS
#define REIDCAM_MIN_BLOCKS \
    (REIDCAM_BWD_DESIGN == 3 ? 24 * 32 / REIDCAM_THREADS : REIDCAM_BWD_DESIGN == 4 ? 12 * 32 / REIDCAM_THREADS : 2)
#endif

#define N REIDCAM_N
// Design 4: pass 1 as a kernel of its own (bimamba_scan_ckpt_*, launched before the kernel of pass 2, which then
// skips it; until session 15 pass 2's kernel ran it, two channels a thread). A thread per channel, 256 threads a
// block, its A in registers, 64 registers (4 blocks an SM), B staged through 1 KB of static shared memory. Measured
// (H200, session 15, bench/NOTES-speed.md attempt 98): pass 1 89.6 us a call of the training step, pass 2 252.1,
// where the two in one kernel took 349 (the kernel alone at batch 64 / 256, with FLUSH 2: 0.372 / 1.337 ms against
// 0.377 / 1.404 inside). Its first form, design 4's pairs apart (128 threads, 80 registers), took 87.7: Nsight Compute
// showed it at 2.6 active warps a scheduler (batch 64's 384 blocks are 2.9 an SM), but twice the warps did not make
// it faster (XU pipe 65 %, DRAM 56 % writing the checkpoints). This form stays for reusing store_checkpoints.
#ifndef REIDCAM_CKPT_MIN_BLOCKS
#define REIDCAM_CKPT_MIN_BLOCKS 4
#endif
// Designs 1, 3 and 4: how many states ahead pass 2 loads a checkpoint. Design 4: 4 (its 168 registers hold them;
// on an H200, batch 64 / 256: 2 0.383 / 1.441 ms, 1 0.390 / 1.516, 4 0.369 / 1.400; session 14).
#ifndef REIDCAM_AHEAD
#define REIDCAM_AHEAD (REIDCAM_BWD_DESIGN == 4 ? 4 : 2)
#endif
#define AHEAD REIDCAM_AHEAD
#define THREADS REIDCAM_THREADS
#define STEPS REIDCAM_STEPS
#define WARPS (THREADS / 32)
#define LOADS_AHEAD (REIDCAM_BWD_DESIGN != 0)  // designs 1 and 3 issue the global loads ahead
#define PAIRS (REIDCAM_BWD_DESIGN == 4)  // design 4: two adjacent channels a thread
#define DIET (REIDCAM_BWD_DESIGN == 3 || PAIRS)  // design 3's register diet: long-lived values in shared memory
#define CH (PAIRS ? 2 : 1)                // channels a thread
#define BLOCK_CHANNELS (THREADS * CH)
// State indices per warp transposition (design 3: 1, smaller rows). Design 4: 2, its 3 blocks an SM leave room for
// the rows (4.6 KB more a block); pass 2's loop 2,850 -> 2,813 instructions a sub-chunk (bf16), fewer shuffles and
// FADDs; on an H200 the kernel 0.385 -> 0.378 ms at batch 64, 1.426 -> 1.376 at 256 (session 15).
#ifndef REIDCAM_FLUSH
#define REIDCAM_FLUSH (PAIRS ? 2 : DIET ? 1 : 2)
#endif
#define FLUSH REIDCAM_FLUSH
static_assert(FLUSH == 1 || FLUSH == 2 || FLUSH == 4, "a transposition's values fill whole float4 reads");
static_assert(!DIET || PAIRS || FLUSH == 1, "design 3's transposition goes one state at a time (its 80 registers)");
#define WARP_VALUES (2 * STEPS * FLUSH)  // dB and dC values per thread and transposition: 8, 16 or 32
#define LANES_PER_VALUE (32 / WARP_VALUES)
#define BLOCK_VALUES (2 * STEPS * N)     // dB and dC values of one sub-chunk
#define LN2 0.6931471805599453f

static_assert(N % 4 == 0, "d_state must be a multiple of 4");
static_assert(STEPS == 4 || STEPS == 8, "a sub-chunk's B or C of one state is read as float4s");
static_assert(THREADS % 32 == 0, "whole warps");
static_assert(REIDCAM_BWD_DESIGN == 0 || REIDCAM_BWD_DESIGN == 1 || REIDCAM_BWD_DESIGN == 3 || REIDCAM_BWD_DESIGN == 4,
              "designs 0, 1, 3, 4");
static_assert(AHEAD >= 1 && AHEAD <= N, "checkpoints 1 to N states ahead");

typedef unsigned short bf16_bits;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16_bits x) { return __uint_as_float(((unsigned int)x) << 16); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_bits* p, float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800  // no bf16 conversion before sm_80: by integer arithmetic
    const unsigned int bits = __float_as_uint(v);
    *p = (bf16_bits)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);  // round to nearest even (finite v)
#else
    bf16_bits r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));  // one F2FP, where integer rounding took four instructions
    *p = r;
#endif
}

// fp16 travels as its 16 bits too, in a type of its own (bf16_bits is the unsigned short) for to_float and store
// to overload on. Its conversions are libdevice's (NVRTC links it): one instruction each, still no inline PTX (the
// g++ emulation of the tests supplies them), where an integer float -> fp16 rounding would need the subnormal and
// overflow cases (the loss scaler of fp16 training looks for the infinities) in a dozen instructions.
enum class f16_bits : unsigned short {};
extern "C" __device__ float __nv_half2float(unsigned short);
extern "C" __device__ unsigned short __nv_float2half_rn(float);

__device__ __forceinline__ float to_float(f16_bits x) { return __nv_half2float((unsigned short)x); }
__device__ __forceinline__ void store(f16_bits* p, float v) { *p = (f16_bits)__nv_float2half_rn(v); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

// sigmoid(pre) = d delta / d pre = 1 - exp(-delta) for delta = softplus(pre), from delta: a series where the
// difference would cancel (delta < 0.1: relative error below 1e-7), so that pre need not stay in a register.
__device__ __forceinline__ float softplus_slope(float delta) {
    const float series = delta * (1.0f - delta * (0.5f - delta * (1.0f / 6.0f - delta * (1.0f / 24.0f))));
    return delta < 0.1f ? series : 1.0f - __expf(-delta);
}

// log(1 + exp(x)) with torch's threshold of 20 and a series where exp(x) is tiny, as _softplus in Triton.
__device__ __forceinline__ float softplus(float x) {
    const float e = __expf(fminf(x, 20.0f));
    const float soft = e < 1e-3f ? e * (1.0f - e * (0.5f - e * (1.0f / 3.0f))) : __logf(1.0f + e);
    return x > 20.0f ? x : soft;
}

struct SharedRows {
    float a[N][BLOCK_CHANNELS];                        // the block's A log2(e), a row per state
    float bc[2][2 * N][STEPS];                         // B then C of a sub-chunk's steps, double-buffered
#if DIET
    float warp_values[WARPS][WARP_VALUES][32 + 4];     // a warp's dB/dC values by value, a lane per column
#else
    float warp_rows[WARPS][32][WARP_VALUES + 4];       // a warp's dB/dC values by lane (padded: no conflicts)
#endif
    float warp_sums[2][WARPS][BLOCK_VALUES];           // each warp's sums of a sub-chunk, double-buffered
#if DIET
    float carry[N][BLOCK_CHANNELS];                    // pass 2's adjoint carry of each state, a column per thread
    float da[N][BLOCK_CHANNELS];                       // and its dA sum
    float dz_factor[STEPS][BLOCK_CHANNELS];            // the sub-chunk's StepInputs::dz_factor, parked
#endif
};

// The count of the launch's dynamic shared memory (design 3) comes from cuda_scan.backward_shared_bytes, which
// every build gets: a layout change that it does not follow stops the build instead of overrunning the launch's.
#ifndef REIDCAM_SHARED_BYTES
#error "REIDCAM_SHARED_BYTES: cuda_scan.backward_shared_bytes(threads, d_state, steps, design)"
#endif
static_assert(sizeof(SharedRows) == REIDCAM_SHARED_BYTES, "cuda_scan.backward_shared_bytes disagrees with SharedRows");

// What one thread needs of its sequence, direction and channel. The tensors stay the kernel's arguments (read
// from the constant bank, no registers); the offsets of the block's sequence are the same for the whole block.
// Threads past D use channel 0 (real memory, whose values they discard).
template <typename T>
struct Lane {
    const T *xc, *pre, *z, *g;
    T *dz, *dxc, *ddt;
    const float* dbl_seq;       // dbl's row of the sequence's token 0, from its column R (B)
    float* dbc_seq;             // dbc's row of the sequence's token 0
    long long seq_elem;         // element offset of the sequence's token 0 in xc, pre, dz, dxc, ddt
    long long b_row;            // row of token 0 in g's (B*L, D)
    long long z_row;            // element offset of token 0 in z
    long long stride_zl;
    long long z_step;           // design 3's walks: +-stride_zl, the next step's offset in z
    long long g_shift;          // xc's row less g's: the direction's B L rows of D
    int row_step;               // +-D, the next step's row in xc, pre, g, dz, dxc, ddt
    int direction, L, D, R, channel;
    bool live;                  // the channel is < D
    __device__ int token(int step) const { return direction == 0 ? step : L - 1 - step; }
    // Offsets within the sequence in 32 bits (backward_supports: L max(D, R + 2N) < 2^31) added to the block's
    // 64-bit base: the 64-bit products (seq_row + t) width cost ~6 integer instructions each, per load and atomic.
    // Unsigned, so that the compiler cannot split an offset's sum into 64-bit pointers held through the loops (that
    // spilled at 80 registers).
    __device__ long long row(int t) const { return seq_elem + (unsigned)(t * D + channel); }  // xc, pre, dz, dxc, ddt
    __device__ const float* bc_row(int t, int column) const { return dbl_seq + (unsigned)(t * (R + 2 * N) + column); }
    __device__ float* dbc_row(int t, int column) const { return dbc_seq + (unsigned)(t * (2 * N) + column); }
};

// The Lane of the block's sequence seq (direction * Bsz + b) and the thread's channel d (its first, design 4).
template <typename T>
__device__ __forceinline__ Lane<T> make_lane(const T* xc, const T* z, const T* g, const T* pre, T* dz, T* dxc, T* ddt,
                                             const float* dbl, float* dbc, int Bsz, int L, int D, int R,
                                             long long stride_zb, long long stride_zl, int seq, int d) {
    const int b = seq % Bsz;
    const int dd = d < D ? d : 0;
    const long long seq_row = (long long)seq * L;
    Lane<T> lane;
    lane.xc = xc, lane.pre = pre, lane.z = z, lane.g = g, lane.dz = dz, lane.dxc = dxc, lane.ddt = ddt;
    lane.dbl_seq = dbl + seq_row * (R + 2 * N) + R, lane.dbc_seq = dbc + seq_row * (2 * N);
    lane.seq_elem = seq_row * D, lane.b_row = (long long)b * L, lane.z_row = b * stride_zb + dd;
    lane.stride_zl = stride_zl;
    lane.direction = seq / Bsz, lane.L = L, lane.D = D, lane.R = R, lane.channel = dd, lane.live = d < D;
    lane.z_step = lane.direction == 0 ? stride_zl : -stride_zl;
    lane.g_shift = (seq - b) * (long long)L * D;
    lane.row_step = lane.direction == 0 ? D : -D;
    return lane;
}

// B and C of sub-chunk k's steps: thread i < 2 N STEPS reads column i % 2N of step i / 2N (zero past the end).
#define STAGED ((2 * N * STEPS + THREADS - 1) / THREADS)

template <typename T>
__device__ __forceinline__ void load_bc(float (&staged)[STAGED], const Lane<T>& lane, int k) {
#pragma unroll
    for (int j = 0; j < STAGED; ++j) {
        const int i = threadIdx.x + j * THREADS;
        const int step = k * STEPS + i / (2 * N);
        const bool real = i < 2 * N * STEPS && step < lane.L;
        staged[j] = real ? *lane.bc_row(lane.token(step), i % (2 * N)) : 0.0f;
    }
}

__device__ __forceinline__ void store_bc(float (*bc)[STEPS], const float (&staged)[STAGED]) {
#pragma unroll
    for (int j = 0; j < STAGED; ++j) {
        const int i = threadIdx.x + j * THREADS;
        if (i < 2 * N * STEPS) bc[i % (2 * N)][i / (2 * N)] = staged[j];
    }
}

__device__ __forceinline__ void read_steps(const float* row, float (&v)[STEPS]) {
#pragma unroll
    for (int q = 0; q < STEPS / 4; ++q) {
        const float4 x = reinterpret_cast<const float4*>(row)[q];
        v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
    }
}

__device__ __forceinline__ void write_steps(float* row, const float (&v)[STEPS]) {
#pragma unroll
    for (int q = 0; q < STEPS / 4; ++q)
        reinterpret_cast<float4*>(row)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
}

// The warp's sum over its 32 channels of value (lane / LANES_PER_VALUE) of the rows just written. A lane reads
// one value of WARP_VALUES channels, starting at a lane-dependent channel so that the lanes of a load hit
// distinct banks (row stride WARP_VALUES + 4 words); the LANES_PER_VALUE partial sums meet by shuffles.
__device__ __forceinline__ float warp_transpose_sum(float (*rows)[WARP_VALUES + 4]) {
    __syncwarp();
    const int lane = threadIdx.x % 32;
    const int part = lane % LANES_PER_VALUE, value = lane / LANES_PER_VALUE;
    const int rotation = LANES_PER_VALUE == 2 ? 4 * part : 0;  // 16 values: rows 80 bytes apart
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < WARP_VALUES; ++j) sum += rows[part * WARP_VALUES + (j + rotation) % WARP_VALUES][value];
#pragma unroll
    for (int offset = 1; offset < LANES_PER_VALUE; offset *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    __syncwarp();
    return sum;
}

// Design 3's transposition: a thread writes its values down its column (scalar stores: a warp's hit 32 banks) and
// a lane reads WARP_VALUES consecutive columns of one row as float4s (rows 36 words apart put the 8 lanes of a
// 128-bit load on distinct banks). Its addresses are one register and immediates each way, where the rotation
// above costs a register per value read (8 at FLUSH 1, live through pass 2: 64 B of spill at 80 registers).
#define VALUE_STRIDE (DIET ? 32 + 4 : 1)  // words between a thread's consecutive values

__device__ __forceinline__ void write_values(float* at, const float (&v)[STEPS]) {
#if DIET
#pragma unroll
    for (int s = 0; s < STEPS; ++s) at[s * VALUE_STRIDE] = v[s];
#else
    write_steps(at, v);
#endif
}

__device__ __forceinline__ float warp_column_sum(float (*values)[32 + 4]) {
    __syncwarp();
    const int lane = threadIdx.x % 32;
    const int part = lane % LANES_PER_VALUE, value = lane / LANES_PER_VALUE;
    const float4* columns = reinterpret_cast<const float4*>(&values[value][part * WARP_VALUES]);
    // from the first value, not 0 + it (an FADD per state): only a zero's sign can differ (-0, where 0 + -0 gave
    // +0), and add_block_sum's 0 + sum makes that +0 again, so dbc keeps every bit
    float sum = columns[0].x;
#pragma unroll
    for (int q = 0; q < WARP_VALUES / 4; ++q) {
        const float4 x = columns[q];
        if (q > 0) sum += x.x;
        sum += x.y, sum += x.z, sum += x.w;
    }
#pragma unroll
    for (int offset = 1; offset < LANES_PER_VALUE; offset *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    __syncwarp();
    return sum;
}

// The block's sum of value i of the sub-chunk's dB and dC into dbc (2, B*L, 2N): one atomic per (step, state,
// B or C). Value i: transposition f = i / WARP_VALUES, then (state f FLUSH + j, B or C, step) within it.
template <typename T>
__device__ __forceinline__ void add_block_sum(float (*warp_sums)[BLOCK_VALUES], const Lane<T>& lane, int k, int i) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) sum += warp_sums[w][i];
    const int v = i % WARP_VALUES;
    const int n = (i / WARP_VALUES) * FLUSH + v / (2 * STEPS);
    const int which = (v / STEPS) % 2;
    const int step = k * STEPS + v % STEPS;
    if (step < lane.L) atomicAdd(lane.dbc_row(lane.token(step), which * N + n), sum);
}

// Thread i adds value i. Design 3 states the trip count (one where THREADS >= BLOCK_VALUES): ptxas does not know
// that threadIdx.x < THREADS, unrolled the open loop 4 times and kept the indices of all four iterations live
// through pass 2 (3-6 registers, 36 B of spill at 128 threads and 80 registers).
template <typename T>
__device__ __forceinline__ void add_block_sums(float (*warp_sums)[BLOCK_VALUES], const Lane<T>& lane, int k) {
#if DIET
#pragma unroll
    for (int j = 0; j < (BLOCK_VALUES + THREADS - 1) / THREADS; ++j) {
        const int i = threadIdx.x + j * THREADS;
        if (i < BLOCK_VALUES) add_block_sum(warp_sums, lane, k, i);
    }
#else
    for (int i = threadIdx.x; i < BLOCK_VALUES; i += THREADS) add_block_sum(warp_sums, lane, k, i);
#endif
}

// What a load at p brings as W: the T itself, or (design 4) a pair of adjacent Ts (PairWord).
template <typename W, typename T>
__device__ __forceinline__ W load_as(const T* p) { return *reinterpret_cast<const W*>(p); }

// xc and pre of sub-chunk k (not the last: every step is a token), unconditional loads (past D: channel 0).
template <typename T>
__device__ __forceinline__ void load_xp(T (&x)[STEPS], T (&p)[STEPS], const Lane<T>& lane, int k) {
#if DIET  // the steps' rows from the first's by row_step: one 64-bit multiply per sub-chunk, not per step
    const long long first = lane.row(lane.token(k * STEPS));
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const long long row = first + s * lane.row_step;
        x[s] = lane.xc[row], p[s] = lane.pre[row];
    }
#else
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const long long row = lane.row(lane.token(k * STEPS + s));
        x[s] = lane.xc[row];
        p[s] = lane.pre[row];
    }
#endif
}

// The checkpoint scratch: designs 0 and 1 (2, B, checkpoints, N, D), a thread's states D floats apart; design 3
// (2, B, checkpoints, channel blocks, N, THREADS) (cuda_scan.checkpoint_shape), a thread's states THREADS floats
// apart: immediate offsets from one base register, where the runtime stride D costs a 64-bit add per state and the
// index (n + AHEAD) D a 64-bit multiply. checkpoint_stride: floats from one checkpoint to the next (design 3).
__device__ __forceinline__ int checkpoint_stride(int D) {
    return (unsigned)(D + BLOCK_CHANNELS - 1) / BLOCK_CHANNELS * N * BLOCK_CHANNELS;
}

// A hint that the 128-byte line holding p is read soon: prefetch.global.L2 brings it from HBM into L2 and takes
// neither a register nor a scoreboard, so the load that needs it later waits for L2, not for HBM.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Design 3's L2 prefetch (prefetch_sub_chunk): 0 none, 1 the checkpoints, 2 the checkpoints and, in the 16-bit
// kernels, the step inputs (in the fp32 kernel, whose rows are twice as many lines, they spilled 4-8 B at 80
// registers). Measured (session 11, two H200s, bench/cuda_scan_bwd_variants.py, 128 threads, the kernel alone, batch
// 64 / 256): none 0.478 / 1.637 and 0.474 / 1.679 ms, 1: 0.444 / 1.582 and 0.465 / 1.635, 2 (then also in fp32):
// 0.450 / 1.533 and 0.446 / 1.567; the training step 27.3 -> 26.8 ms with 2. Prefetching pass 1's inputs into L2
// or L1, or loading them two sub-chunks ahead, changed the step by nothing measurable (bench/NOTES-speed.md,
// attempts 74, 77, 78).
// Design 4 prefetches the checkpoints only: with the step inputs too its 16-bit builds spill 8 B at 168 registers.
#ifndef REIDCAM_PREFETCH
#define REIDCAM_PREFETCH (PAIRS ? 1 : 2)
#endif
#define PREFETCH (DIET ? REIDCAM_PREFETCH : 0)

#if PREFETCH
// Design 3: into L2, ahead, what pass 2's sub-chunk k loads: the block's tile of its checkpoint (N
// THREADS floats, contiguous; tile: the block's first float of it, null for the first sub-chunk, which has none)
// and the rows of its steps' xc, pre, z and g (the block's THREADS channels of each), a thread per 128-byte line.
// Why (Nsight Compute on the training step, session 11): pass 2's loads of a sub-chunk's step inputs at its start
// and of each state's checkpoint AHEAD states before it come from HBM (the 214 MB scratch and the inputs' 140
// tokens per block are far beyond L2 at batch 64), and waiting for them (long scoreboard) was 3.0 of the 8.8
// cycles between a warp's instructions, at 58 % of the issue rate.
#define LINE_BYTES 128
template <typename T>
__device__ __forceinline__ void prefetch_sub_chunk(const Lane<T>& lane, const float* tile, int k) {
    constexpr int tile_lines = N * BLOCK_CHANNELS * 4 / LINE_BYTES;
    constexpr int row_lines = (BLOCK_CHANNELS * (int)sizeof(T) + LINE_BYTES - 1) / LINE_BYTES;
    constexpr int lines = tile_lines + (PREFETCH >= 2 && sizeof(T) == 2 ? 4 * STEPS * row_lines : 0);
    // the trip count stated (one at d_state 16): the open loop cost a loop's control and ptxas' copies of its body
#pragma unroll
    for (int round = 0; round < (lines + THREADS - 1) / THREADS; ++round) {
        const int i = threadIdx.x + round * THREADS;
        if (i >= lines) break;
        if (i < tile_lines) {
            if (tile) prefetch_l2(tile + i * (LINE_BYTES / 4));
            continue;
        }
        const int j = i - tile_lines, tensor = j / (STEPS * row_lines), s = j / row_lines % STEPS;
        const int channel =
            min((int)blockIdx.x * BLOCK_CHANNELS + j % row_lines * (LINE_BYTES / (int)sizeof(T)), lane.D - 1);
        const int t = lane.token(min(k * STEPS + s, lane.L - 1));
        const long long row = lane.row(t) + (channel - lane.channel);  // xc's and pre's; g's less g_shift
        const T* at = tensor == 0   ? lane.xc + row
                      : tensor == 1 ? lane.pre + row
                      : tensor == 2 ? lane.z + (lane.z_row + (t * lane.stride_zl + (channel - lane.channel)))
                                    : lane.g + (row - lane.g_shift);
        prefetch_l2(at);
    }
}
#endif

// Pass 1: the states at every sub-chunk boundary but the last, into the checkpoints (this thread's channel), with B
// staged through bc and state n's A log2(e) from a_of(n) (designs 1 and 3: their shared a rows; design 4's pass 1
// apart: registers).
template <typename T, typename AOf>
__device__ __forceinline__ void store_checkpoints(float (*bc)[2 * N][STEPS], float* __restrict__ checkpoints,
                                                  float bias, AOf a_of, const Lane<T>& lane, int sub_chunks) {
    float h[N];
#pragma unroll
    for (int n = 0; n < N; ++n) h[n] = 0.0f;
    float staged[STAGED];
    load_bc(staged, lane, 0);
    store_bc(bc[0], staged);
#if LOADS_AHEAD
    T next_x[STEPS], next_p[STEPS];  // the next sub-chunk's xc and pre, loaded one sub-chunk ahead
    if (sub_chunks > 1) load_xp(next_x, next_p, lane, 0);
#endif
    __syncthreads();
    for (int k = 0; k + 1 < sub_chunks; ++k) {
        const int buffer = k & 1;
        if (k + 2 < sub_chunks) load_bc(staged, lane, k + 1);
        float delta[STEPS], du[STEPS];
#if LOADS_AHEAD
#pragma unroll
        for (int s = 0; s < STEPS; ++s) {
            const float u = lane.live ? to_float(next_x[s]) : 0.0f;
            delta[s] = softplus(to_float(next_p[s]) + bias);
            du[s] = delta[s] * u;
        }
        if (k + 2 < sub_chunks) load_xp(next_x, next_p, lane, k + 1);
#else
#pragma unroll
        for (int s = 0; s < STEPS; ++s) {  // every step of these sub-chunks is a token
            const long long row = lane.row(lane.token(k * STEPS + s));
            const float u = lane.live ? to_float(lane.xc[row]) : 0.0f;
            delta[s] = softplus(to_float(lane.pre[row]) + bias);
            du[s] = delta[s] * u;
        }
#endif
#pragma unroll
        for (int n = 0; n < N; ++n) {
            float b[STEPS];
            read_steps(bc[buffer][n], b);
            const float a = a_of(n);
#pragma unroll
            for (int s = 0; s < STEPS; ++s) h[n] = fmaf(exp2f(delta[s] * a), h[n], du[s] * b[s]);
        }
        if (lane.live) {
#if DIET
            float* at = checkpoints + (long long)k * checkpoint_stride(lane.D);
#pragma unroll
            for (int n = 0; n < N; ++n) at[n * BLOCK_CHANNELS] = h[n];
#else
#pragma unroll
            for (int n = 0; n < N; ++n) checkpoints[((long long)k * N + n) * lane.D] = h[n];
#endif
        }
        if (k + 2 < sub_chunks) store_bc(bc[buffer ^ 1], staged);
        __syncthreads();
    }
}

// One sub-chunk's per-step inputs, and what the adjoint and the outputs need of them.
struct StepInputs {
    float u[STEPS], delta[STEPS], du[STEPS], gy[STEPS];
    float dz_factor[STEPS];  // dz = dz_factor * y
};

// Step s of a sub-chunk from its loaded values (u, z and g zero past the end and past D; p = pre + bias), for
// both designs' loads.
__device__ __forceinline__ void set_step(StepInputs& in, int s, bool real, float u, float p, float zz, float gg,
                                         float& dskip_sum) {
    const float sig_z = sigmoid(zz), delta = softplus(p);  // p is finite past the end too: no branch around it
    in.u[s] = u;
    in.delta[s] = real ? delta : 0.0f;
    in.du[s] = in.delta[s] * u;
    in.gy[s] = gg * zz * sig_z * 0.5f;
    in.dz_factor[s] = gg * 0.5f * sig_z * (1.0f + zz * (1.0f - sig_z));
    dskip_sum = fmaf(in.gy[s], u, dskip_sum);  // zero past the end and past D
}

// Steps past the end read the last token and zero what they read, so that every load is unconditional.
template <typename T>
__device__ __forceinline__ void load_steps(StepInputs& in, float bias, float& dskip_sum, const Lane<T>& lane, int k) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const int step = k * STEPS + s;
        const bool real = lane.live && step < lane.L;
        const int t = lane.token(min(step, lane.L - 1));
        const long long row = lane.row(t);
        const float u = real ? to_float(lane.xc[row]) : 0.0f;
        const float p = to_float(lane.pre[row]) + bias;
        const float zz = real ? to_float(lane.z[lane.z_row + t * lane.stride_zl]) : 0.0f;
        const float gg = real ? to_float(lane.g[(lane.b_row + t) * lane.D + lane.channel]) : 0.0f;
        set_step(in, s, real, u, p, zz, gg, dskip_sum);
    }
}

// Design 1: a sub-chunk's xc, pre, z and g as loaded (steps past the end read the last token), so that
// the loads are issued together, before load_steps_from turns them into StepInputs.
// W: what one load brings, T itself or (design 4) a pair of T (PairWord).
template <typename T, typename W = T>
struct RawSteps {
    W x[STEPS], p[STEPS], z[STEPS], g[STEPS];
};

template <typename T>
__device__ __forceinline__ void load_raw_steps(RawSteps<T>& raw, const Lane<T>& lane, int k) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const int t = lane.token(min(k * STEPS + s, lane.L - 1));
        const long long row = lane.row(t);
        raw.x[s] = lane.xc[row];
        raw.p[s] = lane.pre[row];
        raw.z[s] = lane.z[lane.z_row + t * lane.stride_zl];
        raw.g[s] = lane.g[(lane.b_row + t) * lane.D + lane.channel];
    }
}

// Design 3: a sub-chunk's xc, pre, z and g through pointers that move a step at a time in the direction's order
// (an IMAD.WIDE each; z's 64-bit stride: two adds), staying on the sequence's last token past its end, where
// Lane::row and the z and g offsets of designs 0 and 1 cost a 64-bit multiply per step and tensor. g's row is xc's
// less the direction's B L rows (g has no direction axis).
template <typename T, typename W>
__device__ __forceinline__ void load_raw_steps(RawSteps<T, W>& raw, const Lane<T>& lane, int k, long long first) {
    const int t = lane.token(k * STEPS);
    const T *x = lane.xc + first, *p = lane.pre + first, *g = lane.g + (first - lane.g_shift);
    const T* zz = lane.z + (lane.z_row + t * lane.stride_zl);
    const int last = lane.L - 1 - k * STEPS;  // the sub-chunk's last step in the sequence
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        raw.x[s] = load_as<W>(x), raw.p[s] = load_as<W>(p), raw.z[s] = load_as<W>(zz), raw.g[s] = load_as<W>(g);
        if (s + 1 < STEPS) {
            const bool on = s < last;
            const int row_step = on ? lane.row_step : 0;
            x += row_step, p += row_step, g += row_step, zz += on ? lane.z_step : 0;
        }
    }
}

// load_steps' arithmetic on loaded values: the same StepInputs.
template <typename T>
__device__ __forceinline__ void load_steps_from(StepInputs& in, const RawSteps<T>& raw, float bias, float& dskip_sum,
                                                const Lane<T>& lane, int k) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const bool real = lane.live && k * STEPS + s < lane.L;
        const float u = real ? to_float(raw.x[s]) : 0.0f;
        const float p = to_float(raw.p[s]) + bias;
        const float zz = real ? to_float(raw.z[s]) : 0.0f;
        const float gg = real ? to_float(raw.g[s]) : 0.0f;
        set_step(in, s, real, u, p, zz, gg, dskip_sum);
    }
}

// Per-step sums over the states that the outputs need.
struct StepSums {
    float y[STEPS];        // D u + sum_n C_n h_n
    float ddelta[STEPS];   // sum_n q_n a2_n (dL/d delta through the decays, times log2 e)
    float dh_b[STEPS];     // sum_n dh_n B_n
};

// Pass 2 for one state index n of sub-chunk k: recompute its STEPS states from the checkpoint h, run the
// adjoint back through them (carry: the adjoint entering from the later sub-chunk, times its first decay), and
// write the thread's dB and dC values of this state into its warp row. q = dh_s exp2(delta_s a2) h_{s-1} is
// the carry times the previous state: no difference of states, so no cancellation.
__device__ __forceinline__ void adjoint_state(const StepInputs& in, StepSums& sums, float& carry, float& da, float a,
                                              float h, const float* b_row, const float* c_row, float* warp_row) {
    float b[STEPS], c[STEPS], decay[STEPS], hs[STEPS + 1];  // hs[s + 1] is h_s, hs[0] the checkpoint
    read_steps(b_row, b);
    read_steps(c_row, c);
    hs[0] = h;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        decay[s] = exp2f(in.delta[s] * a);
        hs[s + 1] = fmaf(decay[s], hs[s], in.du[s] * b[s]);
        sums.y[s] = fmaf(c[s], hs[s + 1], sums.y[s]);
    }
    float db[STEPS], dc[STEPS];
#pragma unroll
    for (int s = STEPS - 1; s >= 0; --s) {
        const float dh = fmaf(c[s], in.gy[s], carry);
        carry = decay[s] * dh;
        const float q = carry * hs[s];
        sums.ddelta[s] = fmaf(q, a, sums.ddelta[s]);
        da = fmaf(q, in.delta[s], da);
        sums.dh_b[s] = fmaf(dh, b[s], sums.dh_b[s]);
        db[s] = dh * in.du[s];
        dc[s] = hs[s + 1] * in.gy[s];
    }
    write_values(warp_row, db);
    write_values(warp_row + STEPS * VALUE_STRIDE, dc);
}

// Design 3: pass 2's adjoint carry and dA sum of each state (adjoint_state's carry and da) in the thread's
// column of a [N][THREADS] shared array (a warp's accesses hit 32 banks), where designs 0 and 1 keep them in
// 2 N registers live through the whole pass. Each is read and written once per state and sub-chunk: an LDS
// and an STS beside ~40 instructions of arithmetic per token.
struct Column {
    float* top;  // row 0 of the thread's column
    __device__ float& operator[](int n) const { return top[n * THREADS]; }
};

// Design 3 parks dz_factor in shared memory while the states run: it is needed only after them (4 registers).
__device__ __forceinline__ void park(const Column& column, const float (&v)[STEPS]) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) column[s] = v[s];
}

__device__ __forceinline__ void unpark(const Column& column, float (&v)[STEPS]) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) v[s] = column[s];
}

// Where step s of a sub-chunk writes dz, dxc and ddt.
template <typename T>
struct StepOutputs {
    T *dz, *dxc, *ddt;
};

// Step s's gradients of one channel.
struct StepGrads {
    float dz, dxc, ddt;
};

__device__ __forceinline__ StepGrads step_grads(const StepInputs& in, const StepSums& sums, float skip, int s) {
    return {in.dz_factor[s] * sums.y[s], fmaf(in.delta[s], sums.dh_b[s], skip * in.gy[s]),
            (sums.ddelta[s] * LN2 + in.u[s] * sums.dh_b[s]) * softplus_slope(in.delta[s])};
}

// Step s's dz, dxc and ddt, written where out points; returns ddt (for the dt bias's sum).
template <typename T>
__device__ __forceinline__ float store_step(const StepInputs& in, const StepSums& sums, float skip, int s,
                                            const StepOutputs<T>& out) {
    const StepGrads g = step_grads(in, sums, skip, s);
    store(out.dz, g.dz);
    store(out.dxc, g.dxc);
    store(out.ddt, g.ddt);
    return g.ddt;
}

// Designs 0 and 1: the outputs of a sub-chunk's steps within the sequence (live channels only), each at Lane::row
// of its token.
template <typename T>
__device__ __forceinline__ void store_step_grads(const StepInputs& in, const StepSums& sums, float skip, float& dbias_sum,
                                                 const Lane<T>& lane, int k) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const long long row = lane.row(lane.token(k * STEPS + s));
        if (lane.live && k * STEPS + s < lane.L)
            dbias_sum += store_step(in, sums, skip, s, StepOutputs<T>{lane.dz + row, lane.dxc + row, lane.ddt + row});
    }
}

// Design 3, a live channel: the outputs of a sub-chunk's steps within the sequence through pointers that move a
// row per step (an IMAD.WIDE each, where a 64-bit row added to each tensor's base cost ~11 integer instructions per
// step). The pointers move whether or not the step stores: moved under the step's condition, ptxas copied them at
// every step (6 MOVs).
template <typename T>
__device__ __forceinline__ void store_sub_chunk(const StepInputs& in, const StepSums& sums, float skip,
                                                float& dbias_sum, const Lane<T>& lane, int k) {
    const long long first = lane.row(lane.token(k * STEPS));
    StepOutputs<T> out{lane.dz + first, lane.dxc + first, lane.ddt + first};
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        if (k * STEPS + s < lane.L) dbias_sum += store_step(in, sums, skip, s, out);
        out.dz += lane.row_step, out.dxc += lane.row_step, out.ddt += lane.row_step;
    }
}

#if PAIRS
// ---- design 4: two adjacent channels a thread (the file's header says why) --------------------------------------
// Design 3's loads, layouts and arithmetic, each thread running channels 2i and 2i + 1 of its block's BLOCK_CHANNELS
// side by side (channel 0 of a pair in a float2's x, 1 in its y). D must be even and z's and g's pairs aligned
// (cuda_scan.backward_pairs_fit).
template <typename T>
struct PairWord;  // a pair of adjacent values of T as one load or store moves them
template <>
struct PairWord<bf16_bits> { typedef unsigned int type; };
template <>
struct PairWord<f16_bits> { typedef unsigned int type; };
template <>
struct PairWord<float> { typedef float2 type; };

__device__ __forceinline__ float2 load_float2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ void store_float2(float* p, float x, float y) {
    *reinterpret_cast<float2*>(p) = make_float2(x, y);
}

// The tag's type says how the word holds its two values (channel 0 in the low half, as memory orders them).
__device__ __forceinline__ void unpack(unsigned int w, float (&v)[2], bf16_bits) {
    v[0] = __uint_as_float(w << 16), v[1] = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void unpack(unsigned int w, float (&v)[2], f16_bits) {
    v[0] = __nv_half2float((unsigned short)(w & 0xffffu)), v[1] = __nv_half2float((unsigned short)(w >> 16));
}
__device__ __forceinline__ void unpack(float2 w, float (&v)[2], float) { v[0] = w.x, v[1] = w.y; }

__device__ __forceinline__ void store_pair(bf16_bits* p, const float (&v)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800  // no bf16 conversion before sm_80: by integer arithmetic
    store(p, v[0]), store(p + 1, v[1]);
#else
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v[1]), "f"(v[0]));
    *reinterpret_cast<unsigned int*>(p) = r;
#endif
}
__device__ __forceinline__ void store_pair(f16_bits* p, const float (&v)[2]) {
    *reinterpret_cast<unsigned int*>(p) = (unsigned int)__nv_float2half_rn(v[0]) |
                                          ((unsigned int)__nv_float2half_rn(v[1]) << 16);
}
__device__ __forceinline__ void store_pair(float* p, const float (&v)[2]) { store_float2(p, v[0], v[1]); }

// A sub-chunk's step inputs of both channels from their loaded pairs (load_raw_steps with a pair word per load).
template <typename T>
__device__ __forceinline__ void load_pairs_from(StepInputs (&in)[2], const RawSteps<T, typename PairWord<T>::type>& raw,
                                                const float (&bias)[2], float (&dskip_sum)[2], const Lane<T>& lane,
                                                int k) {
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        const bool real = lane.live && k * STEPS + s < lane.L;
        float u[2], p[2], zz[2], gg[2];
        unpack(raw.x[s], u, T());
        unpack(raw.p[s], p, T());
        unpack(raw.z[s], zz, T());
        unpack(raw.g[s], gg, T());
#pragma unroll
        for (int c = 0; c < 2; ++c)
            set_step(in[c], s, real, real ? u[c] : 0.0f, p[c] + bias[c], real ? zz[c] : 0.0f, real ? gg[c] : 0.0f,
                     dskip_sum[c]);
    }
}

// adjoint_state for the thread's two channels (a, h, carry, da: channel 0 in x, 1 in y; both share the state's B
// and C), writing the sums of their dB and dC values into the warp's column.
__device__ __forceinline__ void adjoint_state_pairs(const StepInputs (&in)[2], StepSums (&sums)[2], float2& carry,
                                                    float2& da, float2 a, float2 h, const float* b_row,
                                                    const float* c_row, float* warp_row) {
    float b[STEPS], c[STEPS], decay[2][STEPS], hs[2][STEPS + 1];
    read_steps(b_row, b);
    read_steps(c_row, c);
    const float as[2] = {a.x, a.y};
    float cr[2] = {carry.x, carry.y}, das[2] = {da.x, da.y};
    hs[0][0] = h.x, hs[1][0] = h.y;
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            decay[ch][s] = exp2f(in[ch].delta[s] * as[ch]);
            hs[ch][s + 1] = fmaf(decay[ch][s], hs[ch][s], in[ch].du[s] * b[s]);
            sums[ch].y[s] = fmaf(c[s], hs[ch][s + 1], sums[ch].y[s]);
        }
    }
    float db[STEPS], dc[STEPS];
#pragma unroll
    for (int s = STEPS - 1; s >= 0; --s) {
        float dh[2];
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
            dh[ch] = fmaf(c[s], in[ch].gy[s], cr[ch]);
            cr[ch] = decay[ch][s] * dh[ch];
            const float q = cr[ch] * hs[ch][s];
            sums[ch].ddelta[s] = fmaf(q, as[ch], sums[ch].ddelta[s]);
            das[ch] = fmaf(q, in[ch].delta[s], das[ch]);
            sums[ch].dh_b[s] = fmaf(dh[ch], b[s], sums[ch].dh_b[s]);
        }
        db[s] = fmaf(dh[1], in[1].du[s], dh[0] * in[0].du[s]);
        dc[s] = fmaf(hs[1][s + 1], in[1].gy[s], hs[0][s + 1] * in[0].gy[s]);
    }
    carry = make_float2(cr[0], cr[1]), da = make_float2(das[0], das[1]);
    write_values(warp_row, db);
    write_values(warp_row + STEPS * VALUE_STRIDE, dc);
}

// store_sub_chunk for the thread's two channels: one store of a pair per tensor and step.
template <typename T>
__device__ __forceinline__ void store_sub_chunk_pairs(const StepInputs (&in)[2], const StepSums (&sums)[2],
                                                      const float (&skip)[2], float (&dbias_sum)[2],
                                                      const Lane<T>& lane, int k) {
    const long long first = lane.row(lane.token(k * STEPS));
    StepOutputs<T> out{lane.dz + first, lane.dxc + first, lane.ddt + first};
#pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        if (k * STEPS + s < lane.L) {
            float dz[2], dx[2], dt[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const StepGrads g = step_grads(in[c], sums[c], skip[c], s);
                dz[c] = g.dz, dx[c] = g.dxc, dt[c] = g.ddt;
                dbias_sum[c] += g.ddt;
            }
            store_pair(out.dz, dz), store_pair(out.dxc, dx), store_pair(out.ddt, dt);
        }
        out.dz += lane.row_step, out.dxc += lane.row_step, out.ddt += lane.row_step;
    }
}

// Design 4's kernel body: scan_bwd's, two channels a thread.
template <typename T>
__device__ __forceinline__ void scan_bwd_pairs(const T* __restrict__ xc, const T* __restrict__ z,
                                               const T* __restrict__ g, const float* __restrict__ dbl,
                                               const T* __restrict__ pre, const float* __restrict__ dt_bias,
                                               const float* __restrict__ a2, const float* __restrict__ dskip,
                                               T* __restrict__ dz, T* __restrict__ dxc, T* __restrict__ ddt,
                                               float* __restrict__ dbc, float* __restrict__ parts,
                                               float* __restrict__ checkpoint_base, int Bsz, int L, int D, int R,
                                               long long stride_zb, long long stride_zl) {
    extern __shared__ __align__(16) unsigned char dynamic_shared[];  // over 48 KB: the launch passes its size
    SharedRows& shared = *reinterpret_cast<SharedRows*>(dynamic_shared);
    const int seq = blockIdx.y;  // direction * Bsz + b
    const int d = blockIdx.x * BLOCK_CHANNELS + CH * threadIdx.x;  // the thread's first channel (D is even)
    const int dd = d < D ? d : 0;
    const Lane<T> lane = make_lane(xc, z, g, pre, dz, dxc, ddt, dbl, dbc, Bsz, L, D, R, stride_zb, stride_zl, seq, d);
    const int own = CH * threadIdx.x;  // the thread's first column of the block's BLOCK_CHANNELS
#pragma unroll
    for (int n = 0; n < N; ++n) {
        const float* a_row = a2 + (lane.direction * N + n) * D + dd;
        store_float2(&shared.a[n][own], a_row[0], a_row[1]);
    }
    float bias[2], skip[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
        bias[c] = lane.live ? dt_bias[lane.direction * D + dd + c] : 0.0f;
        skip[c] = dskip[lane.direction * D + dd + c];
    }
    const int sub_chunks = (L + STEPS - 1) / STEPS;
    float* checkpoints = checkpoint_base + (long long)seq * (sub_chunks - 1) * checkpoint_stride(D) +
                         blockIdx.x * N * BLOCK_CHANNELS + own;  // pass 1's kernel wrote them (scan_ckpt)

    float* const carry = &shared.carry[0][own];
    float* const da = &shared.da[0][own];
    float* const parked = &shared.dz_factor[0][own];
#pragma unroll
    for (int n = 0; n < N; ++n) {
        store_float2(carry + n * BLOCK_CHANNELS, 0.0f, 0.0f);
        store_float2(da + n * BLOCK_CHANNELS, 0.0f, 0.0f);
    }
    float dskip_sum[2] = {0.0f, 0.0f}, dbias_sum[2] = {0.0f, 0.0f};
    const int warp = threadIdx.x / 32;
    float* warp_row = &shared.warp_values[warp][0][threadIdx.x % 32];  // the thread's column
    float staged[STAGED];
    load_bc(staged, lane, sub_chunks - 1);
    store_bc(shared.bc[0], staged);
    __syncthreads();
    const float* h0 = checkpoints + (long long)(sub_chunks - 2) * checkpoint_stride(D);  // sub-chunk k's, k - 1
#if PREFETCH
    if (sub_chunks > 1)
        prefetch_sub_chunk(lane, sub_chunks > 2 ? h0 - checkpoint_stride(D) - own : nullptr, sub_chunks - 2);
#endif
    for (int k = sub_chunks - 1, buffer = 0; k >= 0; --k, buffer ^= 1) {
        if (k > 0) load_bc(staged, lane, k - 1);
        StepInputs in[2];
        {
            RawSteps<T, typename PairWord<T>::type> raw;
            load_raw_steps(raw, lane, k, lane.row(lane.token(k * STEPS)));
            load_pairs_from(in, raw, bias, dskip_sum, lane, k);
        }
        // dz_factor parked while the states run, as design 3 does
#pragma unroll
        for (int s = 0; s < STEPS; ++s)
            store_float2(parked + s * BLOCK_CHANNELS, in[0].dz_factor[s], in[1].dz_factor[s]);
        StepSums sums[2];
#pragma unroll
        for (int c = 0; c < 2; ++c)
#pragma unroll
            for (int s = 0; s < STEPS; ++s)
                sums[c].y[s] = skip[c] * in[c].u[s], sums[c].ddelta[s] = 0.0f, sums[c].dh_b[s] = 0.0f;
        const bool from_checkpoint = k > 0 && lane.live;  // the first sub-chunk starts from zero
        float2 h_ahead[AHEAD];
#pragma unroll
        for (int n = 0; n < AHEAD; ++n)
            h_ahead[n] = from_checkpoint ? load_float2(h0 + n * BLOCK_CHANNELS) : make_float2(0.0f, 0.0f);
        float* warp_sums = shared.warp_sums[buffer][warp];
#pragma unroll
        for (int n = 0; n < N; ++n) {
            const float2 h = h_ahead[n % AHEAD];
            if (n + AHEAD < N)
                h_ahead[n % AHEAD] =
                    from_checkpoint ? load_float2(h0 + (n + AHEAD) * BLOCK_CHANNELS) : make_float2(0.0f, 0.0f);
            float2 cr = load_float2(carry + n * BLOCK_CHANNELS), dn = load_float2(da + n * BLOCK_CHANNELS);
            adjoint_state_pairs(in, sums, cr, dn, load_float2(&shared.a[n][own]), h, shared.bc[buffer][n],
                                shared.bc[buffer][N + n], warp_row + (n % FLUSH) * 2 * STEPS * VALUE_STRIDE);
            store_float2(carry + n * BLOCK_CHANNELS, cr.x, cr.y), store_float2(da + n * BLOCK_CHANNELS, dn.x, dn.y);
            if (n % FLUSH == FLUSH - 1) {
                const float sum = warp_column_sum(shared.warp_values[warp]);
                if (threadIdx.x % LANES_PER_VALUE == 0)
                    warp_sums[n / FLUSH * WARP_VALUES + threadIdx.x % 32 / LANES_PER_VALUE] = sum;
            }
        }
#pragma unroll
        for (int s = 0; s < STEPS; ++s) {
            const float2 f = load_float2(parked + s * BLOCK_CHANNELS);
            in[0].dz_factor[s] = f.x, in[1].dz_factor[s] = f.y;
        }
        if (lane.live) store_sub_chunk_pairs(in, sums, skip, dbias_sum, lane, k);
        if (k > 0) store_bc(shared.bc[buffer ^ 1], staged);
        __syncthreads();
        add_block_sums(shared.warp_sums[buffer], lane, k);
        h0 -= checkpoint_stride(D);
#if PREFETCH
        if (k > 1) prefetch_sub_chunk(lane, k > 2 ? h0 - checkpoint_stride(D) - own : nullptr, k - 2);
#endif
    }
    if (lane.live) {  // the sequence's N + 2 rows of parts, as scan_bwd writes them, both channels at once
        const long long seq_d = (long long)seq * D;
        float* part = parts + (seq_d * N + d) + 2 * seq_d;
        const float* da_column = da;
#pragma unroll
        for (int n = 0; n < N; ++n) {
            const float2 v = load_float2(da_column + n * BLOCK_CHANNELS);
            store_float2(part + (long long)n * D, v.x, v.y);
        }
        store_float2(part + (long long)N * D, dskip_sum[0], dskip_sum[1]);
        store_float2(part + (long long)(N + 1) * D, dbias_sum[0], dbias_sum[1]);
    }
}

// Pass 1 of design 4 as a kernel of its own: the checkpoints of the block's sequence and BLOCK_CHANNELS channels, a
// thread per channel (pass 2's blocks hold two a thread), its A log2(e) in registers, B staged through shared memory.
template <typename T>
__device__ __forceinline__ void scan_ckpt(const T* __restrict__ xc, const T* __restrict__ pre,
                                          const float* __restrict__ dbl, const float* __restrict__ dt_bias,
                                          const float* __restrict__ a2, float* __restrict__ checkpoint_base, int Bsz,
                                          int L, int D, int R) {
    __shared__ __align__(16) float bc[2][2 * N][STEPS];
    const int seq = blockIdx.y;
    const int d = blockIdx.x * BLOCK_CHANNELS + threadIdx.x;
    const int dd = d < D ? d : 0;
    const Lane<T> lane = make_lane<T>(xc, nullptr, nullptr, pre, nullptr, nullptr, nullptr, dbl, nullptr, Bsz, L, D,
                                      R, 0, 0, seq, d);
    float a[N];
#pragma unroll
    for (int n = 0; n < N; ++n) a[n] = a2[(lane.direction * N + n) * D + dd];
    const float bias = lane.live ? dt_bias[lane.direction * D + dd] : 0.0f;
    const int sub_chunks = (L + STEPS - 1) / STEPS;
    float* checkpoints = checkpoint_base + (long long)seq * (sub_chunks - 1) * checkpoint_stride(D) +
                         blockIdx.x * N * BLOCK_CHANNELS + threadIdx.x;
    store_checkpoints(bc, checkpoints, bias, [&](int n) { return a[n]; }, lane, sub_chunks);
}

#define REIDCAM_SCAN_CKPT_KERNEL(NAME, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(BLOCK_CHANNELS, REIDCAM_CKPT_MIN_BLOCKS)                         \
        NAME(const T* xc, const T* pre, const float* dbl, const float* dt_bias, const float* a2,                   \
             float* checkpoints, int Bsz, int L, int D, int R) {                                                   \
        scan_ckpt<T>(xc, pre, dbl, dt_bias, a2, checkpoints, Bsz, L, D, R);                                        \
    }
REIDCAM_SCAN_CKPT_KERNEL(bimamba_scan_ckpt_bf16, bf16_bits)
REIDCAM_SCAN_CKPT_KERNEL(bimamba_scan_ckpt_f16, f16_bits)
REIDCAM_SCAN_CKPT_KERNEL(bimamba_scan_ckpt_f32, float)
#endif

template <typename T>
__device__ __forceinline__ void scan_bwd(const T* __restrict__ xc, const T* __restrict__ z, const T* __restrict__ g,
                                         const float* __restrict__ dbl, const T* __restrict__ pre,
                                         const float* __restrict__ dt_bias, const float* __restrict__ a2,
                                         const float* __restrict__ dskip, T* __restrict__ dz, T* __restrict__ dxc,
                                         T* __restrict__ ddt, float* __restrict__ dbc, float* __restrict__ parts,
                                         float* __restrict__ checkpoint_base, int Bsz, int L, int D, int R,
                                         long long stride_zb, long long stride_zl) {
#if DIET
    extern __shared__ __align__(16) unsigned char dynamic_shared[];  // over 48 KB: the launch passes its size
    SharedRows& shared = *reinterpret_cast<SharedRows*>(dynamic_shared);
#else
    __shared__ __align__(16) SharedRows shared;
#endif
    const int seq = blockIdx.y;  // direction * Bsz + b
    const int d = blockIdx.x * THREADS + threadIdx.x;
    const int dd = d < D ? d : 0;
    const Lane<T> lane = make_lane(xc, z, g, pre, dz, dxc, ddt, dbl, dbc, Bsz, L, D, R, stride_zb, stride_zl, seq, d);
#pragma unroll
    for (int n = 0; n < N; ++n) shared.a[n][threadIdx.x] = a2[(lane.direction * N + n) * D + dd];
    const float bias = lane.live ? dt_bias[lane.direction * D + dd] : 0.0f;
    const float skip = dskip[lane.direction * D + dd];
    const int sub_chunks = (L + STEPS - 1) / STEPS;
#if DIET
    float* checkpoints = checkpoint_base + (long long)seq * (sub_chunks - 1) * checkpoint_stride(D) +
                         blockIdx.x * N * THREADS + threadIdx.x;
#else
    float* checkpoints = checkpoint_base + (long long)seq * (sub_chunks - 1) * N * D + dd;
#endif

    store_checkpoints(shared.bc, checkpoints, bias, [&](int n) { return shared.a[n][threadIdx.x]; }, lane, sub_chunks);

#if DIET
    const Column carry{&shared.carry[0][threadIdx.x]}, da{&shared.da[0][threadIdx.x]};
    const Column parked_dz_factor{&shared.dz_factor[0][threadIdx.x]};
#else
    float carry[N], da[N];
#endif
#pragma unroll
    for (int n = 0; n < N; ++n) carry[n] = 0.0f, da[n] = 0.0f;
    float dskip_sum = 0.0f, dbias_sum = 0.0f;
    const int warp = threadIdx.x / 32;
#if DIET
    float* warp_row = &shared.warp_values[warp][0][threadIdx.x % 32];  // the thread's column
#else
    float* warp_row = shared.warp_rows[warp][threadIdx.x % 32];
#endif
    float staged[STAGED];
    load_bc(staged, lane, sub_chunks - 1);
    store_bc(shared.bc[0], staged);
    __syncthreads();
#if DIET
    // sub-chunk k's checkpoint, k - 1, moved back a checkpoint per sub-chunk (read only where k > 0): ptxas
    // rebuilt the base and multiplied (k - 1) each sub-chunk (~25 instructions) where it is kept in 2 registers
    const float* h0 = checkpoints + (long long)(sub_chunks - 2) * checkpoint_stride(D);
#endif
#if PREFETCH
    if (sub_chunks > 1)  // the second sub-chunk from the end; the loop prefetches those after it
        prefetch_sub_chunk(lane, sub_chunks > 2 ? h0 - checkpoint_stride(D) - threadIdx.x : nullptr, sub_chunks - 2);
#endif
    for (int k = sub_chunks - 1, buffer = 0; k >= 0; --k, buffer ^= 1) {
        if (k > 0) load_bc(staged, lane, k - 1);
        StepInputs in;
#if DIET
        RawSteps<T> raw;
        load_raw_steps(raw, lane, k, lane.row(lane.token(k * STEPS)));
        load_steps_from(in, raw, bias, dskip_sum, lane, k);
#elif LOADS_AHEAD
        RawSteps<T> raw;
        load_raw_steps(raw, lane, k);
        load_steps_from(in, raw, bias, dskip_sum, lane, k);
#else
        load_steps(in, bias, dskip_sum, lane, k);
#endif
#if DIET
        park(parked_dz_factor, in.dz_factor);
#endif
        StepSums sums;
#pragma unroll
        for (int s = 0; s < STEPS; ++s) sums.y[s] = skip * in.u[s], sums.ddelta[s] = 0.0f, sums.dh_b[s] = 0.0f;
        const bool from_checkpoint = k > 0 && lane.live;  // the first sub-chunk starts from zero
#if DIET
        float h_ahead[AHEAD];
#pragma unroll
        for (int n = 0; n < AHEAD; ++n) h_ahead[n] = from_checkpoint ? h0[n * THREADS] : 0.0f;
#else
        const float* h0 = checkpoints + (long long)(from_checkpoint ? k - 1 : 0) * N * D;
#endif
#if LOADS_AHEAD && !DIET
        float h_ahead[AHEAD];  // checkpoints AHEAD states ahead: states n and n + AHEAD share a register
#pragma unroll
        for (int n = 0; n < AHEAD; ++n) h_ahead[n] = from_checkpoint ? h0[(long long)n * D] : 0.0f;
#endif
        float* warp_sums = shared.warp_sums[buffer][warp];
#pragma unroll
        for (int n = 0; n < N; ++n) {
#if DIET
            const float h = h_ahead[n % AHEAD];
            if (n + AHEAD < N) h_ahead[n % AHEAD] = from_checkpoint ? h0[(n + AHEAD) * THREADS] : 0.0f;
#elif LOADS_AHEAD
            const float h = h_ahead[n % AHEAD];
            if (n + AHEAD < N) h_ahead[n % AHEAD] = from_checkpoint ? h0[(long long)(n + AHEAD) * D] : 0.0f;
#else
            const float h = from_checkpoint ? h0[(long long)n * D] : 0.0f;
#endif
            adjoint_state(in, sums, carry[n], da[n], shared.a[n][threadIdx.x], h, shared.bc[buffer][n],
                          shared.bc[buffer][N + n], warp_row + (n % FLUSH) * 2 * STEPS * VALUE_STRIDE);
            if (n % FLUSH == FLUSH - 1) {
#if DIET
                const float sum = warp_column_sum(shared.warp_values[warp]);
#else
                const float sum = warp_transpose_sum(shared.warp_rows[warp]);
#endif
                if (threadIdx.x % LANES_PER_VALUE == 0)
                    warp_sums[n / FLUSH * WARP_VALUES + threadIdx.x % 32 / LANES_PER_VALUE] = sum;
            }
        }
#if DIET
        unpark(parked_dz_factor, in.dz_factor);
#endif
#if DIET
        if (lane.live) store_sub_chunk(in, sums, skip, dbias_sum, lane, k);
#else
        store_step_grads(in, sums, skip, dbias_sum, lane, k);
#endif
        if (k > 0) store_bc(shared.bc[buffer ^ 1], staged);
        __syncthreads();
        add_block_sums(shared.warp_sums[buffer], lane, k);
#if DIET
        h0 -= checkpoint_stride(D);
#endif
#if PREFETCH
        // two sub-chunks ahead, from here: at the loop's end the fewest values are live (at its start the call
        // spilled 16 B at 80 registers)
        if (k > 1) prefetch_sub_chunk(lane, k > 2 ? h0 - checkpoint_stride(D) - threadIdx.x : nullptr, k - 2);
#endif
    }
    if (lane.live) {  // the sequence's N + 2 rows of parts: dA's N, then dD's and the dt bias's
        // (seq (N + 2) D + d, summed in this order: as one product, design 3's bf16 build spilled 12 B at 80 registers)
        const long long seq_d = (long long)seq * D;
        float* part = parts + (seq_d * N + d) + 2 * seq_d;
#pragma unroll
        for (int n = 0; n < N; ++n) part[(long long)n * D] = da[n];
        part[(long long)N * D] = dskip_sum;
        part[(long long)(N + 1) * D] = dbias_sum;
    }
}

// xc, dz, dxc, ddt (2, B, L, D) and pre (2, B*L, D) in the compute dtype, z (B, L, D; strides given) in it too,
// g (B, L, D) contiguous in it; dbl (2, B*L, R + 2N), dt_bias (2, D), a2 (2, N, D) = A log2(e), dskip (2, D)
// fp32; dbc (2, B*L, 2N) fp32, zeroed by the caller; parts (2, B, N + 2, D) fp32, per (direction, sequence) the
// partial sums of dA (rows 0 .. N-1, row n: state n), dD (row N) and the dt bias (row N + 1); checkpoints (2, B,
// ceil(L / STEPS) - 1, N, D) fp32 scratch (designs 3 and 4: (2, B, ceil(L / STEPS) - 1, ceil(D / BLOCK_CHANNELS), N,
// BLOCK_CHANNELS), cuda_scan.checkpoint_shape), written by pass 1 (design 4: by scan_ckpt's kernel, launched first).
// Grid (ceil(D / BLOCK_CHANNELS), 2 B).
#if PAIRS
#define SCAN_BWD_BODY scan_bwd_pairs
#else
#define SCAN_BWD_BODY scan_bwd
#endif
#define REIDCAM_SCAN_BWD_KERNEL(NAME, T)                                                                             \
    extern "C" __global__ void __launch_bounds__(THREADS, REIDCAM_MIN_BLOCKS)                                      \
        NAME(const T* xc, const T* z, const T* g, const float* dbl, const T* pre, const float* dt_bias,            \
             const float* a2, const float* dskip, T* dz, T* dxc, T* ddt, float* dbc, float* parts,                 \
             float* checkpoints, int Bsz, int L, int D, int R, long long stride_zb, long long stride_zl) {         \
        SCAN_BWD_BODY<T>(xc, z, g, dbl, pre, dt_bias, a2, dskip, dz, dxc, ddt, dbc, parts, checkpoints, Bsz, L, D, \
                         R, stride_zb, stride_zl);                                                                 \
    }

REIDCAM_SCAN_BWD_KERNEL(bimamba_scan_bwd_bf16, bf16_bits)
#if REIDCAM_BWD_DESIGN != 3  // design 3's fp16 build spills 100 B at its 80 registers: fp16 runs design 1
REIDCAM_SCAN_BWD_KERNEL(bimamba_scan_bwd_f16, f16_bits)
#endif
REIDCAM_SCAN_BWD_KERNEL(bimamba_scan_bwd_f32, float)
