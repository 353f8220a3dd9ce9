// Inverted dropout with the counter-based mask of ops::dropout::mask_value: element i is kept when
// hash_uniform(seed, i) >= p. Backward is the same kernel applied to dy.
#include "common.cuh"

KERNEL void dropout_fwd(const float* __restrict__ x, float* __restrict__ y, i64 n, float p, u64 seed) {
    float keep = 1.f / (1.f - p);
    FOR_EACH(i, n) {
        y[i] = hash_uniform(seed, (u64)i) < p ? 0.f : x[i] * keep;
    }
}
