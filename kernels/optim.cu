// Fused optimizer updates, the twins of ops::optim: one pass over the weights, the gradient and
// the state. `rows` is null for a dense gradient; otherwise the gradient is row-sparse, grad holds
// nrows x dim values for table rows rows[0..nrows), and only those rows are touched (lazy updates,
// as ParamStore's GradState::Rows). `scale` multiplies the gradient (global-norm clipping).
#include "common.cuh"

__device__ __forceinline__ i64 weight_index(const int* rows, i64 e, int dim) {
    return rows ? (i64)rows[e / dim] * dim + e % dim : e;
}

KERNEL void sgd_update(float* __restrict__ w, const float* __restrict__ grad, float* __restrict__ vel,
                       const int* __restrict__ rows, i64 n, int dim, float lr, float momentum, float weight_decay,
                       float scale) {
    FOR_EACH(e, n) {
        i64 i = weight_index(rows, e, dim);
        float g = scale * grad[e] + weight_decay * w[i];
        float v = momentum * vel[i] + g;
        vel[i] = v;
        w[i] -= lr * v;
    }
}

KERNEL void adagrad_update(float* __restrict__ w, const float* __restrict__ grad, float* __restrict__ accum,
                           const int* __restrict__ rows, i64 n, int dim, float lr, float eps, float scale) {
    FOR_EACH(e, n) {
        i64 i = weight_index(rows, e, dim);
        float g = scale * grad[e];
        float a = accum[i] + g * g;
        accum[i] = a;
        w[i] -= lr * g / (sqrtf(a) + eps);
    }
}

// bc1 = 1 - beta1^step and bc2 = 1 - beta2^step, computed on the host exactly as adam_cpu does.
KERNEL void adam_update(float* __restrict__ w, const float* __restrict__ grad, float* __restrict__ m,
                        float* __restrict__ v, const int* __restrict__ rows, i64 n, int dim, float lr, float beta1,
                        float beta2, float eps, float weight_decay, float bc1, float bc2, float scale) {
    FOR_EACH(e, n) {
        i64 i = weight_index(rows, e, dim);
        float g = scale * grad[e];
        float mi = beta1 * m[i] + (1.f - beta1) * g;
        float vi = beta2 * v[i] + (1.f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1;
        float vhat = vi / bc2;
        w[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * w[i]);
    }
}
