// Elementwise kernels, the twins of ops::elementwise. Unary op codes follow the Unary enum:
// 0 relu, 1 sigmoid, 2 tanh, 3 exp, 4 log, 5 scale(s). Binary: 0 add, 1 sub, 2 mul.
#include "common.cuh"

__device__ __forceinline__ float unary_apply(int op, float x, float s) {
    switch (op) {
        case 0: return fmaxf(x, 0.f);
        case 1: return sigmoid_f(x);
        case 2: return tanhf(x);
        case 3: return expf(x);
        case 4: return logf(x);
        default: return s * x;
    }
}

__device__ __forceinline__ float unary_deriv(int op, float x, float y, float s) {
    switch (op) {
        case 0: return x > 0.f ? 1.f : 0.f;
        case 1: return y * (1.f - y);
        case 2: return 1.f - y * y;
        case 3: return y;
        case 4: return 1.f / x;
        default: return s;
    }
}

KERNEL void unary_fwd(int op, float s, const float* __restrict__ x, float* __restrict__ y, i64 n) {
    FOR_EACH(i, n) y[i] = unary_apply(op, x[i], s);
}

KERNEL void unary_bwd(int op, float s, const float* __restrict__ x, const float* __restrict__ y,
                      const float* __restrict__ dy, float* __restrict__ dx, i64 n) {
    FOR_EACH(i, n) dx[i] = dy[i] * unary_deriv(op, x[i], y[i], s);
}

KERNEL void binary_fwd(int op, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, i64 n) {
    FOR_EACH(i, n) {
        float x = a[i], y = b[i];
        out[i] = op == 0 ? x + y : (op == 1 ? x - y : x * y);
    }
}

// out[r, c] = x[r, c] + bias[c]
KERNEL void add_row_bias(const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ out, i64 n, int d) {
    FOR_EACH(i, n) out[i] = x[i] + bias[i % d];
}

// a += alpha * b
KERNEL void axpy(float alpha, const float* __restrict__ b, float* __restrict__ a, i64 n) {
    FOR_EACH(i, n) a[i] += alpha * b[i];
}

KERNEL void fill_f32(float* __restrict__ x, float v, i64 n) {
    FOR_EACH(i, n) x[i] = v;
}

// Round to nearest even, as half::bf16::from_f32.
KERNEL void f32_to_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, i64 n) {
    FOR_EACH(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

KERNEL void bf16_to_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, i64 n) {
    FOR_EACH(i, n) y[i] = __bfloat162float(x[i]);
}

// Binary cross-entropy with logits against soft targets, the twin of ops::loss::bce_with_logits_cpu:
// loss[i] = max(x, 0) - x y + log(1 + exp(-|x|)) (summed on the host side by the reduction),
// grad[i] = (sigmoid(x) - y) * inv_n.
KERNEL void bce_logits(const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ grad,
                       float* __restrict__ loss, i64 n, float inv_n) {
    FOR_EACH(i, n) {
        float xi = x[i], yi = y[i];
        loss[i] = fmaxf(xi, 0.f) - xi * yi + log1pf(expf(-fabsf(xi)));
        grad[i] = (sigmoid_f(xi) - yi) * inv_n;
    }
}

// A click model's distillation term per element, the twin of ops::loss::binary_divergence_cpu:
// kind 0 KL(Bernoulli(t) || Bernoulli(q)), 1 KL(Bernoulli(q) || Bernoulli(t)), 2 their
// Jensen-Shannon divergence, with q = sigmoid(x) and t the teachers' mean probability clamped to
// [1e-7, 1 - 1e-7]; kind 3 (x - t)^2 / 2 with t the teachers' mean logit. Writes the element's
// value to loss and its derivative by x, times inv_n, to grad.
__device__ __forceinline__ float softplus_f(float z) { return fmaxf(z, 0.f) + log1pf(expf(-fabsf(z))); }
KERNEL void binary_div(const float* __restrict__ x, const float* __restrict__ t, float* __restrict__ grad,
                       float* __restrict__ loss, i64 n, float inv_n, int kind) {
    FOR_EACH(i, n) {
        const float xi = x[i], ti = t[i];
        if (kind == 3) {
            const float d = xi - ti;
            loss[i] = 0.5f * d * d;
            grad[i] = d * inv_n;
            continue;
        }
        const float p = fminf(fmaxf(ti, 1e-7f), 1.f - 1e-7f);
        const float q = sigmoid_f(xi), lq = -softplus_f(-xi), l1q = -softplus_f(xi);
        const float lp = logf(p), l1p = log1pf(-p);
        float l, g;
        if (kind == 0) {
            l = p * (lp - lq) + (1.f - p) * (l1p - l1q);
            g = q - p;
        } else if (kind == 1) {
            l = q * (lq - lp) + (1.f - q) * (l1q - l1p);
            g = q * (1.f - q) * (xi - (lp - l1p));
        } else {
            const float m = 0.5f * (p + q), lm = logf(m), l1m = log1pf(-m);
            l = 0.5f * (p * (lp - lm) + (1.f - p) * (l1p - l1m)) + 0.5f * (q * (lq - lm) + (1.f - q) * (l1q - l1m));
            g = q * (1.f - q) * 0.5f * ((lq - lm) - (l1q - l1m));
        }
        loss[i] = l;
        grad[i] = g * inv_n;
    }
}

// t[rows[r], :] = 0 for r < nrows: clears the rows a row-sparse gradient touched (repeats allowed).
KERNEL void zero_rows(float* __restrict__ t, const int* __restrict__ rows, i64 nrows, int dim) {
    FOR_EACH(e, nrows * dim) t[(i64)rows[e / dim] * dim + e % dim] = 0.f;
}
