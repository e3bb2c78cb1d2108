// Runtime choice between the AVX2+F16C and baseline builds of the
// compressed-row kernels, and the fused update on fp16 / bf16 rows.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "../structures/key_index.h"
#include "pooling_quantized.h"

namespace embedlookup {
namespace cpu {

#define EL_DECLARE_Q(NS)                                                                                          \
  namespace NS {                                                                                                  \
  int64_t pool_bags_quantized(const RowView&, RowType, const KeyIndex&, const int64_t*, uint32_t*, int64_t,       \
                              const int64_t*, int64_t, int64_t, int64_t, PoolMode, const float*, float*, int);    \
  int64_t gather_rows_quantized(const RowView&, RowType, const KeyIndex&, const int64_t*, uint32_t*, int64_t,     \
                                int64_t, float*, uint8_t*, int);                                                  \
  }
EL_DECLARE_Q(avx2)
EL_DECLARE_Q(generic)
#undef EL_DECLARE_Q

bool has_avx2_f16c() {
  // EMBEDLOOKUP_GENERIC_KERNELS=1 forces the baseline build (read once), so
  // its tests run on AVX2 machines too.
  static const bool yes = [] {
    const char* g = std::getenv("EMBEDLOOKUP_GENERIC_KERNELS");
    const bool forced = g && *g && std::strcmp(g, "0") != 0;
    return !forced && has_avx2() && __builtin_cpu_supports("f16c");
  }();
  return yes;
}
const char* quantized_isa_name() { return has_avx2_f16c() ? "avx2" : "generic"; }

int64_t pool_bags_quantized(const RowView& v, RowType t, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                            int64_t n, const int64_t* off, int64_t n_off, int64_t n_bags, int64_t dim, PoolMode mode,
                            const float* w, float* out, int nt) {
  return (has_avx2_f16c() ? avx2::pool_bags_quantized : generic::pool_bags_quantized)(
      v, t, index, keys, ids, n, off, n_off, n_bags, dim, mode, w, out, nt);
}
int64_t gather_rows_quantized(const RowView& v, RowType t, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                              int64_t n, int64_t dim, float* out, uint8_t* found, int nt) {
  return (has_avx2_f16c() ? avx2::gather_rows_quantized : generic::gather_rows_quantized)(v, t, index, keys, ids, n,
                                                                                          dim, out, found, nt);
}

void fused_update_quantized(const RowView& v, RowType t, RowArena* state, const int64_t* row_keys,
                            const uint32_t* ids, int64_t n, const GradSource& g, int64_t dim, const OptimSpec& o,
                            const StepScalars& c, int64_t step, uint64_t seed, int nthreads) {
  if (n <= 0) return;
  // Occurrences ordered by (seqlock stripe, row id, position): a stripe's rows
  // are contiguous, so splitting at stripe boundaries gives each stripe one
  // writing thread (row_seqlock.h), and each row's gradient is summed in
  // ascending position order (the same sum for any thread count).
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto sort_key = [&](int64_t i) {
    return (static_cast<uint64_t>(RowSeqlock::stripe_of(ids[i])) << 32) | ids[i];
  };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sort_key(a) < sort_key(b); });
  // Group starts (one per distinct row) and thread ranges cut at stripe changes.
  std::vector<int64_t> group;
  for (int64_t k = 0; k < n; ++k)
    if (k == 0 || ids[order[k]] != ids[order[k - 1]]) group.push_back(k);
  const int64_t ng = static_cast<int64_t>(group.size());
  group.push_back(n);
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, ng / 256 + 1)));
  std::vector<int64_t> cut(nt + 1, ng);
  cut[0] = 0;
  for (int u = 1; u < nt; ++u) {
    int64_t at = std::max(cut[u - 1], ng * u / nt);
    while (at > cut[u - 1] && at < ng &&
           RowSeqlock::stripe_of(ids[order[group[at]]]) == RowSeqlock::stripe_of(ids[order[group[at - 1]]]))
      ++at;
    cut[u] = at;
  }
  const RowSeqlock::BatchWrite batch(*v.seq);
#pragma omp parallel num_threads(nt)
  {
    const int u = omp_get_thread_num();
    std::vector<float> w(dim), grad(dim);
    for (int64_t q = cut[u]; q < cut[u + 1]; ++q) {
      const uint32_t id = ids[order[group[q]]];
      std::fill(grad.begin(), grad.end(), 0.0f);
      for (int64_t k = group[q]; k < group[q + 1]; ++k) {
        const int64_t i = order[k];
        const float* src = g.grad + (g.src ? g.src[i] : i) * g.grad_stride;
        const float sc = g.scale ? g.scale[i] : 1.0f;
        for (int64_t j = 0; j < dim; ++j) grad[j] += sc * src[j];
      }
      uint8_t* row = reinterpret_cast<uint8_t*>(v.arena->row(id));
      decode_row(t, row, dim, w.data());
      float* st = state ? state->row(id) : nullptr;
      v.seq->write_begin(id);  // the state changes too: inside the write
      apply_row(o, c, w.data(), st, grad.data(), dim);
      encode_row_sr(t, w.data(), dim, sr_row_hash(row_keys[id], step, seed), row);
      v.seq->write_end(id);
    }
  }
}

}  // namespace cpu
}  // namespace embedlookup
