// Kernel bodies, included once per instruction set with EL_ISA_NS set.
// Row strides are multiples of 8 floats (padding is zero), so inner loops run
// whole 8-float vectors; the fixed-stride instantiations unroll completely.
#include <omp.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../structures/key_index.h"
#include "kernels_cpu.h"

namespace embedlookup {
namespace cpu {
namespace EL_ISA_NS {

namespace {

// The index probe of the kernels. The AVX2 build compares a bucket's keys
// with one vector compare: fewer instructions per key than the scalar probe,
// so more probes fit in the out-of-order window (measured ~2x on 1 M keys).
__attribute__((always_inline)) inline uint32_t probe(const KeyIndex& index, size_t b, int64_t key) {
#ifdef __AVX2__
  const __m256i k4 = _mm256_set1_epi64x(key);
  for (;;) {
    const IndexBucket& bk = index.bucket(b);
    const __m256i keys = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk.keys));
    unsigned eq = static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(keys, k4))));
    eq |= static_cast<unsigned>(bk.keys[4] == key) << 4;
    // A matching slot is live unless its key was erased (a tombstone keeps the
    // key, and a re-insert may sit further on): only the matches are checked,
    // which keeps the hit path to one compare of the keys.
    while (eq) {
      const uint32_t r = bk.rows[__builtin_ctz(eq)];
      if (__builtin_expect(r < kTombstone, 1)) return r;
      eq &= eq - 1;
    }
    const __m128i rows = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bk.rows));
    unsigned empty = static_cast<unsigned>(
        _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(rows, _mm_set1_epi32(-1)))));
    empty |= static_cast<unsigned>(bk.rows[4] == kNoRow) << 4;
    if (empty) return kNoRow;
    b = index.next_bucket(b);
  }
#else
  return index.find_from(b, key);
#endif
}

// always_inline on purpose: GCC deems a function whose only effect is
// __builtin_prefetch "const" and deletes calls to it before inlining.
// Missing keys prefetch the zero row (branch-free).
__attribute__((always_inline)) inline void prefetch_row(const RowView& v, uint32_t id, int64_t stride) {
  const char* p = reinterpret_cast<const char*>(id < kTombstone ? v.arena->row(id) : v.zero_row);
  for (int64_t b = 0; b < stride * 4; b += 64) __builtin_prefetch(p + b, 0, 3);
}

// Resolves keys to row ids a fixed distance ahead of their use: the index
// bucket of key p + 2A is prefetched, key p + A is probed (its bucket is in
// cache by then) and its row prefetched, so index and row misses overlap in
// one pipelined pass. ids[] keeps the resolved ids for bag retries.
struct Resolver {
  const KeyIndex& index;
  const RowView& v;
  const int64_t* keys;
  uint32_t* ids;
  int64_t end, stride, next_probe, next_resolve, missing = 0;
  // Home buckets hashed at prefetch time, reused by the probe A positions later.
  static constexpr int64_t kRing = 256;
  size_t home[kRing];
  __attribute__((always_inline)) void advance(int64_t p) {
    if (!keys) {  // ids given (pool_bags with keys == nullptr): only the rows to prefetch
      const int64_t resolve_to = std::min(end, p + kPrefetchAhead + 1);
      for (; next_resolve < resolve_to; ++next_resolve) {
        missing += ids[next_resolve] >= kTombstone;
        prefetch_row(v, ids[next_resolve], stride);
      }
      return;
    }
    const int64_t probe_to = std::min(end, p + kPrefetchAhead + kProbeAhead + 1);
    for (; next_probe < probe_to; ++next_probe) {
      const size_t b = index.home(keys[next_probe]);
      home[next_probe & (kRing - 1)] = b;
      index.prefetch_bucket(b);
    }
    const int64_t resolve_to = std::min(end, p + kPrefetchAhead + 1);
    for (; next_resolve < resolve_to; ++next_resolve) {
      const uint32_t id = probe(index, home[next_resolve & (kRing - 1)], keys[next_resolve]);
      ids[next_resolve] = id;
      missing += id == kNoRow;
      prefetch_row(v, id, stride);
    }
  }
};

// Resolves keys[p0, p1) into ids[] (kNoRow for missing keys; returns how
// many): each key hashed once, its bucket prefetched into L2 kIndexL2Ahead keys
// ahead and into L1 kPrefetchAhead ahead, probes independent of each other.
__attribute__((always_inline)) inline int64_t resolve_range(const KeyIndex& index, const int64_t* keys,
                                                           uint32_t* __restrict ids, int64_t p0, int64_t p1) {
  constexpr int64_t kRingSize = 128;
  static_assert(kRingSize > kIndexL2Ahead && (kRingSize & (kRingSize - 1)) == 0, "ring holds the distance");
  size_t home[kRingSize];
  int64_t missing = 0;
  for (int64_t p = p0; p < std::min(p1, p0 + kIndexL2Ahead); ++p) {
    home[p & (kRingSize - 1)] = index.home(keys[p]);
    if (p < p0 + kPrefetchAhead)
      index.prefetch_bucket(home[p & (kRingSize - 1)]);
    else
      index.prefetch_bucket_l2(home[p & (kRingSize - 1)]);
  }
  for (int64_t p = p0; p < p1; ++p) {
    if (p + kIndexL2Ahead < p1) {
      const size_t h = index.home(keys[p + kIndexL2Ahead]);
      home[(p + kIndexL2Ahead) & (kRingSize - 1)] = h;
      index.prefetch_bucket_l2(h);
    }
    if (p + kPrefetchAhead < p1) index.prefetch_bucket(home[(p + kPrefetchAhead) & (kRingSize - 1)]);
    const uint32_t id = probe(index, home[p & (kRingSize - 1)], keys[p]);
    ids[p] = id;
    missing += id == kNoRow;
  }
  return missing;
}

// Prefetches the row of id (the zero row for a missing key) into L1
// (Locality 3) or L2 (2).
template <int Locality>
__attribute__((always_inline)) inline void prefetch_row_at(const ArenaView& arena, const float* zero, uint32_t id,
                                                           int64_t stride) {
  const char* q = reinterpret_cast<const char*>(id < kTombstone ? arena.row(id) : zero);
  for (int64_t c = 0; c < stride * 4; c += 64) __builtin_prefetch(q + c, 0, Locality);
}

// The first rows of a chunk's row pass, [p0, p0 + kL2Ahead): the first
// kL1Ahead into L1, the rest into L2; the pass itself keeps both distances.
__attribute__((always_inline)) inline void prefetch_first_rows(const ArenaView& arena, const float* zero,
                                                               const uint32_t* ids, int64_t p0, int64_t p1,
                                                               int64_t stride) {
  for (int64_t p = p0; p < std::min(p1, p0 + kL2Ahead); ++p) {
    if (p < p0 + kL1Ahead)
      prefetch_row_at<3>(arena, zero, ids[p], stride);
    else
      prefetch_row_at<2>(arena, zero, ids[p], stride);
  }
}

typedef float v8f __attribute__((vector_size(32), aligned(4)));

// Fixed-stride variant: the bag accumulator lives in S/8 vector registers.
template <int S, PoolMode M, bool W>
int64_t pool_range_reg(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* __restrict ids,
                       const int64_t* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1, int64_t dim,
                       const float* __restrict w, float* __restrict out) {
  constexpr int V = S / 8;
  const ArenaView arena = v.arena->view();
  const int64_t p_first = b0 < b1 ? off[b0] : 0;
  const int64_t p_last = (b1 < n_off) ? off[b1] : n;
  // Two passes over the chunk: resolve every key (index buckets prefetched
  // ahead, probes independent of each other), then pool with the rows
  // prefetched ahead from the resolved ids. Measured faster here than one
  // pipelined pass, where each row prefetch waits on its own index probe.
  int64_t pre_missing = 0;
  if (keys) {  // the index pass
    pre_missing = resolve_range(index, keys, ids, p_first, p_last);
  } else {  // ids given: no index pass
    for (int64_t p = p_first; p < p_last; ++p) pre_missing += ids[p] >= kTombstone;
  }
  // The pool pass prefetches rows on two levels (kernels_cpu.h).
  prefetch_first_rows(arena, v.zero_row, ids, p_first, p_last, S);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = off[b];
    const int64_t e = (b + 1 < n_off) ? off[b + 1] : n;
    v8f acc[V];
    // Per-row checks only while a batch update runs (row_seqlock.h).
    const uint32_t batch0 = v.seq->batch_begin();
    bool check_rows = (batch0 & 1u) != 0;
    for (;;) {
      const float init = (M == PoolMode::kMax) ? -INFINITY : 0.0f;
      for (int k = 0; k < V; ++k) acc[k] = v8f{init, init, init, init, init, init, init, init};
      bool consistent = true;
      for (int64_t p = s; p < e; ++p) {
        if (p + kL2Ahead < p_last) prefetch_row_at<2>(arena, v.zero_row, ids[p + kL2Ahead], S);
        if (p + kL1Ahead < p_last) prefetch_row_at<3>(arena, v.zero_row, ids[p + kL1Ahead], S);
        const uint32_t id = ids[p];
        const bool real = id < kTombstone;
        const v8f* row = reinterpret_cast<const v8f*>(real ? arena.row(id) : v.zero_row);
        const uint32_t seq0 = (check_rows && real) ? v.seq->read_begin(id) : 0;
        if (M == PoolMode::kMax) {
          for (int k = 0; k < V; ++k) acc[k] = row[k] > acc[k] ? row[k] : acc[k];
        } else if (W) {
          const float x = w[p];
          for (int k = 0; k < V; ++k) acc[k] += x * row[k];
        } else {
          for (int k = 0; k < V; ++k) acc[k] += row[k];
        }
        if (check_rows && real && !v.seq->read_valid(id, seq0)) {
          consistent = false;
          break;
        }
      }
      if (consistent && !check_rows && !v.seq->batch_valid(batch0)) {
        consistent = false;  // an update started meanwhile: re-read with per-row checks
        check_rows = true;
      }
      if (consistent) break;
    }
    // Stored through a separate buffer: taking acc's address would keep the
    // accumulator in memory instead of registers for the whole bag loop.
    alignas(32) float a[S];
    const float scale = (e == s) ? 0.0f : (M == PoolMode::kMean ? 1.0f / static_cast<float>(e - s) : 1.0f);
    for (int k = 0; k < V; ++k) {
      const v8f x = (e == s) ? v8f{} : acc[k] * scale;
      __builtin_memcpy(a + 8 * k, &x, sizeof(v8f));
    }
    float* o = out + b * dim;
    for (int64_t j = 0; j < dim; ++j) o[j] = a[j];
  }
  return pre_missing;
}

template <int S, PoolMode M, bool W>
int64_t pool_range(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* __restrict ids,
                   const int64_t* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1, int64_t dim,
                   int64_t rt_stride, const float* __restrict w, float* __restrict out) {
  const int64_t stride = S ? S : rt_stride;
  std::vector<float> acc_buf(stride + 16);
  float* __restrict acc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(acc_buf.data()) + 63) & ~uintptr_t(63));
  const int64_t p_first = b0 < b1 ? off[b0] : 0;
  const int64_t p_last = (b1 < n_off) ? off[b1] : n;  // end of this thread's positions
  Resolver r{index, v, keys, ids, p_last, stride, p_first, p_first, 0, {}};
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = off[b];
    const int64_t e = (b + 1 < n_off) ? off[b + 1] : n;
    const uint32_t batch0 = v.seq->batch_begin();
    bool check_rows = (batch0 & 1u) != 0;
    for (;;) {
      const float init = (M == PoolMode::kMax) ? -INFINITY : 0.0f;
      for (int64_t j = 0; j < stride; ++j) acc[j] = init;
      bool consistent = true;
      for (int64_t p = s; p < e; ++p) {
        r.advance(p);
        const uint32_t id = ids[p];
        const bool real = id < kTombstone;
        const float* __restrict row = real ? v.arena->row(id) : v.zero_row;
        const uint32_t seq0 = (check_rows && real) ? v.seq->read_begin(id) : 0;
        if (M == PoolMode::kMax) {
          for (int64_t j = 0; j < stride; ++j) acc[j] = row[j] > acc[j] ? row[j] : acc[j];
        } else if (W) {
          const float x = w[p];
          for (int64_t j = 0; j < stride; ++j) acc[j] += x * row[j];
        } else {
          for (int64_t j = 0; j < stride; ++j) acc[j] += row[j];
        }
        if (check_rows && real && !v.seq->read_valid(id, seq0)) {
          consistent = false;  // a writer touched this row mid-read: redo the bag
          break;
        }
      }
      if (consistent && !check_rows && !v.seq->batch_valid(batch0)) {
        consistent = false;  // an update started meanwhile: re-read with per-row checks
        check_rows = true;
      }
      if (consistent) break;
    }
    float* o = out + b * dim;
    if (e == s) {
      for (int64_t j = 0; j < dim; ++j) o[j] = 0.0f;
    } else if (M == PoolMode::kMean) {
      const float inv = 1.0f / static_cast<float>(e - s);
      for (int64_t j = 0; j < dim; ++j) o[j] = acc[j] * inv;
    } else {
      for (int64_t j = 0; j < dim; ++j) o[j] = acc[j];
    }
  }
  return r.missing;
}

template <int S>
int64_t pool_range_mode(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                        const int64_t* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1, int64_t dim,
                        int64_t stride, PoolMode mode, const float* w, float* out) {
#define EL_POOL(M, W)                                                                       \
  ((S > 0 && S <= 64) ? pool_range_reg<(S > 0 && S <= 64 ? S : 8), M, W>(v, index, keys, ids, off, n_off, n, b0, b1, dim, w, out) \
                       : pool_range<S, M, W>(v, index, keys, ids, off, n_off, n, b0, b1, dim, stride, w, out))
  if (mode == PoolMode::kMax) return EL_POOL(PoolMode::kMax, false);
  if (mode == PoolMode::kMean) return EL_POOL(PoolMode::kMean, false);
  if (w) return EL_POOL(PoolMode::kSum, true);
  return EL_POOL(PoolMode::kSum, false);
#undef EL_POOL
}

}  // namespace

int64_t pool_bags(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n,
                  const int64_t* off, int64_t n_off, int64_t n_bags, int64_t dim, PoolMode mode, const float* w,
                  float* out, int nthreads) {
  const int64_t stride = v.arena->stride();
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 1024 + 1)));
  int64_t missing = 0;
  // Chunks of ~kChunkKeys key positions, cut at bag boundaries, handed out
  // dynamically: skewed bags balance, and a thread that the OS deschedules
  // (a loaded machine) does not hold the others at the barrier.
  const int64_t n_chunks = std::max<int64_t>(1, (n + kChunkKeys - 1) / kChunkKeys);
  auto bag_at = [&](int64_t pos_target) {
    return static_cast<int64_t>(std::lower_bound(off, off + n_bags, pos_target) - off);
  };
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(+ : missing)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t b0 = c == 0 ? 0 : bag_at(n * c / n_chunks);
    const int64_t b1 = c == n_chunks - 1 ? n_bags : bag_at(n * (c + 1) / n_chunks);
    if (b0 >= b1) continue;
#define EL_CASE(S) \
  case S: missing += pool_range_mode<S>(v, index, keys, ids, off, n_off, n, b0, b1, dim, stride, mode, w, out); break;
    switch (stride) {
      EL_CASE(8) EL_CASE(16) EL_CASE(32) EL_CASE(64) EL_CASE(128)
      default: missing += pool_range_mode<0>(v, index, keys, ids, off, n_off, n, b0, b1, dim, stride, mode, w, out);
    }
#undef EL_CASE
  }
  return missing;
}

int64_t gather_rows(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n,
                    int64_t dim, float* out, uint8_t* found, int nthreads) {
  const int64_t stride = v.arena->stride();
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 1024 + 1)));
  int64_t missing = 0;
  const int64_t n_chunks = std::max<int64_t>(1, (n + kChunkKeys - 1) / kChunkKeys);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(+ : missing)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t p0 = n * c / n_chunks, p1 = n * (c + 1) / n_chunks;
    // Two passes, as the pooled kernel: the chunk's ids, then its rows copied
    // out with each prefetched into L2 kL2Ahead keys ahead and into L1 kL1Ahead.
    missing += resolve_range(index, keys, ids, p0, p1);
    const ArenaView arena = v.arena->view();
    prefetch_first_rows(arena, v.zero_row, ids, p0, p1, stride);
    for (int64_t i = p0; i < p1; ++i) {
      if (i + kL2Ahead < p1) prefetch_row_at<2>(arena, v.zero_row, ids[i + kL2Ahead], stride);
      if (i + kL1Ahead < p1) prefetch_row_at<3>(arena, v.zero_row, ids[i + kL1Ahead], stride);
      const uint32_t id = ids[i];
      float* o = out + i * dim;
      if (found) found[i] = id < kTombstone;
      if (id >= kTombstone) {
        std::memset(o, 0, sizeof(float) * dim);
        continue;
      }
      const float* row = arena.row(id);
      for (;;) {
        const uint32_t s0 = v.seq->read_begin(id);
        std::memcpy(o, row, sizeof(float) * dim);
        if (v.seq->read_valid(id, s0)) break;
      }
    }
  }
  return missing;
}

int64_t resolve_keys(const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n, int nthreads) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 4096 + 1)));
  const int64_t n_chunks = std::max<int64_t>(1, (n + kChunkKeys - 1) / kChunkKeys);
  int64_t missing = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(+ : missing)
  for (int64_t c = 0; c < n_chunks; ++c) missing += resolve_range(index, keys, ids, n * c / n_chunks, n * (c + 1) / n_chunks);
  return missing;
}

}  // namespace EL_ISA_NS
}  // namespace cpu
}  // namespace embedlookup
