// The warpgroup tensor-core pieces (Hopper, sm_90a) shared by the library's TMA matmul
// (kernels/matmul_sm90a.cu) and the kernel lab's cp.async one (dev/kernels/gemm_wgmma_cpasync_sm90a.cu):
// the m64n256k16 instruction, its fences and waits, the shared-memory matrix descriptors (128-byte
// swizzle) and the accumulator store. Device functions only (inlined where used).
#pragma once
#include "common.cuh"

typedef __nv_bfloat16 bf16;

#define WG_BM 128
#define WG_BK 64

// Dynamic shared memory of every wgmma kernel (the launcher asks for 1 KiB more than the stages
// need, so that tiles can start on 1024-byte boundaries, as the swizzle requires).
extern __shared__ __align__(1024) unsigned char wg_smem[];

// TA, TB: the instruction's transpose immediates (0: the operand is K-major in shared memory; 1:
// MN-major, which wgmma takes for 16-bit types).
template <int TA = 0, int TB = 0>
__device__ __forceinline__ void wgmma_m64n256k16(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, %131, %132;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keeps the compiler from moving reads or writes of an accumulator across a wgmma wait.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Shared-memory matrix descriptor: K-major operand, 128-byte swizzle, rows of 64 bf16 (128 bytes),
// 8-row groups 1024 bytes apart (stride byte offset); the leading byte offset is unused in this
// mode (1 by convention). The start address must lie in a 1024-byte aligned tile; advancing k by 16
// elements inside the tile adds 32 bytes to it.
__device__ __forceinline__ u64 desc_kmajor_sw128(unsigned smem_addr) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)1 << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

// Shared-memory matrix descriptor: MN-major operand, 128-byte swizzle, as the tensor copy engine
// writes a box of 64 (M or N, contiguous) x 64 (k) elements: row r (k = r) of 128 bytes at r * 128,
// its 16-byte chunk c at c ^ (r % 8). The canonical layout (CUTLASS, Major::MN, B128, in 16-byte
// units): ((8, n), (8, k)) : ((1, LBO), (8, SBO)): 64 M/N elements contiguous, the next 64 one box
// further (leading byte offset 8192, the box size), 8 k rows in one 1024-byte swizzle atom, the
// next 8 k rows 1024 bytes further (stride byte offset). Advancing k by 16 adds 2048 bytes.
__device__ __forceinline__ u64 desc_mnmajor_sw128(unsigned smem_addr) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)(8192 >> 4) << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

// Writes one warpgroup's 64 x BN accumulators (rows r0.., columns n0..) as alpha * acc + beta * C.
// Accumulator layout (as mma.sync's m16n8 C fragment, repeated over BN/8): warp w of the
// warpgroup holds rows 16w .. 16w + 15; for each 8-column block j, d[4j], d[4j+1] are row lane/4,
// columns 8j + 2(lane%4) + {0,1}, and d[4j+2], d[4j+3] the same 8 rows below. `t`: the thread's
// index in its warpgroup.
template <int BN>
__device__ __forceinline__ void store_tile(const float* d, int M, int N, float alpha, float beta, float* __restrict__ C,
                                           int r0, int n0, int t) {
    const int w = t / 32, lane = t % 32;
    const int row = r0 + w * 16 + lane / 4;
    const bool pair = (N % 2) == 0;  // with N even, two adjacent outputs are one 8-byte store
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = n0 + j * 8 + (lane % 4) * 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = row + h * 8;
            if (r >= M) continue;
            float v0 = alpha * d[4 * j + 2 * h], v1 = alpha * d[4 * j + 2 * h + 1];
            float* c = C + (i64)r * N + col;
            if (pair && col + 1 < N) {
                if (beta != 0.f) {
                    float2 old = *reinterpret_cast<float2*>(c);
                    v0 += beta * old.x;
                    v1 += beta * old.y;
                }
                *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
            } else {
                if (col < N) c[0] = beta == 0.f ? v0 : v0 + beta * c[0];
                if (col + 1 < N) c[1] = beta == 0.f ? v1 : v1 + beta * c[1];
            }
        }
    }
}
