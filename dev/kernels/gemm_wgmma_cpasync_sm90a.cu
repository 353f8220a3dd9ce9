// Kernel lab (dev/README.md): the cp.async wgmma matmul, the first Hopper kernel of this project,
// kept out of the library for comparison with the TMA kernel that replaced it (kernels/matmul_sm90a.cu).
// Compiled by tools/ptx.py into dev/ptx/; validated and timed by dev/gemm_wgmma_cpasync.rs.
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
#include "wgmma.cuh"

#define WG_STAGES 4
#define WG_AHEAD 2  // stages loaded ahead of the one being multiplied

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
