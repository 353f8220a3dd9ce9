// Fused LSTM cell, the twins of ops::lstm::cell_forward_cpu / cell_backward_cpu. One thread per
// (batch row, hidden unit); each reads its four gate pre-activations and writes the activations
// back in place, so a step is one pass over gates, c_prev, c and h. Where the next product runs in
// bf16, the kernels also write its operand rounded (h_t for h_t W_hh, dgates_t for dgates_t
// W_hh^T) to an optional second output (null: none), which saves a conversion launch per step.
#include "common.cuh"

KERNEL void lstm_cell_fwd(float* __restrict__ gates, const float* __restrict__ c_prev, float* __restrict__ c,
                          float* __restrict__ h, __nv_bfloat16* __restrict__ h_bf16, int batch, int hidden) {
    FOR_EACH(k, (i64)batch * hidden) {
        i64 b = k / hidden, j = k % hidden;
        float* g = gates + b * 4 * hidden;
        float i = sigmoid_f(g[j]);
        float f = sigmoid_f(g[hidden + j]);
        float gg = tanhf(g[2 * hidden + j]);
        float o = sigmoid_f(g[3 * hidden + j]);
        g[j] = i;
        g[hidden + j] = f;
        g[2 * hidden + j] = gg;
        g[3 * hidden + j] = o;
        float cv = f * c_prev[k] + i * gg;
        c[k] = cv;
        float hv = o * tanhf(cv);
        h[k] = hv;
        if (h_bf16) h_bf16[k] = __float2bfloat16_rn(hv);
    }
}

// dc holds the gradient reaching c_t on entry and the gradient reaching c_{t-1} on exit.
KERNEL void lstm_cell_bwd(const float* __restrict__ act, const float* __restrict__ c_prev, const float* __restrict__ c,
                          const float* __restrict__ dh, float* __restrict__ dc, float* __restrict__ dgates,
                          __nv_bfloat16* __restrict__ dg_bf16, int batch, int hidden) {
    FOR_EACH(k, (i64)batch * hidden) {
        i64 b = k / hidden, j = k % hidden;
        const float* a = act + b * 4 * hidden;
        float* d = dgates + b * 4 * hidden;
        float i = a[j], f = a[hidden + j], g = a[2 * hidden + j], o = a[3 * hidden + j];
        float tc = tanhf(c[k]);
        float dct = dc[k] + dh[k] * o * (1.f - tc * tc);
        float di = dct * g * i * (1.f - i), df = dct * c_prev[k] * f * (1.f - f);
        float dg = dct * i * (1.f - g * g), dO = dh[k] * tc * o * (1.f - o);
        d[j] = di;
        d[hidden + j] = df;
        d[2 * hidden + j] = dg;
        d[3 * hidden + j] = dO;
        if (dg_bf16) {
            __nv_bfloat16* e = dg_bf16 + b * 4 * hidden;
            e[j] = __float2bfloat16_rn(di);
            e[hidden + j] = __float2bfloat16_rn(df);
            e[2 * hidden + j] = __float2bfloat16_rn(dg);
            e[3 * hidden + j] = __float2bfloat16_rn(dO);
        }
        dc[k] = dct * f;
    }
}

// ---- Persistent layer (Persistent RNNs, Diamos et al. 2016) -------------------------------------
//
// One cooperative launch runs a whole window of T steps of one layer; block b owns the hidden units
// j0 = b U .. j0 + U - 1 (gridDim.x U == H, U even) and keeps its slice of W_hh in shared memory (bf16)
// for all steps; the grid meets at a barrier once per step. The same arithmetic as the step-by-step
// layer in bf16 mode (ops::lstm::cuda::forward / backward): products on bf16 operands (W_hh and the
// recurrent operand rounded to bf16, fp32 accumulation), cells in fp32 as lstm_cell_fwd/_bwd; only
// the products' summation order differs. Each product tile is a 16-row slice of the batch on one
// warp, k split over the warps where the batch has fewer 16-row slices than the block has warps;
// partial sums meet in shared memory in a fixed order (results do not depend on timing).
// Operands written by other blocks in the previous step (the rounded h or dgates) are read with
// ld.global.cg (L2, never a stale L1 line). The barrier traps after ~2^35 clocks (~15 s) rather than
// hang: a block that never arrives (a grid larger than the GPU holds at once, which the cooperative
// launch refuses anyway) is a kernel error.

#define PL_THREADS 256
#define PL_WARPS 8
#define PL_MAX_NT 8  // n8 tiles per warp at most (U <= 16 forward: 4 U gate columns)
#define PL_KU 8      // k-steps whose operands are loaded together

__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");  // a generic address
    return v;
}

// Every block of the grid arrives, then all go on: `target` is the number of arrivals so far,
// this one included, over the whole grid (the counter is zeroed before the launch).
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        const long long t0 = clock64();
        while (ld_acquire_gpu(counter) < target) {
            if (clock64() - t0 > (1ll << 35)) __trap();
        }
        __threadfence();
    }
    __syncthreads();
}

// Two adjacent bf16 of a row written by another block (k even, so the pair is 4-byte aligned).
__device__ __forceinline__ unsigned ldcg_pair(const __nv_bfloat16* p) { return __ldcg(reinterpret_cast<const unsigned*>(p)); }

// part[ks][r][n] = sum over k in this warp's range of A[r][k] * Ws[n][k] for the rows r of 16-row
// tile mt: A [rows, K] bf16 in global memory (row stride K), Ws [ncols][stride] bf16 in shared
// memory (K-major per column: Ws[n][k] is B[k][n]); work items (mt, ks) spread over the warps.
__device__ __forceinline__ void pl_product(const __nv_bfloat16* __restrict__ A, int rows, int K, const __nv_bfloat16* ws,
                                           int stride, int ncols, float* part, int ks_count) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int mtiles = (rows + 15) / 16, nt = ncols / 8;
    const int kchunk = ((K + 15) / 16 + ks_count - 1) / ks_count * 16;
    for (int item = warp; item < mtiles * ks_count; item += PL_WARPS) {
        const int mt = item % mtiles, ks = item / mtiles;
        const int k_lo = ks * kchunk, k_hi = min(K, k_lo + kchunk);
        float acc[PL_MAX_NT][4];
#pragma unroll
        for (int n = 0; n < PL_MAX_NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
        const int r0 = mt * 16 + g, r1 = r0 + 8;
        const __nv_bfloat16* a0p = A + (i64)r0 * K;
        const __nv_bfloat16* a1p = A + (i64)r1 * K;
        // PL_KU k-steps at a time: their A fragments loaded first (L2 reads in flight together),
        // then multiplied.
        for (int kc = k_lo; kc < k_hi; kc += 16 * PL_KU) {
            unsigned a[PL_KU][4];
#pragma unroll
            for (int s = 0; s < PL_KU; s++) {
                const int ka = kc + 16 * s + 2 * t4, kb = ka + 8;
                const bool in = kc + 16 * s < k_hi;
                a[s][0] = (in && r0 < rows && ka < K) ? ldcg_pair(a0p + ka) : 0u;
                a[s][1] = (in && r1 < rows && ka < K) ? ldcg_pair(a1p + ka) : 0u;
                a[s][2] = (in && r0 < rows && kb < K) ? ldcg_pair(a0p + kb) : 0u;
                a[s][3] = (in && r1 < rows && kb < K) ? ldcg_pair(a1p + kb) : 0u;
            }
#pragma unroll
            for (int s = 0; s < PL_KU; s++) {
                if (kc + 16 * s >= k_hi) break;
                const int ka = kc + 16 * s + 2 * t4, kb = ka + 8;
#pragma unroll
                for (int n = 0; n < PL_MAX_NT; n++) {
                    if (n < nt) {
                        const __nv_bfloat16* w = ws + (n * 8 + g) * stride;
                        mma_bf16(acc[n], a[s], *reinterpret_cast<const unsigned*>(w + ka), *reinterpret_cast<const unsigned*>(w + kb));
                    }
                }
            }
        }
        float* p = part + (i64)ks * rows * ncols;
#pragma unroll
        for (int n = 0; n < PL_MAX_NT; n++) {
            if (n < nt) {
                const int col = n * 8 + 2 * t4;
                if (r0 < rows) {
                    p[r0 * ncols + col] = acc[n][0];
                    p[r0 * ncols + col + 1] = acc[n][1];
                }
                if (r1 < rows) {
                    p[r1 * ncols + col] = acc[n][2];
                    p[r1 * ncols + col + 1] = acc[n][3];
                }
            }
        }
    }
    // Items a warp had none of leave their partial sums unwritten: ks_count items per row tile
    // always exist, so every (ks, row, column) is written by exactly one warp.
}

// Forward. act [T, B, 4H]: x W_ih + b on entry, the gate activations (i, f, g, o) on exit, as
// lstm_cell_fwd leaves them; whh [H, 4H] bf16; c_all [T + 1, B, H] with c_0 in its first B H;
// y [T, B, H] the outputs; hb [2, B, H] bf16 scratch with h_0 rounded in its first B H; counter
// zeroed. Shared memory: the slice Ws [4U][S] (S = H rounded up to 16, plus 8: no bank conflicts;
// column n = q U + u is gate q of unit j0 + u), then the partial sums [ks][B][4U] fp32.
KERNEL void __launch_bounds__(PL_THREADS, 1)
    lstm_persistent_fwd(float* __restrict__ act, const __nv_bfloat16* __restrict__ whh, float* __restrict__ c_all,
                        float* __restrict__ y, __nv_bfloat16* __restrict__ hb, unsigned* __restrict__ counter, int T, int B,
                        int H, int U, int ks_count) {
    extern __shared__ __align__(16) unsigned char pl_smem[];
    const int S = (H + 15) / 16 * 16 + 8, ncols = 4 * U, j0 = blockIdx.x * U;
    __nv_bfloat16* ws = reinterpret_cast<__nv_bfloat16*>(pl_smem);
    float* part = reinterpret_cast<float*>(pl_smem + (size_t)ncols * S * 2);
    for (int i = threadIdx.x; i < ncols * S; i += PL_THREADS) {
        const int n = i % ncols, k = i / ncols;
        const int col = (n / U) * H + j0 + n % U;
        ws[n * S + k] = k < H ? whh[(i64)k * 4 * H + col] : __float2bfloat16_rn(0.f);
    }
    __syncthreads();
    const i64 BH = (i64)B * H, G = 4 * (i64)H;
    for (int t = 0; t < T; t++) {
        pl_product(hb + (t & 1) * BH, B, H, ws, S, ncols, part, ks_count);
        __syncthreads();
        float* a = act + (i64)t * B * G;
        for (int idx = threadIdx.x; idx < B * U; idx += PL_THREADS) {
            const int b = idx / U, u = idx % U, j = j0 + u;
            float pre[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                float s = a[b * G + q * H + j];
                for (int ks = 0; ks < ks_count; ks++) s += part[((i64)ks * B + b) * ncols + q * U + u];
                pre[q] = s;
            }
            const float i = sigmoid_f(pre[0]), f = sigmoid_f(pre[1]), gg = tanhf(pre[2]), o = sigmoid_f(pre[3]);
            a[b * G + j] = i;
            a[b * G + H + j] = f;
            a[b * G + 2 * H + j] = gg;
            a[b * G + 3 * H + j] = o;
            const i64 k = (i64)b * H + j;
            const float cv = f * c_all[t * BH + k] + i * gg;
            c_all[(t + 1) * BH + k] = cv;
            const float hv = o * tanhf(cv);
            y[t * BH + k] = hv;
            hb[((t + 1) & 1) * BH + k] = __float2bfloat16_rn(hv);
        }
        if (t + 1 < T) grid_barrier(counter, (unsigned)(t + 1) * gridDim.x);
    }
}

// Backward. act, c_all as the forward left them; dy [T, B, H]; whh [H, 4H] bf16; dh, dc [B, H]:
// the gradients reaching h_T and c_T on entry (zeros for none), those reaching h_0 and c_0 on
// exit; dgates [T, B, 4H] written; dgb [2, B, 4H] bf16 scratch; counter zeroed. Shared memory: the
// rows of W_hh of this block's units, Wr [U8][S] (U8 = U rounded up to 8, rows past U zero;
// S = 4H rounded up to 16, plus 8), then the partial sums [ks][B][U8] fp32.
KERNEL void __launch_bounds__(PL_THREADS, 1)
    lstm_persistent_bwd(const float* __restrict__ act, const float* __restrict__ c_all, const float* __restrict__ dy,
                        const __nv_bfloat16* __restrict__ whh, float* __restrict__ dh, float* __restrict__ dc,
                        float* __restrict__ dgates, __nv_bfloat16* __restrict__ dgb, unsigned* __restrict__ counter, int T,
                        int B, int H, int U, int ks_count) {
    extern __shared__ __align__(16) unsigned char pl_smem[];
    const int G = 4 * H, S = (G + 15) / 16 * 16 + 8, U8 = (U + 7) / 8 * 8, j0 = blockIdx.x * U;
    __nv_bfloat16* wr = reinterpret_cast<__nv_bfloat16*>(pl_smem);
    float* part = reinterpret_cast<float*>(pl_smem + (size_t)U8 * S * 2);
    for (int i = threadIdx.x; i < U8 * S; i += PL_THREADS) {
        const int u = i / S, g = i % S;
        wr[i] = (u < U && g < G) ? whh[(i64)(j0 + u) * G + g] : __float2bfloat16_rn(0.f);
    }
    __syncthreads();
    const i64 BH = (i64)B * H, BG = (i64)B * G;
    for (int t = T - 1; t >= 0; t--) {
        const float* a = act + t * BG;
        float* d = dgates + t * BG;
        __nv_bfloat16* e = dgb + (t & 1) * BG;
        for (int idx = threadIdx.x; idx < B * U; idx += PL_THREADS) {
            const int b = idx / U, u = idx % U, j = j0 + u;
            const i64 k = (i64)b * H + j, r = (i64)b * G;
            const float i = a[r + j], f = a[r + H + j], g = a[r + 2 * H + j], o = a[r + 3 * H + j];
            const float dhv = dh[k] + dy[t * BH + k];
            const float tc = tanhf(c_all[(t + 1) * BH + k]);
            const float dct = dc[k] + dhv * o * (1.f - tc * tc);
            const float di = dct * g * i * (1.f - i), df = dct * c_all[t * BH + k] * f * (1.f - f);
            const float dg = dct * i * (1.f - g * g), dO = dhv * tc * o * (1.f - o);
            d[r + j] = di;
            d[r + H + j] = df;
            d[r + 2 * H + j] = dg;
            d[r + 3 * H + j] = dO;
            e[r + j] = __float2bfloat16_rn(di);
            e[r + H + j] = __float2bfloat16_rn(df);
            e[r + 2 * H + j] = __float2bfloat16_rn(dg);
            e[r + 3 * H + j] = __float2bfloat16_rn(dO);
            dc[k] = dct * f;
        }
        grid_barrier(counter, (unsigned)(T - t) * gridDim.x);
        // dh_{t-1} of this block's units = dgates_t W_hh^T, on every block's dgates_t.
        pl_product(e, B, G, wr, S, U8, part, ks_count);
        __syncthreads();
        for (int idx = threadIdx.x; idx < B * U; idx += PL_THREADS) {
            const int b = idx / U, u = idx % U;
            float s = 0.f;
            for (int ks = 0; ks < ks_count; ks++) s += part[((i64)ks * B + b) * U8 + u];
            dh[(i64)b * H + j0 + u] = s;
        }
        __syncthreads();
    }
}
