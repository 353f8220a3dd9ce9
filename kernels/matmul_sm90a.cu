// Hopper (sm_90a) matrix multiply on the asynchronous warpgroup tensor-core instructions (`wgmma`),
// compiled for compute_90a by tools/ptx.py (any file named *_sm90a.cu) and loaded only on devices of
// compute capability 9.0; elsewhere, and for shapes it does not take, ops fall back to the mma.sync
// kernels of matmul.cu.
//
// The cp.async wgmma kernel that came first (gemm_wgmma_b{128,256}: no mbarrier, no warp
// specialisation) is kept for comparison in the kernel lab, dev/kernels/gemm_wgmma_cpasync_sm90a.cu
// (dev/README.md); the shared pieces are in wgmma.cuh.
//
// gemm_wgmma_tma: C[M,N] = alpha * A @ Bt^T + beta * C (A [M,K], Bt [N,K], both K-contiguous; any M, N,
//   K tail; K % 8 == 0; with beta == 0 C is never read), with the operands brought in by the bulk tensor
//   copy engine (TMA: one thread issues a 128 x 64 and a 256 x 64 box per stage, which the engine
//   writes in the same 128-byte swizzled layout) and warp specialisation: warpgroup 0 produces
//   (one thread, registers lowered to 40 with setmaxnreg), warpgroups 1 and 2 consume (registers
//   raised to 232), 4 stages ordered by mbarriers: full[s] (the copies of stage s have landed:
//   one arrival with the byte count, completed by the engine) and empty[s] (all 256 consumer
//   threads are done with stage s). Every mbarrier wait gives up after about 10 s of clock and
//   traps, so a pipeline mistake is a kernel error, not a hang. Block 384 threads, tile 128 x 256.
//   Variants _nn, _tn, _tt take A stored [K, M] and/or B stored [K, N] ("MN-major") as they lie:
//   64 x 64 boxes, read with wgmma's transpose flag (16-bit types only), so that no orientation
//   needs a transposed copy (rows of M or N a multiple of 8; the launcher transposes otherwise).
//   Verified on an H100 (2026-11-27): layout probes at every orientation, f64-reference tests.
// transpose_bf16, transpose_f32_to_bf16: out [C,R] = in [R,C]^T as bf16 (32 x 32 tiles).
#include "wgmma.cuh"

// ---- TMA + warp-specialised variant -------------------------------------------------------------

// A CUtensorMap (128 bytes, built on the host by cuTensorMapEncodeTiled), passed by value.
struct __align__(64) TmaMap {
    u64 v[16];
};

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits for the completion of the barrier's phase of this parity; traps after ~10 s of clock.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done = 0;
    long long start = clock64();
    while (true) {
        asm volatile(
            "{\n"
            ".reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n"
            "}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (done) return;
        if (clock64() - start > 20000000000ll) __trap();
    }
}
// A 2-D box of the tensor map at (c0 innermost, c1) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TmaMap* map, int c0, int c1, unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

#define TMA_BN 256
#define TMA_STAGES 4

// The TMA kernel's body. A_MN / B_MN: the operand is MN-major in global memory (A stored [K, M],
// B stored [K, N], the M or N index contiguous), brought in as 64 x 64 boxes (2 for A's 128 rows,
// 4 for B's 256) and read by wgmma with its transpose flag; else K-major (A [M, K], B as [N, K]),
// one box of 128 (or 256) rows x 64 k. Either way a stage holds the same bytes.
template <bool A_MN, bool B_MN>
__device__ __forceinline__ void gemm_wgmma_tma_body(const TmaMap& mapA, const TmaMap& mapB, int M, int N, int K, float alpha,
                                                    float beta, float* __restrict__ C) {
    constexpr int A_BYTES = WG_BM * WG_BK * 2;
    constexpr int B_BYTES = TMA_BN * WG_BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    constexpr int BOX = 64 * WG_BK * 2;  // one 64 x 64 box of an MN-major operand
    constexpr int NACC = TMA_BN / 2;
    const unsigned raw = (unsigned)__cvta_generic_to_shared(wg_smem);
    const unsigned base = (raw + 1023u) & ~1023u;
    // The barriers after the stages: full[0..S), then empty[0..S), 8 bytes each.
    const unsigned bars = base + TMA_STAGES * STAGE_BYTES;
    const int m0 = blockIdx.y * WG_BM, n0 = blockIdx.x * TMA_BN;
    const int ktiles = (K + WG_BK - 1) / WG_BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < TMA_STAGES; s++) {
            mbar_init(bars + 8 * s, 1);
            mbar_init(bars + 8 * (TMA_STAGES + s), 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();
    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < ktiles; kt++) {
                const int s = kt % TMA_STAGES;
                // Stage s was last used by tile kt - S: wait until every consumer released it.
                if (kt >= TMA_STAGES) mbar_wait(bars + 8 * (TMA_STAGES + s), ((kt / TMA_STAGES) - 1) & 1);
                const unsigned st = base + s * STAGE_BYTES, full = bars + 8 * s;
                mbar_arrive_expect_tx(full, STAGE_BYTES);
                if (A_MN) {
#pragma unroll
                    for (int b = 0; b < WG_BM / 64; b++) tma_load_2d(st + b * BOX, &mapA, m0 + 64 * b, kt * WG_BK, full);
                } else {
                    tma_load_2d(st, &mapA, kt * WG_BK, m0, full);
                }
                if (B_MN) {
#pragma unroll
                    for (int b = 0; b < TMA_BN / 64; b++) tma_load_2d(st + A_BYTES + b * BOX, &mapB, n0 + 64 * b, kt * WG_BK, full);
                } else {
                    tma_load_2d(st + A_BYTES, &mapB, kt * WG_BK, n0, full);
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        const int cw = wg - 1;
        float d[NACC];
#pragma unroll
        for (int i = 0; i < NACC; i++) d[i] = 0.f;
        for (int kt = 0; kt < ktiles; kt++) {
            const int s = kt % TMA_STAGES;
            mbar_wait(bars + 8 * s, (kt / TMA_STAGES) & 1);
            // This consumer's 64 rows of A: 64 rows of 128 bytes (K-major), or one box (MN-major).
            const unsigned sa = base + s * STAGE_BYTES + cw * (64 * 128);
            const unsigned sb = base + s * STAGE_BYTES + A_BYTES;
#pragma unroll
            for (int i = 0; i < NACC; i++) fence_operand(d[i]);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < WG_BK / 16; kk++) {
                const u64 da = A_MN ? desc_mnmajor_sw128(sa + kk * 2048) : desc_kmajor_sw128(sa + kk * 32);
                const u64 db = B_MN ? desc_mnmajor_sw128(sb + kk * 2048) : desc_kmajor_sw128(sb + kk * 32);
                wgmma_m64n256k16<A_MN ? 1 : 0, B_MN ? 1 : 0>(d, da, db);
            }
            wgmma_commit();
            wgmma_wait<1>();
#pragma unroll
            for (int i = 0; i < NACC; i++) fence_operand(d[i]);
            // The multiplies of tile kt - 1 are done: its stage may be refilled.
            if (kt > 0) mbar_arrive(bars + 8 * (TMA_STAGES + (kt - 1) % TMA_STAGES));
        }
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NACC; i++) fence_operand(d[i]);
        store_tile<TMA_BN>(d, M, N, alpha, beta, C, m0 + cw * 64, n0, threadIdx.x % 128);
    }
}

// C = alpha * op(A) @ op(B) + beta * C by orientation, named as the mma.sync kernels are (N: the
// operand as stored, T: its transpose): _nt both K-major (the launcher's layout for every
// orientation when MN-major loads are off: CODISTILL_WGMMA_MN=0), _nn B MN-major, _tn both
// MN-major, _tt A MN-major.
#define GEMM_WGMMA_TMA(NAME, A_MN, B_MN)                                                                                \
    KERNEL void __launch_bounds__(384, 1) NAME(const __grid_constant__ TmaMap mapA, const __grid_constant__ TmaMap mapB, \
                                               int M, int N, int K, float alpha, float beta, float* __restrict__ C) {    \
        gemm_wgmma_tma_body<A_MN, B_MN>(mapA, mapB, M, N, K, alpha, beta, C);                                            \
    }
GEMM_WGMMA_TMA(gemm_wgmma_tma, false, false)
GEMM_WGMMA_TMA(gemm_wgmma_tma_nn, false, true)
GEMM_WGMMA_TMA(gemm_wgmma_tma_tn, true, true)
GEMM_WGMMA_TMA(gemm_wgmma_tma_tt, true, false)

// The persistent variant (issue 28; MatmulKernel::WgmmaTmaPersistent, opt-in until it has passed on
// a GPU): min(tiles, SMs) blocks, each looping over output tiles t = blockIdx.x, + gridDim.x, ...
// (128 x 256 tiles in row-major order of the output), with the same producer, consumers and stage
// ring as above, its phases counted over every k-tile the block has run (`it`), so that the
// producer loads the next tile's first stages while the consumers still store the last one's
// accumulators (the epilogue overlapped with the next tile's loads). Every stage the consumers
// take is released exactly once: the one before, after the next multiply's wait; a tile's last,
// after the tile's final wait.
template <bool A_MN, bool B_MN>
__device__ __forceinline__ void gemm_wgmma_tma_persistent_body(const TmaMap& mapA, const TmaMap& mapB, int M, int N, int K,
                                                               float alpha, float beta, float* __restrict__ C) {
    constexpr int A_BYTES = WG_BM * WG_BK * 2;
    constexpr int B_BYTES = TMA_BN * WG_BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    constexpr int BOX = 64 * WG_BK * 2;
    constexpr int NACC = TMA_BN / 2;
    const unsigned raw = (unsigned)__cvta_generic_to_shared(wg_smem);
    const unsigned base = (raw + 1023u) & ~1023u;
    const unsigned bars = base + TMA_STAGES * STAGE_BYTES;
    const int ktiles = (K + WG_BK - 1) / WG_BK;
    const int tiles_n = (N + TMA_BN - 1) / TMA_BN, tiles = ((M + WG_BM - 1) / WG_BM) * tiles_n;
    if (threadIdx.x == 0) {
        for (int s = 0; s < TMA_STAGES; s++) {
            mbar_init(bars + 8 * s, 1);
            mbar_init(bars + 8 * (TMA_STAGES + s), 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();
    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 0) {
            int it = 0;
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int m0 = (tile / tiles_n) * WG_BM, n0 = (tile % tiles_n) * TMA_BN;
                for (int kt = 0; kt < ktiles; kt++, it++) {
                    const int s = it % TMA_STAGES;
                    if (it >= TMA_STAGES) mbar_wait(bars + 8 * (TMA_STAGES + s), ((it / TMA_STAGES) - 1) & 1);
                    const unsigned st = base + s * STAGE_BYTES, full = bars + 8 * s;
                    mbar_arrive_expect_tx(full, STAGE_BYTES);
                    if (A_MN) {
#pragma unroll
                        for (int b = 0; b < WG_BM / 64; b++) tma_load_2d(st + b * BOX, &mapA, m0 + 64 * b, kt * WG_BK, full);
                    } else {
                        tma_load_2d(st, &mapA, kt * WG_BK, m0, full);
                    }
                    if (B_MN) {
#pragma unroll
                        for (int b = 0; b < TMA_BN / 64; b++) tma_load_2d(st + A_BYTES + b * BOX, &mapB, n0 + 64 * b, kt * WG_BK, full);
                    } else {
                        tma_load_2d(st + A_BYTES, &mapB, kt * WG_BK, n0, full);
                    }
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        const int cw = wg - 1;
        int it = 0;
        for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            const int m0 = (tile / tiles_n) * WG_BM, n0 = (tile % tiles_n) * TMA_BN;
            float d[NACC];
#pragma unroll
            for (int i = 0; i < NACC; i++) d[i] = 0.f;
            for (int kt = 0; kt < ktiles; kt++, it++) {
                const int s = it % TMA_STAGES;
                mbar_wait(bars + 8 * s, (it / TMA_STAGES) & 1);
                const unsigned sa = base + s * STAGE_BYTES + cw * (64 * 128);
                const unsigned sb = base + s * STAGE_BYTES + A_BYTES;
#pragma unroll
                for (int i = 0; i < NACC; i++) fence_operand(d[i]);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < WG_BK / 16; kk++) {
                    const u64 da = A_MN ? desc_mnmajor_sw128(sa + kk * 2048) : desc_kmajor_sw128(sa + kk * 32);
                    const u64 db = B_MN ? desc_mnmajor_sw128(sb + kk * 2048) : desc_kmajor_sw128(sb + kk * 32);
                    wgmma_m64n256k16<A_MN ? 1 : 0, B_MN ? 1 : 0>(d, da, db);
                }
                wgmma_commit();
                wgmma_wait<1>();
#pragma unroll
                for (int i = 0; i < NACC; i++) fence_operand(d[i]);
                // The multiplies of the k-tile before (of this output tile) are done: release it.
                if (kt > 0) mbar_arrive(bars + 8 * (TMA_STAGES + (it - 1) % TMA_STAGES));
            }
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < NACC; i++) fence_operand(d[i]);
            // This tile's last stage is free; the producer may already be filling the next ones.
            if (ktiles > 0) mbar_arrive(bars + 8 * (TMA_STAGES + (it - 1) % TMA_STAGES));
            store_tile<TMA_BN>(d, M, N, alpha, beta, C, m0 + cw * 64, n0, threadIdx.x % 128);
        }
    }
}

#define GEMM_WGMMA_TMA_PERSISTENT(NAME, A_MN, B_MN)                                                                     \
    KERNEL void __launch_bounds__(384, 1) NAME(const __grid_constant__ TmaMap mapA, const __grid_constant__ TmaMap mapB, \
                                               int M, int N, int K, float alpha, float beta, float* __restrict__ C) {    \
        gemm_wgmma_tma_persistent_body<A_MN, B_MN>(mapA, mapB, M, N, K, alpha, beta, C);                                 \
    }
GEMM_WGMMA_TMA_PERSISTENT(gemm_wgmma_tma_persistent, false, false)
GEMM_WGMMA_TMA_PERSISTENT(gemm_wgmma_tma_persistent_nn, false, true)
GEMM_WGMMA_TMA_PERSISTENT(gemm_wgmma_tma_persistent_tn, true, true)
GEMM_WGMMA_TMA_PERSISTENT(gemm_wgmma_tma_persistent_tt, true, false)

// out [C, R] = in [R, C]^T, rounded to bf16 (round to nearest even, as f32_to_bf16). Block 32 x 8
// threads, a 32 x 32 tile through shared memory (padded a word per row: no bank conflicts).
template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ void transpose_body(int R, int Cn, const T* __restrict__ in, bf16* __restrict__ out) {
    __shared__ float tile[32][33];
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
#pragma unroll
    for (int i = ty; i < 32; i += 8) {
        int r = r0 + i, c = c0 + tx;
        if (r < R && c < Cn) tile[i][tx] = to_f<T>(in[(i64)r * Cn + c]);
    }
    __syncthreads();
#pragma unroll
    for (int i = ty; i < 32; i += 8) {
        int c = c0 + i, r = r0 + tx;
        if (c < Cn && r < R) out[(i64)c * R + r] = __float2bfloat16_rn(tile[tx][i]);
    }
}

KERNEL void __launch_bounds__(256) transpose_bf16(int R, int Cn, const bf16* __restrict__ in, bf16* __restrict__ out) {
    transpose_body<bf16>(R, Cn, in, out);
}

KERNEL void __launch_bounds__(256) transpose_f32_to_bf16(int R, int Cn, const float* __restrict__ in,
                                                          bf16* __restrict__ out) {
    transpose_body<float>(R, Cn, in, out);
}
