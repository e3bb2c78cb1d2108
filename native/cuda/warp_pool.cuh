// One warp pools one bag (EmbeddingBag semantics), shared by the kernels that
// read rows from different places (raw rows in a storage type, HBM slots or
// host rows). Lane l owns output columns j0 + 32 c; the bag's rows are found 32
// at a time (one per lane) and broadcast; rows are accumulated in bag order,
// the CPU engine's order.
#pragma once
#include "embedlookup/pooling.h"
#include "launch.cuh"

namespace embedlookup {
namespace cuda {

// row_of(p): the row of position p (any pointer), or null for a zero row.
// elem(row, j): element j of a row, as float.
template <int kCols, class RowOf, class Elem>
__device__ __forceinline__ void warp_pool_bag(int64_t b, int lane, int64_t j0, const int64_t* off, int64_t n_off,
                                              int64_t n, int64_t dim, PoolMode mode, const float* weights,
                                              float* out, RowOf row_of, Elem elem) {
  const int64_t s = clamp64(off[b], 0, n);
  const int64_t e = clamp64(b + 1 < n_off ? off[b + 1] : n, s, n);
  const bool is_max = mode == PoolMode::kMax;
  float acc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) acc[c] = is_max ? -INFINITY : 0.0f;
  for (int64_t p0 = s; p0 < e; p0 += 32) {
    const int cnt = static_cast<int>(e - p0 < 32 ? e - p0 : 32);
    unsigned long long my_row = 0;
    float my_w = 1.0f;
    if (lane < cnt) {
      my_row = reinterpret_cast<unsigned long long>(row_of(p0 + lane));
      if (weights) my_w = weights[p0 + lane];
    }
    for (int k = 0; k < cnt; ++k) {
      const auto* row = reinterpret_cast<const void*>(__shfl_sync(kFullMask, my_row, k));
      const float w = __shfl_sync(kFullMask, my_w, k);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t j = j0 + 32 * c;
        const float x = (row && j < dim) ? elem(row, j) : 0.0f;  // missing: a zero row
        if (is_max) acc[c] = x > acc[c] ? x : acc[c];
        else if (weights) acc[c] += w * x;
        else acc[c] += x;
      }
    }
  }
  const float scale = (mode == PoolMode::kMean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int64_t j = j0 + 32 * c;
    if (j >= dim) continue;
    float v = acc[c];
    if (e == s) v = 0.0f;
    else if (mode == PoolMode::kMean) v = v * scale;
    out[b * dim + j] = v;
  }
}

}  // namespace cuda
}  // namespace embedlookup
