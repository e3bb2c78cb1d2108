// Runtime choice between the AVX2 and baseline kernel builds, plus the
// ISA-independent helpers.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "../structures/key_index.h"
#include "kernels_cpu.h"

namespace embedlookup {
namespace cpu {

#define EL_DECLARE_ISA(NS)                                                                                     \
  namespace NS {                                                                                               \
  int64_t pool_bags(const RowView&, const KeyIndex&, const int64_t*, uint32_t*, int64_t, const int64_t*, int64_t, \
                    int64_t, int64_t, PoolMode, const float*, float*, int);                                       \
  int64_t gather_rows(const RowView&, const KeyIndex&, const int64_t*, uint32_t*, int64_t, int64_t, float*,       \
                      uint8_t*, int);                                                                             \
  int64_t resolve_keys(const KeyIndex&, const int64_t*, uint32_t*, int64_t, int);                              \
  }
EL_DECLARE_ISA(avx2)
EL_DECLARE_ISA(generic)

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
const char* isa_name() { return has_avx2() ? "avx2" : "generic"; }

int64_t pool_bags(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n,
                  const int64_t* off, int64_t n_off, int64_t n_bags, int64_t dim, PoolMode mode, const float* w,
                  float* out, int nt) {
  return (has_avx2() ? avx2::pool_bags : generic::pool_bags)(v, index, keys, ids, n, off, n_off, n_bags, dim, mode,
                                                             w, out, nt);
}
int64_t gather_rows(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n,
                    int64_t dim, float* out, uint8_t* found, int nt) {
  return (has_avx2() ? avx2::gather_rows : generic::gather_rows)(v, index, keys, ids, n, dim, out, found, nt);
}
int64_t resolve_keys(const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n, int nt) {
  return (has_avx2() ? avx2::resolve_keys : generic::resolve_keys)(index, keys, ids, n, nt);
}
GradScan scan_grads(const float* a, int64_t rows, int64_t dim, int64_t stride, int nt) {
  // On the bit patterns: |x| is the pattern without its sign bit, patterns of
  // non-negative floats order like integers, and x is NaN or inf exactly when
  // that pattern is >= 0x7F800000. So one integer max per row answers both
  // questions, and an integer reduction vectorizes where a float one may not.
  int64_t first = rows;
  uint32_t m = 0;
#pragma omp parallel for num_threads(nt) reduction(min : first) reduction(max : m) schedule(static) if (rows * dim > 65536)
  for (int64_t i = 0; i < rows; ++i) {
    const uint32_t* r = reinterpret_cast<const uint32_t*>(a + i * stride);
    uint32_t mi = 0;
    for (int64_t j = 0; j < dim; ++j) mi = std::max(mi, r[j] & 0x7FFFFFFFu);
    if (mi >= 0x7F800000u) {
      if (i < first) first = i;
    } else {
      m = std::max(m, mi);
    }
  }
  float mf;
  std::memcpy(&mf, &m, sizeof mf);
  return {first == rows ? -1 : first, mf};
}

double sum_abs(const float* x, int64_t n, int nt) {
  double s = 0.0;
#pragma omp parallel for num_threads(nt) reduction(+ : s) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) s += std::fabs(x[i]);
  return s;
}

void pool_rows(const float* rows, int64_t stride, const int64_t* idx, int64_t n, const int64_t* off, int64_t n_bags,
               int64_t dim, PoolMode mode, const float* w, float* out, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (n * dim > 65536)
  for (int64_t b = 0; b < n_bags; ++b) {
    const int64_t lo = off[b], hi = b + 1 < n_bags ? off[b + 1] : n;
    float* o = out + b * dim;
    if (lo >= hi) {
      std::fill(o, o + dim, 0.0f);
      continue;
    }
    const float* r0 = rows + idx[lo] * stride;
    const float w0 = w ? w[lo] : 1.0f;
    for (int64_t d = 0; d < dim; ++d) o[d] = w0 * r0[d];
    for (int64_t j = lo + 1; j < hi; ++j) {
      if (j + 4 < hi) __builtin_prefetch(rows + idx[j + 4] * stride);
      const float* r = rows + idx[j] * stride;
      if (mode == PoolMode::kMax) {
        for (int64_t d = 0; d < dim; ++d) o[d] = std::max(o[d], r[d]);
      } else {
        const float wj = w ? w[j] : 1.0f;
        for (int64_t d = 0; d < dim; ++d) o[d] += wj * r[d];
      }
    }
    if (mode == PoolMode::kMean) {
      const float inv = 1.0f / static_cast<float>(hi - lo);
      for (int64_t d = 0; d < dim; ++d) o[d] *= inv;
    }
  }
}

}  // namespace cpu
}  // namespace embedlookup
