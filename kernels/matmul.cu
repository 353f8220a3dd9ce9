// Matrix multiply C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major, the twins of
// ops::matmul::gemm_cpu. With beta == 0, C is never read (a poisoned C is fully overwritten).
//
// gemm_f32: fp32 on the CUDA cores, 64x64 tiles through shared memory, 4x4 outputs per thread.
//   The exact path (fp32 products and sums).
// gemm_bf16_{nn,nt,tn,tt}: bf16 operands on the tensor cores (mma.sync m16n8k16, fp32
//   accumulation). 128x128x32 block tiles, 8 warps of 64x32, a 4-stage cp.async pipeline, operands
//   fed to the tensor cores with ldmatrix (.trans where the operand's contiguous dimension is not
//   k), rows padded by 16 bytes so ldmatrix is free of bank conflicts. n/t: whether A (first
//   letter) and B (second) are transposed. Where an operand's contiguous dimension is not a
//   multiple of 8 elements (or a base is not 16-byte aligned), `vec = 0` loads it element by
//   element instead of with 16-byte asynchronous copies. Split-K (grid z > 1): where the tiles
//   alone would leave most multiprocessors idle (the LSTM's per-step products: 64 rows), each
//   z-slice of blocks multiplies one range of k into a workspace, and splitk_reduce adds the
//   slices in a fixed order (deterministic).
#include "common.cuh"

#define F_BM 64
#define F_BN 64
#define F_BK 16

KERNEL void __launch_bounds__(256) gemm_f32(int M, int N, int K, float alpha, const float* __restrict__ A, int ta,
                                            const float* __restrict__ B, int tb, float beta, float* __restrict__ C) {
    __shared__ float As[F_BK][F_BM + 4];
    __shared__ float Bs[F_BK][F_BN + 4];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * F_BM, n0 = blockIdx.x * F_BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < K; k0 += F_BK) {
        for (int e = threadIdx.x; e < F_BM * F_BK; e += 256) {
            int mm, kk;
            if (ta) { mm = e % F_BM; kk = e / F_BM; } else { kk = e % F_BK; mm = e / F_BK; }
            int gm = m0 + mm, gk = k0 + kk;
            float v = 0.f;
            if (gm < M && gk < K) v = ta ? A[(i64)gk * M + gm] : A[(i64)gm * K + gk];
            As[kk][mm] = v;
        }
        for (int e = threadIdx.x; e < F_BN * F_BK; e += 256) {
            int nn, kk;
            if (tb) { kk = e % F_BK; nn = e / F_BK; } else { nn = e % F_BN; kk = e / F_BN; }
            int gn = n0 + nn, gk = k0 + kk;
            float v = 0.f;
            if (gn < N && gk < K) v = tb ? B[(i64)gn * K + gk] : B[(i64)gk * N + gn];
            Bs[kk][nn] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < F_BK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int gm = m0 + ty + 16 * i;
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int gn = n0 + tx + 16 * j;
            if (gn >= N) continue;
            float* c = C + (i64)gm * N + gn;
            *c = beta == 0.f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
        }
    }
}

#define BM 128
#define BN 128
#define BK 32
#define STAGES 4
#define PAD 8
// Elements of one operand's tile in one stage (the larger of the two layouts).
#define TILE_ELEMS (BM * (BK + PAD))

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ void ldmatrix_x4(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(s));
}

// Loads one operand tile into shared memory. The tile has `rows` rows of `cols` elements in the
// operand's own layout (contiguous along cols); global row r0 + i, column c0 + j, leading
// dimension ld, bounds R x Cn. Shared row stride cols + PAD.
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile(bf16* sm, const bf16* __restrict__ g, int ld, int R, int Cn, int r0, int c0,
                                          bool vec) {
    constexpr int CHUNKS = ROWS * COLS / 8;
    constexpr int PER_ROW = COLS / 8;
    if (vec) {
#pragma unroll
        for (int c = threadIdx.x; c < CHUNKS; c += 256) {
            int i = c / PER_ROW, j = (c % PER_ROW) * 8;
            int gr = r0 + i, gc = c0 + j;
            bool ok = gr < R && gc < Cn;
            const bf16* src = ok ? g + (i64)gr * ld + gc : g;
            cp_async16(sm + i * (COLS + PAD) + j, src, ok);
        }
    } else {
        for (int c = threadIdx.x; c < CHUNKS; c += 256) {
            int i = c / PER_ROW, j = (c % PER_ROW) * 8;
            int gr = r0 + i;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                int gc = c0 + j + e;
                bf16 v = __float2bfloat16(0.f);
                if (gr < R && gc < Cn) v = g[(i64)gr * ld + gc];
                sm[i * (COLS + PAD) + j + e] = v;
            }
        }
    }
}

// Block (x, y, z) computes the 128 x 128 tile (y, x) of the product over k in [z * kchunk,
// min(K, (z + 1) * kchunk)) into C + z * M * N: with gridDim.z == 1 and kchunk == K, the whole
// product into C; with more, split-K partial products into a workspace that splitk_reduce sums.
template <bool TA, bool TB>
__device__ __forceinline__ void gemm_bf16_body(int M, int N, int K, float alpha, const bf16* __restrict__ A,
                                               const bf16* __restrict__ B, float beta, float* __restrict__ C, int vec_a,
                                               int vec_b, int kchunk) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* As = reinterpret_cast<bf16*>(smem_raw);
    bf16* Bs = As + STAGES * TILE_ELEMS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp % 2, wn = warp / 2;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int k_begin = blockIdx.z * kchunk, k_end = min(K, k_begin + kchunk);  // kchunk % BK == 0
    C += (i64)blockIdx.z * M * N;
    // A not transposed: [M, K], tile BM x BK; transposed: stored [K, M], tile BK x BM.
    // B transposed: stored [N, K], tile BN x BK; not transposed: stored [K, N], tile BK x BN.
    auto load_stage = [&](int stage, int k0) {
        bf16* a = As + stage * TILE_ELEMS;
        bf16* b = Bs + stage * TILE_ELEMS;
        if (TA) load_tile<BK, BM>(a, A, M, k_end, M, k0, m0, vec_a);
        else load_tile<BM, BK>(a, A, K, M, k_end, m0, k0, vec_a);
        if (TB) load_tile<BN, BK>(b, B, K, N, k_end, n0, k0, vec_b);
        else load_tile<BK, BN>(b, B, N, k_end, N, k0, n0, vec_b);
    };
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    const int kt0 = k_begin / BK;
    const int ktiles = max(0, (k_end + BK - 1) / BK - kt0);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, (kt0 + s) * BK);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int nk = kt + STAGES - 1;
        if (nk < ktiles) load_stage(nk % STAGES, (kt0 + nk) * BK);
        cp_async_commit();
        const bf16* a = As + (kt % STAGES) * TILE_ELEMS;
        const bf16* b = Bs + (kt % STAGES) * TILE_ELEMS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned af[4][4], bfr[4][2];
            const int r = lane % 8, mi = lane / 8;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int mb = wm * 64 + i * 16;
                if (TA) {
                    const bf16* p = a + (kk + (mi / 2) * 8 + r) * (BM + PAD) + mb + (mi % 2) * 8;
                    ldmatrix_x4_trans(af[i][0], af[i][1], af[i][2], af[i][3], p);
                } else {
                    const bf16* p = a + (mb + lane % 16) * (BK + PAD) + kk + (lane / 16) * 8;
                    ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3], p);
                }
            }
#pragma unroll
            for (int jp = 0; jp < 2; jp++) {
                int nb = wn * 32 + jp * 16;
                if (TB) {
                    const bf16* p = b + (nb + (mi / 2) * 8 + r) * (BK + PAD) + kk + (mi % 2) * 8;
                    ldmatrix_x4(bfr[2 * jp][0], bfr[2 * jp][1], bfr[2 * jp + 1][0], bfr[2 * jp + 1][1], p);
                } else {
                    const bf16* p = b + (kk + (mi % 2) * 8 + r) * (BN + PAD) + nb + (mi / 2) * 8;
                    ldmatrix_x4_trans(bfr[2 * jp][0], bfr[2 * jp][1], bfr[2 * jp + 1][0], bfr[2 * jp + 1][1], p);
                }
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_bf16(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
        }
    }
    cp_async_wait<0>();
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int row = m0 + wm * 64 + i * 16 + lane / 4;
            int col = n0 + wn * 32 + j * 8 + (lane % 4) * 2;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int rr = row + (e / 2) * 8, cc = col + (e % 2);
                if (rr < M && cc < N) {
                    float* c = C + (i64)rr * N + cc;
                    *c = beta == 0.f ? alpha * acc[i][j][e] : alpha * acc[i][j][e] + beta * *c;
                }
            }
        }
    }
}

#define GEMM_BF16(name, ta, tb)                                                                                     \
    KERNEL void __launch_bounds__(256) name(int M, int N, int K, float alpha, const bf16* __restrict__ A,          \
                                            const bf16* __restrict__ B, float beta, float* __restrict__ C,         \
                                            int vec_a, int vec_b, int kchunk) {                                   \
        gemm_bf16_body<ta, tb>(M, N, K, alpha, A, B, beta, C, vec_a, vec_b, kchunk);                              \
    }
GEMM_BF16(gemm_bf16_nn, false, false)
GEMM_BF16(gemm_bf16_nt, false, true)
GEMM_BF16(gemm_bf16_tn, true, false)
GEMM_BF16(gemm_bf16_tt, true, true)

// C = alpha * (ws[0] + ws[1] + ... + ws[splits - 1]) + beta * C over mn elements, the partial
// products summed in split order (deterministic). With beta == 0, C is never read.
KERNEL void splitk_reduce(const float* __restrict__ ws, int splits, i64 mn, float alpha, float beta, float* __restrict__ C) {
    FOR_EACH(i, mn) {
        float s = 0.f;
        for (int z = 0; z < splits; z++) s += ws[(i64)z * mn + i];
        C[i] = beta == 0.f ? alpha * s : alpha * s + beta * C[i];
    }
}
