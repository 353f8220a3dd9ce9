// Embedding gather and scatter-add, the twins of ops::embedding. The host validates ids before they
// reach the device; the kernels still never read or write outside the table (an out-of-range id
// gathers NaN and scatters nothing).
#include "common.cuh"

// out[r, :] = table[ids[r], :]
KERNEL void embedding_gather(const float* __restrict__ table, int vocab, int dim, const int* __restrict__ ids, int n,
                             float* __restrict__ out) {
    if ((dim & 3) == 0) {
        int d4 = dim >> 2;
        FOR_EACH(e, (i64)n * d4) {
            i64 r = e / d4, j = e % d4;
            int id = ids[r];
            float4 v = make_float4(__int_as_float(0x7fc00000), __int_as_float(0x7fc00000), __int_as_float(0x7fc00000), __int_as_float(0x7fc00000));
            if (id >= 0 && id < vocab) v = reinterpret_cast<const float4*>(table + (i64)id * dim)[j];
            reinterpret_cast<float4*>(out + r * dim)[j] = v;
        }
    } else {
        FOR_EACH(e, (i64)n * dim) {
            i64 r = e / dim, j = e % dim;
            int id = ids[r];
            out[e] = (id >= 0 && id < vocab) ? table[(i64)id * dim + j] : __int_as_float(0x7fc00000);
        }
    }
}

// dtable[ids[r], :] += dout[r, :] with atomics: fast, but the order of the additions (and so the
// last bits of the result) changes from run to run when an id repeats.
KERNEL void embedding_scatter_add_atomic(const float* __restrict__ dout, int vocab, int dim, const int* __restrict__ ids,
                                         int n, float* __restrict__ dtable) {
    FOR_EACH(e, (i64)n * dim) {
        i64 r = e / dim, j = e % dim;
        int id = ids[r];
        if (id >= 0 && id < vocab) atomicAdd(dtable + (i64)id * dim + j, dout[e]);
    }
}

// Deterministic scatter-add. The host sorts positions by id (stably) into `order` and marks where
// each distinct id's run starts (seg_start, nseg + 1 entries); one warp owns one id, and adds its
// rows into the table's value in position order: the same additions, in the same order, as
// scatter_add_cpu, so the result is bitwise that of the CPU twin, every run.
KERNEL void embedding_scatter_add_sorted(const float* __restrict__ dout, int vocab, int dim, const int* __restrict__ ids,
                                         const int* __restrict__ order, const int* __restrict__ seg_start, int nseg,
                                         float* __restrict__ dtable) {
    int lane = threadIdx.x % 32;
    i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    i64 nwarps = (i64)gridDim.x * blockDim.x / 32;
    for (i64 s = warp; s < nseg; s += nwarps) {
        int p0 = seg_start[s], p1 = seg_start[s + 1];
        int id = ids[order[p0]];
        if (id < 0 || id >= vocab) continue;
        float* dst = dtable + (i64)id * dim;
        if ((dim & 3) == 0) {
            for (int j = lane; j < (dim >> 2); j += 32) {
                float4 acc = reinterpret_cast<float4*>(dst)[j];
                for (int p = p0; p < p1; p++) {
                    float4 v = reinterpret_cast<const float4*>(dout + (i64)order[p] * dim)[j];
                    acc.x += v.x;
                    acc.y += v.y;
                    acc.z += v.z;
                    acc.w += v.w;
                }
                reinterpret_cast<float4*>(dst)[j] = acc;
            }
        } else {
            for (int j = lane; j < dim; j += 32) {
                float acc = dst[j];
                for (int p = p0; p < p1; p++) acc += dout[(i64)order[p] * dim + j];
                dst[j] = acc;
            }
        }
    }
}
