// Fused softmax-KL distillation loss and its gradient, the twin of ops::softmax_kl::softmax_kl_cpu.
// One block per row. Pass 1 reads the student row and every teacher row once, keeping online
// (max, sum of exp) pairs for s, s/T and each t_k/T; pass 2 reads them again (from L2: a row is at
// most a few hundred KB and the block finishes it before moving on) and writes the gradient and
// the row's loss parts. No probability matrix is ever stored.
//
//   p   = (1/K) sum_k softmax(t_k / T)      q = softmax(s)      q_T = softmax(s / T)
//   hard_r = -log q[y_r]                     soft_r = KL(p || q_T)
//   grad   = inv_n * ((1 - alpha) (q - onehot(y)) + alpha T (q_T - p))
#include "common.cuh"

#define MAX_TEACHERS 8

struct TeacherPtrs {
    const float* p[MAX_TEACHERS];
};

// Online log-sum-exp state: m is the running max of the raw values, z the sum of exp(scale*(x - m)).
struct Lse {
    float m, z;
};

__device__ __forceinline__ void lse_add(Lse& a, float x, float scale) {
    if (x > a.m) {
        a.z = a.z * expf(scale * (a.m - x)) + 1.f;
        a.m = x;
    } else {
        a.z += expf(scale * (x - a.m));
    }
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b, float scale) {
    if (b.m == -INFINITY) return a;
    if (a.m == -INFINITY) return b;
    float m = fmaxf(a.m, b.m);
    return Lse{m, a.z * expf(scale * (a.m - m)) + b.z * expf(scale * (b.m - m))};
}

__device__ __forceinline__ Lse warp_lse(Lse a, float scale) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Lse b{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.z, o)};
        a = lse_merge(a, b, scale);
    }
    return a;
}

// Block-wide merge; every thread gets the result. `buf` holds 2 * 32 floats.
__device__ Lse block_lse(Lse a, float scale, float* buf) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    a = warp_lse(a, scale);
    __syncthreads();
    if (lane == 0) {
        buf[warp] = a.m;
        buf[32 + warp] = a.z;
    }
    __syncthreads();
    Lse r{-INFINITY, 0.f};
    for (int w = 0; w < nw; w++) r = lse_merge(r, Lse{buf[w], buf[32 + w]}, scale);
    return r;
}

__device__ double block_sum_d(double v, double* buf) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    double r = 0.0;
    for (int w = 0; w < nw; w++) r += buf[w];
    return r;
}

template <bool VEC>
__device__ __forceinline__ void row_kernel(const float* __restrict__ s, TeacherPtrs tp, const int* __restrict__ labels,
                                           int cols, int K, float T, float alpha, float inv_n, float* __restrict__ grad,
                                           float* __restrict__ row_hard, float* __restrict__ row_soft) {
    __shared__ float fbuf[64];
    __shared__ double dbuf[32];
    const i64 r = blockIdx.x;
    const float inv_t = 1.f / T;
    const bool use_hard = labels != nullptr && alpha != 1.f;
    const bool use_soft = K > 0 && alpha != 0.f;
    const float* srow = s + r * cols;
    const float* trow[MAX_TEACHERS];
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) trow[k] = k < K ? tp.p[k] + r * cols : nullptr;

    // Pass 1: online max and sums.
    Lse ls{-INFINITY, 0.f}, lst{-INFINITY, 0.f};
    Lse lt[MAX_TEACHERS];
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) lt[k] = Lse{-INFINITY, 0.f};
    if (VEC) {
        for (int j = threadIdx.x; j < cols / 4; j += blockDim.x) {
            float4 v = reinterpret_cast<const float4*>(srow)[j];
            lse_add(ls, v.x, 1.f); lse_add(ls, v.y, 1.f); lse_add(ls, v.z, 1.f); lse_add(ls, v.w, 1.f);
            if (use_soft) {
                lse_add(lst, v.x, inv_t); lse_add(lst, v.y, inv_t); lse_add(lst, v.z, inv_t); lse_add(lst, v.w, inv_t);
#pragma unroll
                for (int k = 0; k < MAX_TEACHERS; k++) {
                    if (k < K) {
                        float4 t = reinterpret_cast<const float4*>(trow[k])[j];
                        lse_add(lt[k], t.x, inv_t); lse_add(lt[k], t.y, inv_t); lse_add(lt[k], t.z, inv_t); lse_add(lt[k], t.w, inv_t);
                    }
                }
            }
        }
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = srow[j];
            lse_add(ls, v, 1.f);
            if (use_soft) {
                lse_add(lst, v, inv_t);
#pragma unroll
                for (int k = 0; k < MAX_TEACHERS; k++)
                    if (k < K) lse_add(lt[k], trow[k][j], inv_t);
            }
        }
    }
    ls = block_lse(ls, 1.f, fbuf);
    const float lse_s = ls.m + logf(ls.z);
    float lse_st = 0.f;
    float lse_t[MAX_TEACHERS];
    if (use_soft) {
        lst = block_lse(lst, inv_t, fbuf);
        lse_st = lst.m * inv_t + logf(lst.z);
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++) {
            if (k < K) {
                Lse b = block_lse(lt[k], inv_t, fbuf);
                lse_t[k] = b.m * inv_t + logf(b.z);
            } else {
                lse_t[k] = 0.f;
            }
        }
    }
    const int y = labels ? labels[r] : -1;
    const float w_hard = use_hard ? (1.f - alpha) * inv_n : 0.f;
    const float w_soft = use_soft ? alpha * T * inv_n : 0.f;
    const float inv_k = K > 0 ? 1.f / (float)K : 0.f;

    // Pass 2: gradient and the soft term.
    double soft = 0.0;
    float* grow = grad + r * cols;
    auto element = [&](int j, float sv, const float* tv) -> float {
        float g = 0.f;
        if (use_hard) g += w_hard * (expf(sv - lse_s) - (j == y ? 1.f : 0.f));
        if (use_soft) {
            float lqt = sv * inv_t - lse_st;
            float p, lp;
            if (K == 1) {
                lp = tv[0] * inv_t - lse_t[0];
                p = expf(lp);
            } else {
                p = 0.f;
#pragma unroll
                for (int k = 0; k < MAX_TEACHERS; k++)
                    if (k < K) p += expf(tv[k] * inv_t - lse_t[k]);
                p *= inv_k;
                lp = logf(p);
            }
            if (p > 0.f) soft += (double)(p * (lp - lqt));
            g += w_soft * (expf(lqt) - p);
        }
        return g;
    };
    if (VEC) {
        for (int j = threadIdx.x; j < cols / 4; j += blockDim.x) {
            float4 v = reinterpret_cast<const float4*>(srow)[j];
            float t4[4][MAX_TEACHERS];
            if (use_soft) {
#pragma unroll
                for (int k = 0; k < MAX_TEACHERS; k++) {
                    if (k < K) {
                        float4 t = reinterpret_cast<const float4*>(trow[k])[j];
                        t4[0][k] = t.x; t4[1][k] = t.y; t4[2][k] = t.z; t4[3][k] = t.w;
                    }
                }
            }
            float4 g;
            g.x = element(4 * j + 0, v.x, t4[0]);
            g.y = element(4 * j + 1, v.y, t4[1]);
            g.z = element(4 * j + 2, v.z, t4[2]);
            g.w = element(4 * j + 3, v.w, t4[3]);
            reinterpret_cast<float4*>(grow)[j] = g;
        }
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float tv[MAX_TEACHERS];
            if (use_soft) {
#pragma unroll
                for (int k = 0; k < MAX_TEACHERS; k++)
                    if (k < K) tv[k] = trow[k][j];
            }
            grow[j] = element(j, srow[j], tv);
        }
    }
    soft = block_sum_d(soft, dbuf);
    if (threadIdx.x == 0) {
        row_soft[r] = use_soft ? (float)soft : 0.f;
        row_hard[r] = use_hard ? lse_s - srow[y] : 0.f;
    }
}

// Grid: one block per row. labels may be null (no hard term); K teachers in tp.p[0..K).
KERNEL void __launch_bounds__(512) softmax_kl_fwd_bwd(const float* __restrict__ student, TeacherPtrs tp,
                                                       const int* __restrict__ labels, int cols, int K, float T,
                                                       float alpha, float inv_n, float* __restrict__ grad,
                                                       float* __restrict__ row_hard, float* __restrict__ row_soft) {
    if ((cols & 3) == 0)
        row_kernel<true>(student, tp, labels, cols, K, T, alpha, inv_n, grad, row_hard, row_soft);
    else
        row_kernel<false>(student, tp, labels, cols, K, T, alpha, inv_n, grad, row_hard, row_soft);
}
