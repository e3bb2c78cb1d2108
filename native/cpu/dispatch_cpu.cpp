// Runtime choice between the AVX2 and baseline kernel builds, plus the
// ISA-independent helpers (row grouping, machine bandwidth probes).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "../core/huge_alloc.h"
#include "../core/key_index.h"
#include "embedlookup/hash.h"
#include "kernels_cpu.h"

namespace embedlookup {
namespace cpu {

#define EL_DECLARE_ISA(NS)                                                                                     \
  namespace NS {                                                                                               \
  int64_t pool_bags(const RowView&, const KeyIndex&, const int64_t*, uint32_t*, int64_t, const int64_t*, int64_t, \
                    int64_t, int64_t, PoolMode, const float*, float*, int);                                       \
  int64_t gather_rows(const RowView&, const KeyIndex&, const int64_t*, uint32_t*, int64_t, int64_t, float*,       \
                      uint8_t*, int);                                                                             \
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
int64_t first_non_finite(const float* a, int64_t rows, int64_t dim, int64_t stride, int nt) {
  int64_t first = rows;
#pragma omp parallel for num_threads(nt) reduction(min : first) schedule(static) if (rows * dim > 65536)
  for (int64_t i = 0; i < rows; ++i) {
    bool ok = true;
    // x - x is 0 for finite x and NaN for inf/NaN; one branch per row.
    float acc = 0.0f;
    for (int64_t j = 0; j < dim; ++j) acc += a[i * stride + j] - a[i * stride + j];
    ok = acc == 0.0f;
    if (!ok && i < first) first = i;
  }
  return first == rows ? -1 : first;
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

double copy_bandwidth(int64_t bytes, int repeats, int nt) {
  const int64_t n = bytes / 8;
  auto* a = static_cast<double*>(huge_alloc(n * 8));
  auto* b = static_cast<double*>(huge_alloc(n * 8));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = static_cast<double>(i);
  std::vector<double> t;
  for (int r = 0; r < repeats + 1; ++r) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; ++i) b[i] = a[i];
    if (r) t.push_back(seconds_since(t0));  // first pass warms up
  }
  volatile double sink = b[n / 2];
  (void)sink;
  huge_free(a, n * 8);
  huge_free(b, n * 8);
  // STREAM convention: a copy moves 2 x bytes (read + write); the fastest
  // pass, since a limit is a ceiling that other processes only hide.
  return 2.0 * static_cast<double>(n * 8) / *std::min_element(t.begin(), t.end());
}

double gather_bandwidth(int64_t table_bytes, int64_t row_bytes, int64_t n_read, int repeats, int nt) {
  const int64_t rf = std::max<int64_t>(1, row_bytes / 4);
  const int64_t rows = std::max<int64_t>(1, table_bytes / (rf * 4));
  auto* tab = static_cast<float*>(huge_alloc(rows * rf * 4));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < rows * rf; ++i) tab[i] = 1.0f;
  std::vector<uint32_t> idx(n_read);
  uint64_t x = 12345;
  for (auto& i : idx) i = static_cast<uint32_t>((x = mix64(x)) % rows);
  std::vector<double> t;
  float total = 0.0f;
  for (int r = 0; r < repeats + 1; ++r) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
      // A fixed-size local accumulator stays in vector registers, so the
      // probe is limited by memory and not by the adds (a heap-allocated
      // one may alias the rows and made it compute-bound at ~2.5 GB/s/thread).
      float acc[16] = {0.0f};
      // Dynamic chunks: on a shared machine a descheduled thread must not
      // leave the others waiting at the end of a static share.
#pragma omp for schedule(dynamic, 2048)
      for (int64_t i = 0; i < n_read; ++i) {
        if (i + 16 < n_read) {
          const char* p = reinterpret_cast<const char*>(tab + idx[i + 16] * rf);
          for (int64_t b = 0; b < rf * 4; b += 64) __builtin_prefetch(p + b, 0, 3);
        }
        const float* __restrict row = tab + idx[i] * rf;
        int64_t j = 0;
        for (; j + 16 <= rf; j += 16)
          for (int k = 0; k < 16; ++k) acc[k] += row[j + k];
        for (; j < rf; ++j) acc[j & 15] += row[j];
      }
      for (float a : acc) total += a;
    }
    if (r) t.push_back(seconds_since(t0));
  }
  volatile float sink = total;
  (void)sink;
  huge_free(tab, rows * rf * 4);
  // A limit is a ceiling: the fastest pass is the best estimate of what the
  // hardware allows (other processes can only slow a pass down).
  return static_cast<double>(n_read * rf * 4) / *std::min_element(t.begin(), t.end());
}

}  // namespace cpu
}  // namespace embedlookup
