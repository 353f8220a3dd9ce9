// Hopper (sm_90a) matrix multiply on the asynchronous warpgroup tensor-core instructions (`wgmma`),
// compiled for compute_90a by tools/ptx.py (any file named *_sm90a.cu) and loaded only on devices of
// compute capability 9.0; elsewhere, and for shapes it does not take, ops fall back to the mma.sync
// kernels of matmul.cu.
//
// gemm_wgmma_b{128,256}: C[M,N] = alpha * A @ Bt^T + beta * C, with A [M,K] and Bt [N,K] both
//   K-contiguous ("K-major", the one layout `wgmma` reads from shared memory without a transpose
//   flag); the launcher makes that layout for other orientations with transpose_bf16 (or converts
//   f32 straight into it). Requires K % 8 == 0 and 16-byte aligned A and Bt (16-byte asynchronous
//   copies); any M, N, K tail is handled (rows past M or N and k past K are zero-filled in shared
//   memory, stores are guarded). With beta == 0, C is never read.
//   Block tile 128 x BN x 64, two warpgroups (256 threads), each computing 64 x BN with
//   m64nBNk16 instructions; operands in shared memory in the 128-byte swizzled layout (row r's
//   16-byte chunk c at chunk c ^ (r % 8) of the row), filled by cp.async, 4 stages: 2 in flight,
//   one being multiplied, one whose multiply may still run (one wgmma group kept in flight).
//   No mbarrier and no warp specialisation: every wait is a cp.async group or a block barrier, so a
//   mistake can give a wrong result (the tests compare with the CPU) but not a hang.
// gemm_wgmma_tma: the same product and contract, with the operands brought in by the bulk tensor
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
#include "common.cuh"

typedef __nv_bfloat16 bf16;

#define WG_BM 128
#define WG_BK 64
#define WG_STAGES 4
#define WG_AHEAD 2  // stages loaded ahead of the one being multiplied

// Dynamic shared memory of every kernel here (the launcher asks for 1 KiB more than the stages
// need, so that tiles can start on 1024-byte boundaries, as the swizzle requires).
extern __shared__ __align__(1024) unsigned char wg_smem[];

// TA, TB: the instruction's transpose immediates (0: the operand is K-major in shared memory; 1:
// MN-major, which wgmma takes for 16-bit types).
template <int TA = 0, int TB = 0>
__device__ __forceinline__ void wgmma_m64n256k16(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, %131, %132;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
}

__device__ __forceinline__ void wgmma_m64n128k16(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keeps the compiler from moving reads or writes of an accumulator across a wgmma wait.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Shared-memory matrix descriptor: K-major operand, 128-byte swizzle, rows of 64 bf16 (128 bytes),
// 8-row groups 1024 bytes apart (stride byte offset); the leading byte offset is unused in this
// mode (1 by convention). The start address must lie in a 1024-byte aligned tile; advancing k by 16
// elements inside the tile adds 32 bytes to it.
__device__ __forceinline__ u64 desc_kmajor_sw128(unsigned smem_addr) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)1 << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

// Shared-memory matrix descriptor: MN-major operand, 128-byte swizzle, as the tensor copy engine
// writes a box of 64 (M or N, contiguous) x 64 (k) elements: row r (k = r) of 128 bytes at r * 128,
// its 16-byte chunk c at c ^ (r % 8). The canonical layout (CUTLASS, Major::MN, B128, in 16-byte
// units): ((8, n), (8, k)) : ((1, LBO), (8, SBO)): 64 M/N elements contiguous, the next 64 one box
// further (leading byte offset 8192, the box size), 8 k rows in one 1024-byte swizzle atom, the
// next 8 k rows 1024 bytes further (stride byte offset). Advancing k by 16 adds 2048 bytes.
__device__ __forceinline__ u64 desc_mnmajor_sw128(unsigned smem_addr) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)(8192 >> 4) << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

// ROWS rows x 64 k of a K-major operand (global row r0 + i, k0 + j; leading dimension K; R rows)
// into the swizzled tile at `tile` (a shared address, 1024-byte aligned).
template <int ROWS>
__device__ __forceinline__ void wg_load(unsigned tile, const bf16* __restrict__ g, int R, int K, int r0, int k0) {
#pragma unroll
    for (int c = threadIdx.x; c < ROWS * 8; c += 256) {
        int i = c >> 3, ch = c & 7;
        int gr = r0 + i, gk = k0 + ch * 8;
        bool ok = gr < R && gk < K;
        const bf16* src = ok ? g + (i64)gr * K + gk : g;
        cp_async16_shared(tile + i * 128 + ((ch ^ (i & 7)) << 4), src, ok);
    }
}

template <int BN>
__device__ __forceinline__ void wgmma_tile(float* d, u64 da, u64 db);
template <>
__device__ __forceinline__ void wgmma_tile<256>(float* d, u64 da, u64 db) { wgmma_m64n256k16(d, da, db); }
template <>
__device__ __forceinline__ void wgmma_tile<128>(float* d, u64 da, u64 db) { wgmma_m64n128k16(d, da, db); }

// Writes one warpgroup's 64 x BN accumulators (rows r0.., columns n0..) as alpha * acc + beta * C.
// Accumulator layout (as mma.sync's m16n8 C fragment, repeated over BN/8): warp w of the
// warpgroup holds rows 16w .. 16w + 15; for each 8-column block j, d[4j], d[4j+1] are row lane/4,
// columns 8j + 2(lane%4) + {0,1}, and d[4j+2], d[4j+3] the same 8 rows below. `t`: the thread's
// index in its warpgroup.
template <int BN>
__device__ __forceinline__ void store_tile(const float* d, int M, int N, float alpha, float beta, float* __restrict__ C,
                                           int r0, int n0, int t) {
    const int w = t / 32, lane = t % 32;
    const int row = r0 + w * 16 + lane / 4;
    const bool pair = (N % 2) == 0;  // with N even, two adjacent outputs are one 8-byte store
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = n0 + j * 8 + (lane % 4) * 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = row + h * 8;
            if (r >= M) continue;
            float v0 = alpha * d[4 * j + 2 * h], v1 = alpha * d[4 * j + 2 * h + 1];
            float* c = C + (i64)r * N + col;
            if (pair && col + 1 < N) {
                if (beta != 0.f) {
                    float2 old = *reinterpret_cast<float2*>(c);
                    v0 += beta * old.x;
                    v1 += beta * old.y;
                }
                *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
            } else {
                if (col < N) c[0] = beta == 0.f ? v0 : v0 + beta * c[0];
                if (col + 1 < N) c[1] = beta == 0.f ? v1 : v1 + beta * c[1];
            }
        }
    }
}

template <int BN>
__device__ __forceinline__ void gemm_wgmma_body(int M, int N, int K, float alpha, const bf16* __restrict__ A,
                                                const bf16* __restrict__ Bt, float beta, float* __restrict__ C) {
    constexpr int A_BYTES = WG_BM * WG_BK * 2;
    constexpr int B_BYTES = BN * WG_BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    constexpr int NACC = BN / 2;  // 64 x BN accumulators over 128 threads
    // The swizzle is a function of address bits 4-9: tiles start on 1024-byte boundaries.
    const unsigned raw = (unsigned)__cvta_generic_to_shared(wg_smem);
    const unsigned base = (raw + 1023u) & ~1023u;
    const int wg = threadIdx.x / 128;
    const int m0 = blockIdx.y * WG_BM, n0 = blockIdx.x * BN;
    const int ktiles = (K + WG_BK - 1) / WG_BK;

    float d[NACC];
#pragma unroll
    for (int i = 0; i < NACC; i++) d[i] = 0.f;

#pragma unroll
    for (int s = 0; s < WG_AHEAD; s++) {
        if (s < ktiles) {
            unsigned st = base + s * STAGE_BYTES;
            wg_load<WG_BM>(st, A, M, K, m0, s * WG_BK);
            wg_load<BN>(st + A_BYTES, Bt, N, K, n0, s * WG_BK);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; kt++) {
        // This thread's copies of stage kt are done; make them visible to the tensor cores (the
        // async proxy), then to the whole block. After the barrier every warpgroup has also
        // finished the multiplies of stage kt - 2 (each waited for them at the end of kt - 1).
        cp_async_wait<WG_AHEAD - 1>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        int nk = kt + WG_AHEAD;
        if (nk < ktiles) {
            unsigned st = base + (nk % WG_STAGES) * STAGE_BYTES;  // the slot of stage kt - 2
            wg_load<WG_BM>(st, A, M, K, m0, nk * WG_BK);
            wg_load<BN>(st + A_BYTES, Bt, N, K, n0, nk * WG_BK);
        }
        cp_async_commit();
        const unsigned sa = base + (kt % WG_STAGES) * STAGE_BYTES + wg * (64 * 128);
        const unsigned sb = base + (kt % WG_STAGES) * STAGE_BYTES + A_BYTES;
#pragma unroll
        for (int i = 0; i < NACC; i++) fence_operand(d[i]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < WG_BK / 16; kk++) {
            wgmma_tile<BN>(d, desc_kmajor_sw128(sa + kk * 32), desc_kmajor_sw128(sb + kk * 32));
        }
        wgmma_commit();
        wgmma_wait<1>();
#pragma unroll
        for (int i = 0; i < NACC; i++) fence_operand(d[i]);
    }
    wgmma_wait<0>();
    cp_async_wait<0>();
#pragma unroll
    for (int i = 0; i < NACC; i++) fence_operand(d[i]);

    store_tile<BN>(d, M, N, alpha, beta, C, m0 + wg * 64, n0, threadIdx.x % 128);
}

KERNEL void __launch_bounds__(256, 1) gemm_wgmma_b256(int M, int N, int K, float alpha, const bf16* __restrict__ A,
                                                       const bf16* __restrict__ Bt, float beta, float* __restrict__ C) {
    gemm_wgmma_body<256>(M, N, K, alpha, A, Bt, beta, C);
}

KERNEL void __launch_bounds__(256, 1) gemm_wgmma_b128(int M, int N, int K, float alpha, const bf16* __restrict__ A,
                                                       const bf16* __restrict__ Bt, float beta, float* __restrict__ C) {
    gemm_wgmma_body<128>(M, N, K, alpha, A, Bt, beta, C);
}

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
