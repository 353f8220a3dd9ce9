// Reductions, the twins of ops::reduce. Deterministic: a fixed grid writes per-block partial sums
// (in double), and a single block adds them in a fixed order, so the result does not depend on
// scheduling. Column sums of [rows, d] go the same way: row chunks write partial column sums, a
// second kernel adds the chunks in order.
#include "common.cuh"

// partials[blockIdx.x] = sum over this block's strided share of x (of x^2 when squares != 0).
KERNEL void sum_partials(const float* __restrict__ x, i64 n, int squares, double* __restrict__ partials) {
    __shared__ double buf[32];
    double acc = 0.0;
    FOR_EACH(i, n) {
        double v = x[i];
        acc += squares ? v * v : v;
    }
    acc = block_sum_d(acc, buf);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// out[0] = sum of partials[0..n), one block.
KERNEL void sum_finish(const double* __restrict__ partials, int n, double* __restrict__ out) {
    __shared__ double buf[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
    acc = block_sum_d(acc, buf);
    if (threadIdx.x == 0) out[0] = acc;
}

// Grid (ceil(d / blockDim.x), chunks): partials[chunk * d + c] = sum of x[r, c] over the chunk's rows.
KERNEL void sum_rows_partials(const float* __restrict__ x, i64 rows, int d, i64 chunk_rows, double* __restrict__ partials) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    i64 r0 = (i64)blockIdx.y * chunk_rows;
    i64 r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    double acc = 0.0;
    for (i64 r = r0; r < r1; r++) acc += x[r * d + c];
    partials[(i64)blockIdx.y * d + c] = acc;
}

// out[c] = beta * out[c] + sum over chunks (out is never read when beta == 0).
KERNEL void sum_rows_finish(const double* __restrict__ partials, int chunks, int d, float beta, float* __restrict__ out) {
    FOR_EACH(c, d) {
        double acc = 0.0;
        for (int k = 0; k < chunks; k++) acc += partials[(i64)k * d + c];
        out[c] = beta == 0.f ? (float)acc : beta * out[c] + (float)acc;
    }
}
