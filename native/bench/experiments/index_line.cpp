// A standalone experiment behind docs/engine.md ("What the fourth session
// measured"): what a separate index line costs next to a 4-line (256 B) row,
// by the size of the region it comes from and by the prefetch hints.
// 131072 accesses, each reading one random row of a 320 MiB region (2 MiB
// pages, prefetched 16 accesses ahead) plus, unless S = 0, one random line of
// an "index" region of S bytes (prefetched 32 ahead, read 16 ahead: the shape
// of a hash probe that resolves a row id). Prints the median of 41 calls.
// Build and run:
//   g++ -O3 -mavx2 -mfma -fopenmp index_line.cpp -o il && ./il 2
// Arguments: threads [row hint: t0|nta|t1|t2] [index hint: t0|nta|t1|t2]
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL; x ^= x >> 27; x *= 0x94d049bb133111ebULL; x ^= x >> 31;
  return x;
}
static void* huge(size_t b) {
  const size_t h = size_t(2) << 20;
  void* p = mmap(nullptr, b + h, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(1); }
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + h - 1) & ~uintptr_t(h - 1);
  madvise(reinterpret_cast<void*>(a), b, MADV_HUGEPAGE);
  memset(reinterpret_cast<void*>(a), 1, b);
  return reinterpret_cast<void*>(a);
}
// The hint must be a compile-time constant: one branch per hint.
static inline void pf(const char* p, int hint) {
  switch (hint) {
    case 1: _mm_prefetch(p, _MM_HINT_NTA); break;
    case 2: _mm_prefetch(p, _MM_HINT_T1); break;
    case 3: _mm_prefetch(p, _MM_HINT_T2); break;
    default: _mm_prefetch(p, _MM_HINT_T0);
  }
}
static int hint_of(const char* s) {
  if (!strcmp(s, "nta")) return 1;
  if (!strcmp(s, "t1")) return 2;
  if (!strcmp(s, "t2")) return 3;
  return 0;
}

int main(int argc, char** argv) {
  const int nt = argc > 1 ? atoi(argv[1]) : 2;
  const int row_hint = argc > 2 ? hint_of(argv[2]) : 0, ix_hint = argc > 3 ? hint_of(argv[3]) : 0;
  const int64_t n = 131072;
  const size_t region = size_t(320) << 20;
  char* rows = static_cast<char*>(huge(region));
  char* ix = static_cast<char*>(huge(size_t(64) << 20));
  std::vector<uint64_t> off(n), ioff(n);
  auto run = [&](size_t S) {
    uint64_t x = 7;
    for (int64_t i = 0; i < n; i++) {
      off[i] = ((x = mix64(x)) % (region / 256)) * 256;
      ioff[i] = S ? ((x = mix64(x)) % (S / 64)) * 64 : 0;
    }
    std::vector<double> ts;
    for (int rep = 0; rep < 41; rep++) {
      const auto t0 = std::chrono::steady_clock::now();
      float tot = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(+ : tot)
      for (int c = 0; c < 32; c++) {
        const int64_t p0 = c * (n / 32), p1 = p0 + n / 32;
        __m256 a = _mm256_setzero_ps();
        int64_t acc = 0;
        for (int64_t p = p0; p < p1; p++) {
          if (S && p + 32 < p1) pf(ix + ioff[p + 32], ix_hint);
          if (S && p + 16 < p1) acc += *reinterpret_cast<const int64_t*>(ix + ioff[p + 16]);
          if (p + 16 < p1)
            for (int l = 0; l < 4; l++) pf(rows + off[p + 16] + 64 * l, row_hint);
          const char* r = rows + off[p];
          for (int l = 0; l < 8; l++) a = _mm256_add_ps(a, _mm256_loadu_ps(reinterpret_cast<const float*>(r + 32 * l)));
        }
        float t[8];
        _mm256_storeu_ps(t, a);
        tot += t[0] + static_cast<float>(acc);
      }
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (tot == 12345.f) printf(" ");  // keeps the sums alive
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2] * 1e3;
  };
  for (int round = 0; round < 2; round++)
    for (size_t S : {size_t(0), size_t(4) << 10, size_t(256) << 10, size_t(1) << 20, size_t(8) << 20, size_t(32) << 20})
      printf("threads=%d rows=%s index=%s index region %6zu KiB: %.3f ms\n", nt, argc > 2 ? argv[2] : "t0",
             argc > 3 ? argv[3] : "t0", S >> 10, run(S));
}
