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
