// Host/device portability for the per-row code shared by g++ and nvcc.
// Everything under native/include/embedlookup is plain data + raw pointers:
// no allocation, no exceptions, so the same source compiles for CPU and GPU.
#pragma once
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define EL_HD __host__ __device__ __forceinline__
#else
#define EL_HD inline __attribute__((always_inline))
#endif

namespace embedlookup {

// Rows are stored with a stride rounded up to whole 8-float vectors so kernels
// can run full AVX2 (or float4x2) chunks; the padding floats stay zero.
constexpr int64_t kRowAlignFloats = 8;

EL_HD int64_t padded_stride(int64_t dim) {
  return (dim + kRowAlignFloats - 1) / kRowAlignFloats * kRowAlignFloats;
}

}  // namespace embedlookup
