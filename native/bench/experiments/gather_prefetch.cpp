// A standalone experiment behind the two-level row prefetch of the pooled
// kernels (native/cpu/kernels_cpu.h, kL2Ahead) and of the suite's gather probe
// (native/bench/probes.cpp): a random gather of R-byte rows packed in 1 M rows
// (2 MiB pages), every line a row touches read once, 4 M rows per pass, the
// median of 5 passes. Rows are prefetched into L1 A1 rows ahead and, when
// A2 > 0, into L2 A2 rows ahead first.
//
// On the 2-core EPYC VM (1 thread): 256 B rows 35 ns/row with A1 = 32 alone,
// 19 ns/row with A2 = 80 as well; 128 B 19 -> 6 ns; 72 B 16 -> 6 ns; 40 B
// 10 -> 4 ns. A core has few L1 miss buffers and more L2 ones: L1 prefetches
// alone keep a gather waiting on the former.
// Build and run: g++ -O2 gather_prefetch.cpp -o gp && for r in 256 128 72 40; do ./gp $r 32 0; ./gp $r 32 80; done
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

// always_inline: GCC judges a function that only prefetches free of side
// effects and may delete its calls.
__attribute__((always_inline)) static inline void prefetch_row(const char* p, int64_t bytes, bool l2) {
  if (l2) {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
    __builtin_prefetch(p + bytes - 1, 0, 2);
  } else {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
    __builtin_prefetch(p + bytes - 1, 0, 3);
  }
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ROW_BYTES L1_AHEAD L2_AHEAD(0: none)\n", argv[0]);
    return 2;
  }
  const int64_t row = std::atoi(argv[1]), rows = 1000000, n = 4000000;
  const int64_t a1 = std::atoi(argv[2]), a2 = std::atoi(argv[3]);
  const size_t huge = size_t(2) << 20, bytes = (rows * row + huge) & ~(huge - 1);
  char* t = static_cast<char*>(std::aligned_alloc(huge, bytes));
  madvise(t, bytes, MADV_HUGEPAGE);
  std::memset(t, 1, bytes);
  std::vector<uint32_t> idx(n);
  uint64_t x = 88172645463325252ull;  // xorshift64
  for (auto& i : idx) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    i = static_cast<uint32_t>(x % rows);
  }
  std::vector<double> ts;
  volatile int sink = 0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    int acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (a2 && i + a2 < n) prefetch_row(t + int64_t(idx[i + a2]) * row, row, true);
      if (i + a1 < n) prefetch_row(t + int64_t(idx[i + a1]) * row, row, false);
      const char* p = t + int64_t(idx[i]) * row;
      for (int64_t b = 0; b < row; b += 64) acc += p[b];
      acc += p[row - 1];
    }
    sink = acc;
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  std::printf("row %ld B, L1 ahead %ld, L2 ahead %ld: %.2f ns/row (%.3f ms per 131072 rows)\n", long(row), long(a1),
              long(a2), ts[2] / n * 1e9, ts[2] / n * 131072 * 1e3);
  std::free(t);
  return sink == 42 ? 1 : 0;
}
