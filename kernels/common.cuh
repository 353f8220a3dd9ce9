// Shared helpers for codistill's kernels. Compiled by NVRTC (tools/ptx.py), so only CUDA's own
// headers (cuda_bf16.h) are included; no standard library.
#pragma once
#include <cuda_bf16.h>

typedef unsigned long long u64;
typedef long long i64;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#define KERNEL extern "C" __global__

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); i += (i64)gridDim.x * blockDim.x)

// One tensor-core product c += a b on a 16 x 16 bf16 tile of A (row-major fragment: a[0] rows g,
// k 2t..2t+1; a[1] rows g + 8; a[2], a[3] the same at k + 8) and a 16 x 8 tile of B (column
// fragment: b0 k 2t..2t+1 of column g, b1 k + 8), fp32 accumulators (c[0], c[1] row g, columns 2t,
// 2t + 1; c[2], c[3] row g + 8), with g = lane / 4, t = lane % 4.
__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same numerically safe logistic function as ops::elementwise::sigmoid.
__device__ __forceinline__ float sigmoid_f(float x) {
    if (x >= 0.f) {
        return 1.f / (1.f + expf(-x));
    }
    float e = expf(x);
    return e / (1.f + e);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide sum in a fixed order (deterministic); every thread gets the result. `buf` holds 32
// doubles; the leading barrier lets callers reuse it.
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

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// splitmix64, as in src/rng.rs.
__device__ __forceinline__ u64 splitmix64(u64 x) {
    u64 z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// rng::hash_uniform: a uniform number in [0, 1) that depends only on (seed, index).
__device__ __forceinline__ float hash_uniform(u64 seed, u64 index) {
    u64 h = splitmix64(seed ^ splitmix64(index));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

// Asynchronous 16-byte global-to-shared copies (sm_80+); `valid == false` zero-fills the 16 bytes.
__device__ __forceinline__ void cp_async16_shared(unsigned smem_addr, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    cp_async16_shared((unsigned)__cvta_generic_to_shared(smem), gmem, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
