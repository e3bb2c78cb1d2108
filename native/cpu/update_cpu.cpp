// Dispatch of the fused update to the ISA build the CPU supports, and the
// ISA-independent helpers of pooled backward (bag positions, max argmax).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../structures/key_index.h"
#include "update_cpu.h"

namespace embedlookup {
namespace cpu {

#define EL_DECLARE_UPDATE_ISA(NS)                                                                             \
  namespace NS {                                                                                              \
  void fused_update(const RowView&, RowArena*, const uint32_t*, int64_t, const GradSource&, int64_t,           \
                    const OptimSpec&, const StepScalars&, int, const VersionStamp*);                         \
  }
EL_DECLARE_UPDATE_ISA(avx2)
EL_DECLARE_UPDATE_ISA(generic)
#undef EL_DECLARE_UPDATE_ISA

void fused_update(const RowView& v, RowArena* state, const uint32_t* ids, int64_t n, const GradSource& g,
                  int64_t dim, const OptimSpec& o, const StepScalars& c, int nt, const VersionStamp* stamp) {
  (has_avx2() ? avx2::fused_update : generic::fused_update)(v, state, ids, n, g, dim, o, c, nt, stamp);
}

// Tuning, measured on a 2-core EPYC with 1 M x 64 rows (interleaved A/B, 1
// thread): early prefetch at group creation plus 12 rows ahead in the apply
// pass (applying each partition's rows in sorted id order gained nothing).
namespace {
int threads_for(int nthreads, int64_t work) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, work / 4096 + 1)));
}
// Bag b spans [off[b], end_of(b)).
inline int64_t bag_end(const int64_t* off, int64_t n_off, int64_t b, int64_t n) {
  return b + 1 < n_off ? off[b + 1] : n;
}
}  // namespace

void bag_positions(const int64_t* off, int64_t n_off, int64_t n_bags, int64_t n, PoolMode mode, const float* w,
                   int64_t* bag_of, float* scale, int nthreads) {
  // Positions not covered by any bag cannot occur after the Python checks
  // (offsets[0] == 0, last bag runs to n), but stay well defined: -1, scale 0.
  const int64_t first = n_bags > 0 ? off[0] : n;
  for (int64_t p = 0; p < std::min(first, n); ++p) {
    bag_of[p] = -1;
    if (scale) scale[p] = 0.0f;
  }
#pragma omp parallel for num_threads(threads_for(nthreads, n)) schedule(static)
  for (int64_t b = 0; b < n_bags; ++b) {
    const int64_t s = off[b], e = bag_end(off, n_off, b, n);
    const float inv = e > s ? 1.0f / static_cast<float>(e - s) : 0.0f;
    for (int64_t p = s; p < e; ++p) {
      bag_of[p] = b;
      if (scale) scale[p] = mode == PoolMode::kMean ? inv : (w ? w[p] : 1.0f);
    }
  }
  const int64_t last = n_bags > 0 ? bag_end(off, n_off, n_bags - 1, n) : n;
  for (int64_t p = std::max(last, first); p < n; ++p) {
    bag_of[p] = -1;
    if (scale) scale[p] = 0.0f;
  }
}

void pool_max_argmax(const RowView& v, const uint32_t* ids, int64_t n, const int64_t* off, int64_t n_off,
                     int64_t n_bags, int64_t dim, float* out, int64_t* argmax, int nthreads) {
#pragma omp parallel for num_threads(threads_for(nthreads, n)) schedule(dynamic, 64)
  for (int64_t b = 0; b < n_bags; ++b) {
    const int64_t s = off[b], e = bag_end(off, n_off, b, n);
    float* o = out + b * dim;
    int64_t* a = argmax + b * dim;
    for (;;) {
      for (int64_t j = 0; j < dim; ++j) {
        o[j] = 0.0f;  // empty bags give zeros, as torch
        a[j] = -1;
      }
      bool consistent = true;
      for (int64_t p = s; p < e; ++p) {
        const uint32_t id = ids[p];
        const bool real = id < kTombstone;
        const float* row = real ? v.arena->row(id) : v.zero_row;
        const uint32_t s0 = real ? v.seq->read_begin(id) : 0;
        // First position wins ties (strict >), as torch's CPU EmbeddingBag.
        for (int64_t j = 0; j < dim; ++j)
          if (a[j] < 0 || row[j] > o[j]) {
            o[j] = row[j];
            a[j] = p;
          }
        if (real && !v.seq->read_valid(id, s0)) {
          consistent = false;
          break;
        }
      }
      if (consistent) break;
    }
  }
}

void max_pool_grad(const int64_t* argmax, const float* grad_out, int64_t n_bags, int64_t dim, int64_t out_stride,
                   int64_t n, float* grad, int nthreads) {
  std::memset(grad, 0, sizeof(float) * static_cast<size_t>(n) * dim);
  // Bags own disjoint positions, so threads splitting by bag never collide.
#pragma omp parallel for num_threads(threads_for(nthreads, n_bags * dim / 16)) schedule(static)
  for (int64_t b = 0; b < n_bags; ++b)
    for (int64_t j = 0; j < dim; ++j) {
      const int64_t p = argmax[b * dim + j];
      if (p >= 0 && p < n) grad[p * dim + j] += grad_out[b * out_stride + j];
    }
}

}  // namespace cpu
}  // namespace embedlookup
