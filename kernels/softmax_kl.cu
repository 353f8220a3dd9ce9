// Fused softmax-KL distillation loss and its gradient, the twin of ops::softmax_kl::softmax_kl_cpu.
// One block per row. Pass 1 reads the student row and every teacher row once, keeping online
// (max, sum of exp) pairs for s, s/T and each t_k/T, and copies the student row into shared memory
// when it fits; pass 2 takes the student row from there and the teachers again (from L2: one row
// per SM at a time), and writes the gradient and the row's loss parts. No probability matrix is
// ever stored.
//
//   p   = (1/K) sum_k softmax(t_k / T)      q = softmax(s)      q_T = softmax(s / T)
//   hard_r = -log q[y_r]                     soft_r = KL(p || q_T)
//   grad   = inv_n * ((1 - alpha) (q - onehot(y)) + alpha T (q_T - p))
//
// Exponentials are taken base 2 (exp2f is one MUFU.EX2 plus range handling), with the log2(e)
// factor folded into the per-distribution scale, so each element costs one multiply-add and one
// exp2 per distribution. Kernels come in teacher-count classes (KMAX = 1, 2, 4, 8) so that the
// common one-teacher case keeps its state in few registers.
#include "common.cuh"

#define MAX_TEACHERS 8
#define L2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// 2^x by the hardware approximation with results below 2^-126 flushed to zero: one MUFU.EX2,
// where exp2f adds the handling of the denormal range (three more instructions per call, and this
// kernel is instruction bound). The relative error is exp2f's (2 ulp); a flushed result is below
// 1.2e-38, which no loss or gradient term here can notice (a probability that small contributes
// nothing at fp32 precision).
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

struct TeacherPtrs {
    const float* p[MAX_TEACHERS];
};

// Online log-sum-exp, base 2: m is the running max of the raw values, z = sum exp2(c * (x - m)).
struct Lse {
    float m, z;
};

__device__ __forceinline__ void lse_add(Lse& a, float x, float c) {
    if (x > a.m) {
        a.z = a.z * ex2(c * (a.m - x)) + 1.f;
        a.m = x;
    } else {
        a.z += ex2(c * (x - a.m));
    }
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b, float c) {
    if (b.m == -INFINITY) return a;
    if (a.m == -INFINITY) return b;
    float m = fmaxf(a.m, b.m);
    return Lse{m, a.z * ex2(c * (a.m - m)) + b.z * ex2(c * (b.m - m))};
}

// Block-wide merge of N online log-sum-exp states at once (state i with scale c[i]); every thread
// gets the results. Each warp merges by shuffles; then warp 0 alone merges the warps' partials by
// shuffles and broadcasts them through shared memory (every thread looping over every warp's
// partial cost 2 exp2 x 32 warps x 1024 threads per state: as many MUFU operations as a fifth of
// the row's elements). The merge is commutative (max, then a sum of two products), so the xor
// butterfly gives every lane the same bits, and the order is fixed: deterministic. `buf` holds
// 66 * N floats; the leading barrier lets callers reuse it.
template <int N>
__device__ void block_lse_n(Lse* a, const float* c, float* buf) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int i = 0; i < N; i++) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            Lse b{__shfl_xor_sync(0xffffffffu, a[i].m, o), __shfl_xor_sync(0xffffffffu, a[i].z, o)};
            a[i] = lse_merge(a[i], b, c[i]);
        }
    }
    __syncthreads();
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            buf[64 * i + warp] = a[i].m;
            buf[64 * i + 32 + warp] = a[i].z;
        }
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int i = 0; i < N; i++) {
            Lse r = lane < nw ? Lse{buf[64 * i + lane], buf[64 * i + 32 + lane]} : Lse{-INFINITY, 0.f};
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                Lse b{__shfl_xor_sync(0xffffffffu, r.m, o), __shfl_xor_sync(0xffffffffu, r.z, o)};
                r = lse_merge(r, b, c[i]);
            }
            if (lane == 0) {
                buf[64 * N + 2 * i] = r.m;
                buf[64 * N + 2 * i + 1] = r.z;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; i++) a[i] = Lse{buf[64 * N + 2 * i], buf[64 * N + 2 * i + 1]};
}

// A distribution's normaliser in pass 2: log2-probability of raw value x is c * (x - m) - l2z.
struct Norm {
    float m, c, l2z;
    __device__ __forceinline__ float log2p(float x) const { return c * (x - m) - l2z; }
};

template <int KMAX, bool VEC>
__device__ __forceinline__ void row_kernel(const float* __restrict__ s, const TeacherPtrs& tp, const int* __restrict__ labels,
                                           int cols, int K, float T, float alpha, float inv_n, float* __restrict__ grad,
                                           float* __restrict__ row_hard, float* __restrict__ row_soft, float* cache) {
    constexpr int NL = 2 + KMAX;  // online states: s, s/T, t_k/T
    __shared__ float fbuf[66 * NL];
    __shared__ double dbuf[32];
    const i64 r = blockIdx.x;
    const float inv_t = 1.f / T;
    const float c1 = L2E, ct = inv_t * L2E;
    const bool use_hard = labels != nullptr && alpha != 1.f;
    const bool use_soft = K > 0 && alpha != 0.f;
    // T = 1: softmax(s / T) is softmax(s), bit for bit (ct == c1): one state and one exp2 per
    // element fewer in each pass.
    const bool same_t = ct == c1;
    const float* srow = s + r * cols;
    const float* trow[KMAX];
#pragma unroll
    for (int k = 0; k < KMAX; k++) trow[k] = k < K ? tp.p[k] + r * cols : nullptr;

    // Pass 1: online max and sums (and the student row into shared memory).
    Lse ls{-INFINITY, 0.f}, lst{-INFINITY, 0.f};
    Lse lt[KMAX];
#pragma unroll
    for (int k = 0; k < KMAX; k++) lt[k] = Lse{-INFINITY, 0.f};
    if (VEC) {
        // U float4 loads of each row in flight per thread before the first use.
        constexpr int U = KMAX == 1 ? 4 : (KMAX == 2 ? 2 : 1);
        const int n4 = cols / 4, bd = blockDim.x;
        auto consume = [&](float4 v, const float4* t, int j) {
            if (cache) reinterpret_cast<float4*>(cache)[j] = v;
            lse_add(ls, v.x, c1); lse_add(ls, v.y, c1); lse_add(ls, v.z, c1); lse_add(ls, v.w, c1);
            if (use_soft) {
                if (!same_t) {
                    lse_add(lst, v.x, ct); lse_add(lst, v.y, ct); lse_add(lst, v.z, ct); lse_add(lst, v.w, ct);
                }
#pragma unroll
                for (int k = 0; k < KMAX; k++) {
                    if (k < K) {
                        lse_add(lt[k], t[k].x, ct); lse_add(lt[k], t[k].y, ct); lse_add(lt[k], t[k].z, ct); lse_add(lt[k], t[k].w, ct);
                    }
                }
            }
        };
        int j = threadIdx.x;
        for (; j + (U - 1) * bd < n4; j += U * bd) {
            float4 v[U], t[U][KMAX];
#pragma unroll
            for (int u = 0; u < U; u++) v[u] = __ldcs(reinterpret_cast<const float4*>(srow) + j + u * bd);
            if (use_soft) {
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int k = 0; k < KMAX; k++)
                        if (k < K) t[u][k] = reinterpret_cast<const float4*>(trow[k])[j + u * bd];
            }
#pragma unroll
            for (int u = 0; u < U; u++) consume(v[u], t[u], j + u * bd);
        }
        for (; j < n4; j += bd) {
            float4 v = reinterpret_cast<const float4*>(srow)[j], t[KMAX];
            if (use_soft) {
#pragma unroll
                for (int k = 0; k < KMAX; k++)
                    if (k < K) t[k] = reinterpret_cast<const float4*>(trow[k])[j];
            }
            consume(v, t, j);
        }
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = srow[j];
            if (cache) cache[j] = v;
            lse_add(ls, v, c1);
            if (use_soft) {
                if (!same_t) lse_add(lst, v, ct);
#pragma unroll
                for (int k = 0; k < KMAX; k++)
                    if (k < K) lse_add(lt[k], trow[k][j], ct);
            }
        }
    }
    // One block-wide merge for every state (unused ones stay empty and merge to nothing).
    Lse st[NL];
    float sc[NL];
    st[0] = ls, sc[0] = c1;
    st[1] = lst, sc[1] = ct;
#pragma unroll
    for (int k = 0; k < KMAX; k++) st[2 + k] = lt[k], sc[2 + k] = ct;
    block_lse_n<NL>(st, sc, fbuf);
    const Norm ns{st[0].m, c1, log2f(st[0].z)};
    Norm nst{0.f, ct, 0.f};
    Norm nt[KMAX];
    if (use_soft) {
        nst = same_t ? ns : Norm{st[1].m, ct, log2f(st[1].z)};
#pragma unroll
        for (int k = 0; k < KMAX; k++) nt[k] = k < K ? Norm{st[2 + k].m, ct, log2f(st[2 + k].z)} : Norm{0.f, 0.f, 0.f};
    }
    const float* sp = cache ? cache : srow;  // the block's own shared copy is visible after block_lse_n's barriers
    const int y = labels ? labels[r] : -1;
    const float w_hard = use_hard ? (1.f - alpha) * inv_n : 0.f;
    const float w_soft = use_soft ? alpha * T * inv_n : 0.f;
    const float inv_k = K > 0 ? 1.f / (float)K : 0.f;

    // Pass 2: gradient and the soft term.
    float soft = 0.f;
    float* grow = grad + r * cols;
    auto element = [&](int j, float sv, const float* tv) -> float {
        float g = 0.f;
        const float l2q = ns.log2p(sv);
        const float q = use_hard || same_t ? ex2(l2q) : 0.f;
        if (use_hard) g += w_hard * (q - (j == y ? 1.f : 0.f));
        if (use_soft) {
            const float l2qt = same_t ? l2q : nst.log2p(sv);
            const float qt = same_t ? q : ex2(l2qt);
            float p, l2p;
            if (KMAX == 1) {
                l2p = nt[0].log2p(tv[0]);
                p = ex2(l2p);
            } else {
                p = 0.f;
#pragma unroll
                for (int k = 0; k < KMAX; k++)
                    if (k < K) p += ex2(nt[k].log2p(tv[k]));
                p *= inv_k;
                l2p = log2f(p);
            }
            if (p > 0.f) soft += p * (l2p - l2qt);
            g += w_soft * (qt - p);
        }
        return g;
    };
    if (VEC) {
        for (int j = threadIdx.x; j < cols / 4; j += blockDim.x) {
            float4 v = reinterpret_cast<const float4*>(sp)[j];
            float t4[4][KMAX];
            if (use_soft) {
#pragma unroll
                for (int k = 0; k < KMAX; k++) {
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
            __stcs(reinterpret_cast<float4*>(grow) + j, g);
        }
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float tv[KMAX];
            if (use_soft) {
#pragma unroll
                for (int k = 0; k < KMAX; k++)
                    if (k < K) tv[k] = trow[k][j];
            }
            grow[j] = element(j, sp[j], tv);
        }
    }
    double soft_sum = block_sum_d((double)soft, dbuf);
    if (threadIdx.x == 0) {
        row_soft[r] = use_soft ? (float)(soft_sum * LN2) : 0.f;
        row_hard[r] = use_hard ? -ns.log2p(srow[y]) * LN2 : 0.f;
    }
}

// Grid: one block per row. labels may be null (no hard term); K <= KMAX teachers in tp.p[0..K).
// Dynamic shared memory of cols floats caches the student row (0: read it twice from global).
#define SOFTMAX_KL(KMAX, THREADS)                                                                                      \
    KERNEL void __launch_bounds__(THREADS, 1) softmax_kl_k##KMAX(                                                     \
        const float* __restrict__ student, TeacherPtrs tp, const int* __restrict__ labels, int cols, int K, float T,    \
        float alpha, float inv_n, float* __restrict__ grad, float* __restrict__ row_hard, float* __restrict__ row_soft, \
        int cache_student) {                                                                                           \
        extern __shared__ __align__(16) float cache[];                                                                 \
        float* c = cache_student ? cache : nullptr;                                                                    \
        if ((cols & 3) == 0)                                                                                           \
            row_kernel<KMAX, true>(student, tp, labels, cols, K, T, alpha, inv_n, grad, row_hard, row_soft, c);       \
        else                                                                                                           \
            row_kernel<KMAX, false>(student, tp, labels, cols, K, T, alpha, inv_n, grad, row_hard, row_soft, c);      \
    }
SOFTMAX_KL(1, 1024)
SOFTMAX_KL(2, 1024)
SOFTMAX_KL(4, 512)
SOFTMAX_KL(8, 512)

// The soft term as another divergence (kind 0 forward KL, 1 reverse KL, 2 Jensen-Shannon, 3 mean
// squared error of the logits against the teachers' mean logits), the twin of the other
// divergences of ops::softmax_kl::softmax_kl_cpu (see `Divergence` there for the formulas). One
// block per row, three passes over the rows: the online log-sum-exps (s, s/T, each t_k/T); the
// soft value and, for reverse KL and Jensen-Shannon, the row sum their gradient subtracts (f64,
// fixed order); then the gradient. log p is a log-sum-exp over the teachers per element, so a
// teacher probability that underflows still has its logarithm. Written for correctness first:
// the forward KL of the trainers' default runs on the tuned kernels above.
KERNEL void __launch_bounds__(512) softmax_div(const float* __restrict__ student, TeacherPtrs tp, const int* __restrict__ labels,
                                               int cols, int K, float T, float alpha, float inv_n, int kind,
                                               float* __restrict__ grad, float* __restrict__ row_hard, float* __restrict__ row_soft) {
    constexpr int NL = 2 + MAX_TEACHERS;
    __shared__ float fbuf[66 * NL];
    __shared__ double dbuf[32];
    const i64 r = blockIdx.x;
    const float inv_t = 1.f / T;
    const float c1 = L2E, ct = inv_t * L2E;
    const bool use_hard = labels != nullptr && alpha != 1.f;
    const bool use_soft = K > 0 && alpha != 0.f;
    const bool mse = kind == 3;
    const float* srow = student + r * cols;
    const float* trow[MAX_TEACHERS];
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) trow[k] = k < K ? tp.p[k] + r * cols : nullptr;

    // Pass 1: online log-sum-exps.
    Lse st[NL];
    float sc[NL];
#pragma unroll
    for (int i = 0; i < NL; i++) st[i] = Lse{-INFINITY, 0.f}, sc[i] = i == 0 ? c1 : ct;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = srow[j];
        lse_add(st[0], v, c1);
        if (use_soft && !mse) {
            lse_add(st[1], v, ct);
#pragma unroll
            for (int k = 0; k < MAX_TEACHERS; k++)
                if (k < K) lse_add(st[2 + k], trow[k][j], ct);
        }
    }
    block_lse_n<NL>(st, sc, fbuf);
    const Norm ns{st[0].m, c1, log2f(st[0].z)};
    const Norm nst{st[1].m, ct, log2f(st[1].z)};
    Norm nt[MAX_TEACHERS];
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) nt[k] = Norm{st[2 + k].m, ct, k < K ? log2f(st[2 + k].z) : 0.f};
    const float l2k = log2f((float)(K > 0 ? K : 1));
    // log2 of the teachers' averaged probability of element j.
    auto log2p = [&](int j) -> float {
        float l[MAX_TEACHERS], mx = -INFINITY;
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++)
            if (k < K) l[k] = nt[k].log2p(trow[k][j]), mx = fmaxf(mx, l[k]);
        float z = 0.f;
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++)
            if (k < K) z += ex2(l[k] - mx);
        return mx + log2f(z) - l2k;
    };
    auto zbar = [&](int j) -> float {
        float z = 0.f;
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++)
            if (k < K) z += trow[k][j];
        return z / (float)K;
    };
    // log2((2^a + 2^b) / 2)
    auto l2mean = [](float a, float b) -> float { return fmaxf(a, b) + log2f(1.f + ex2(-fabsf(a - b))) - 1.f; };

    // Pass 2: the soft value (log2 units for the divergences of distributions) and the row sum.
    double soft = 0.0, sq = 0.0;
    if (use_soft) {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            if (mse) {
                const float d = srow[j] - zbar(j);
                soft += (double)d * d;
                continue;
            }
            const float l2qt = nst.log2p(srow[j]), qt = ex2(l2qt), l2p = log2p(j), p = ex2(l2p);
            if (kind == 0) {
                if (p > 0.f) soft += (double)p * (l2p - l2qt);
            } else if (kind == 1) {
                soft += (double)qt * (l2qt - l2p);
            } else {
                const float l2m = l2mean(l2p, l2qt), hq = 0.5f * (l2qt - l2m);
                soft += (double)p * 0.5f * (l2p - l2m) + (double)qt * hq;
                sq += (double)qt * hq;
            }
        }
        soft = block_sum_d(soft, dbuf);
        sq = kind == 2 ? block_sum_d(sq, dbuf) : soft;
    }
    const float s_nat = (float)(sq * LN2);

    // Pass 3: the gradient.
    const int y = labels ? labels[r] : -1;
    const float w_hard = use_hard ? (1.f - alpha) * inv_n : 0.f;
    const float w_soft = use_soft ? alpha * (mse ? 1.f / (float)cols : T) * inv_n : 0.f;
    float* grow = grad + r * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = srow[j];
        float g = 0.f;
        if (use_hard) g += w_hard * (ex2(ns.log2p(v)) - (j == y ? 1.f : 0.f));
        if (use_soft) {
            if (mse) {
                g += w_soft * (v - zbar(j));
            } else {
                const float l2qt = nst.log2p(v), qt = ex2(l2qt), l2p = log2p(j);
                if (kind == 0) {
                    g += w_soft * (qt - ex2(l2p));
                } else if (kind == 1) {
                    g += w_soft * qt * ((l2qt - l2p) * LN2 - s_nat);
                } else {
                    g += w_soft * qt * (0.5f * (l2qt - l2mean(l2p, l2qt)) * LN2 - s_nat);
                }
            }
        }
        grow[j] = g;
    }
    if (threadIdx.x == 0) {
        row_soft[r] = use_soft ? (float)(mse ? soft / (2.0 * cols) : soft * LN2) : 0.f;
        row_hard[r] = use_hard ? -ns.log2p(srow[y]) * LN2 : 0.f;
    }
}

// Teachers weighted (ops::softmax_kl::mix, the twin of mix_teachers_cpu): K teachers' rows of class
// logits folded into one row whose distribution at temperature T is their weighted mixture,
//   out_j = T ln sum_k w_k softmax(z_k / T)_j        (mode 0)
//   out_j = sum_k w_k z_kj                           (mode 1, the logit match)
// with w_k = c_k conf_k / sum_k c_k conf_k, c_k the given weights (normalised, in wt.w), conf_k the
// teacher's probability of its own top class on this row at temperature 1 (1 without confidence).
// One block per row, two passes: the online log-sum-exps (each z_k at 1 and at 1/T), then the row.
// fp32 throughout (the twin accumulates in f64: the bound is fp32's).
struct TeacherWeights {
    float w[MAX_TEACHERS];
};

KERNEL void __launch_bounds__(512) teacher_mix(TeacherPtrs tp, TeacherWeights wt, int K, int cols, float T, int mode, int confidence,
                                               float* __restrict__ out) {
    constexpr int NL = 2 * MAX_TEACHERS;
    __shared__ float fbuf[66 * NL];
    const i64 r = blockIdx.x;
    const float c1 = L2E, ct = L2E / T;
    const float* trow[MAX_TEACHERS];
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) trow[k] = k < K ? tp.p[k] + r * cols : nullptr;
    Lse st[NL];
    float sc[NL];
#pragma unroll
    for (int i = 0; i < NL; i++) st[i] = Lse{-INFINITY, 0.f}, sc[i] = i < MAX_TEACHERS ? c1 : ct;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++) {
            if (k < K) {
                const float v = trow[k][j];
                if (confidence) lse_add(st[k], v, c1);
                if (mode == 0) lse_add(st[MAX_TEACHERS + k], v, ct);
            }
        }
    }
    block_lse_n<NL>(st, sc, fbuf);
    // The weights: the top class's probability at T = 1 is 1 / z (z sums 2^(c1 (x - max))).
    float w[MAX_TEACHERS], wsum = 0.f;
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) {
        w[k] = k < K ? wt.w[k] * (confidence ? 1.f / st[k].z : 1.f) : 0.f;
        wsum += w[k];
    }
    float lw[MAX_TEACHERS];
    Norm nt[MAX_TEACHERS];
#pragma unroll
    for (int k = 0; k < MAX_TEACHERS; k++) {
        w[k] /= wsum;
        lw[k] = w[k] > 0.f ? log2f(w[k]) : -INFINITY;
        nt[k] = Norm{st[MAX_TEACHERS + k].m, ct, k < K && mode == 0 ? log2f(st[MAX_TEACHERS + k].z) : 0.f};
    }
    float* orow = out + r * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        if (mode == 1) {
            float s = 0.f;
#pragma unroll
            for (int k = 0; k < MAX_TEACHERS; k++)
                if (k < K) s += w[k] * trow[k][j];
            orow[j] = s;
        } else {
            // log2 of the mixture's probability of j: a log-sum-exp over the teachers with weights.
            float l[MAX_TEACHERS], mx = -INFINITY;
#pragma unroll
            for (int k = 0; k < MAX_TEACHERS; k++) {
                l[k] = (k < K && w[k] > 0.f) ? lw[k] + nt[k].log2p(trow[k][j]) : -INFINITY;
                mx = fmaxf(mx, l[k]);
            }
            float z = 0.f;
#pragma unroll
            for (int k = 0; k < MAX_TEACHERS; k++)
                if (l[k] > -INFINITY) z += exp2f(l[k] - mx);
            orow[j] = T * 0.69314718055994531f * (mx + log2f(z));
        }
    }
}

// The same for click models (one logit per row, a sigmoid): out_r = logit(clamp(sum_k w_k p_k,
// 1e-7, 1 - 1e-7)) with p_k = sigmoid(z_k) and conf_k = max(p_k, 1 - p_k). One thread per row.
KERNEL void teacher_mix_binary(TeacherPtrs tp, TeacherWeights wt, int K, int rows, int confidence, float* __restrict__ out) {
    FOR_EACH(r, rows) {
        float p[MAX_TEACHERS], w[MAX_TEACHERS], wsum = 0.f;
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++) {
            p[k] = k < K ? sigmoid_f(tp.p[k][r]) : 0.f;
            w[k] = k < K ? wt.w[k] * (confidence ? fmaxf(p[k], 1.f - p[k]) : 1.f) : 0.f;
            wsum += w[k];
        }
        float m = 0.f;
#pragma unroll
        for (int k = 0; k < MAX_TEACHERS; k++) m += w[k] / wsum * p[k];
        m = fminf(fmaxf(m, 1e-7f), 1.f - 1e-7f);
        out[r] = logf(m / (1.f - m));
    }
}
