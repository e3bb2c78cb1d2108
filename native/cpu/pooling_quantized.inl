// Bodies of the compressed-row kernels, included once per instruction set
// with EL_ISA_NS set (pooling_quantized.h says what they compute). Built with
// -ffp-contract=off: products that must round on their own (int8/int4
// values, as the reference computes them) stay unfused; the pooled sums use
// explicit fused multiply-adds.
#include <omp.h>
#ifdef __AVX2__
#include <immintrin.h>

#include "embedlookup/simd_mul64.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../structures/key_index.h"
#include "pooling_quantized.h"

namespace embedlookup {
namespace cpu {
namespace EL_ISA_NS {

namespace {

typedef float v8f __attribute__((vector_size(32), aligned(4)));

__attribute__((always_inline)) inline v8f fmadd(v8f a, v8f b, v8f c) {
#ifdef __AVX2__
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}
__attribute__((always_inline)) inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// Elements [8k, 8k + 8) of a stored row as fp32 (int8/int4: the codes, not
// yet scaled). The row's last partial vector reads padding or the next
// bytes of the arena: callers use only the first dim values.
template <RowType T>
__attribute__((always_inline)) inline v8f load8(const uint8_t* row, int64_t k) {
#ifdef __AVX2__
  if constexpr (T == RowType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * k)));
  } else if constexpr (T == RowType::kBF16) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else if constexpr (T == RowType::kI8) {
    int64_t b;
    std::memcpy(&b, row + 8 * k, 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(b)));
  } else {
    int32_t b;
    std::memcpy(&b, row + 4 * k, 4);
    const __m128i x = _mm_cvtsi32_si128(b);
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
  }
#else
  v8f r;
  for (int j = 0; j < 8; ++j) {
    const int64_t e = 8 * k + j;
    if constexpr (T == RowType::kF16) {
      uint16_t h;
      std::memcpy(&h, row + 2 * e, 2);
      r[j] = f16_to_f32(h);
    } else if constexpr (T == RowType::kBF16) {
      uint16_t h;
      std::memcpy(&h, row + 2 * e, 2);
      r[j] = bf16_to_f32(h);
    } else if constexpr (T == RowType::kI8) {
      r[j] = static_cast<float>(row[e]);
    } else {
      r[j] = static_cast<float>((row[e >> 1] >> ((e & 1) * 4)) & 0xF);
    }
  }
  return r;
#endif
}

// The last, partial vector of a row whose dim is not a multiple of 8: only
// the row's own bytes are read (a full load could run past the arena's end).
template <RowType T>
inline v8f load8_tail(const uint8_t* row, int64_t k, int64_t dim) {
  alignas(16) uint8_t buf[16] = {};
  const int64_t left = dim - 8 * k;
  const int64_t bytes = (T == RowType::kF16 || T == RowType::kBF16) ? 2 * left : (T == RowType::kI8 ? left : left / 2);
  const int64_t at = (T == RowType::kF16 || T == RowType::kBF16) ? 16 * k : (T == RowType::kI8 ? 8 * k : 4 * k);
  std::memcpy(buf, row + at, static_cast<size_t>(bytes));
  return load8<T>(buf, 0);
}
template <RowType T>
__attribute__((always_inline)) inline v8f load_block(const uint8_t* row, int64_t k, int64_t nfull, int64_t dim) {
  return k < nfull ? load8<T>(row, k) : load8_tail<T>(row, k, dim);
}

// int4, elements [16k, 16k + 16) from one 8-byte load: the even elements
// (low nibbles) and the odd ones (high nibbles) as fp32 codes, without the
// nibble interleave; accumulators kept in this split order are interleaved
// once per bag (interleave_pairs).
__attribute__((always_inline)) inline void load16_i4(const uint8_t* row, int64_t k, v8f& even, v8f& odd) {
#ifdef __AVX2__
  // Widened first, then split: a byte widened to 32 bits holds its high
  // nibble in bits 4-7 alone, so a shift needs no mask (one op fewer a half).
  const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 * k)));
  even = _mm256_cvtepi32_ps(_mm256_and_si256(w, _mm256_set1_epi32(0x0F)));
  odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4));
#else
  for (int j = 0; j < 8; ++j) {
    const uint8_t c = row[8 * k + j];
    even[j] = static_cast<float>(c & 0xF);
    odd[j] = static_cast<float>(c >> 4);
  }
#endif
}
// acc[2j], acc[2j + 1] hold the even and odd elements of [16j, 16j + 16):
// rewritten in element order.
inline void interleave_pairs(v8f* acc, int64_t nv) {
  for (int64_t k = 0; k + 1 < nv; k += 2) {
    const v8f e = acc[k], o = acc[k + 1];
    v8f a, b;
    for (int j = 0; j < 4; ++j) {
      a[2 * j] = e[j];
      a[2 * j + 1] = o[j];
      b[2 * j] = e[4 + j];
      b[2 * j + 1] = o[4 + j];
    }
    acc[k] = a;
    acc[k + 1] = b;
  }
}

constexpr bool is_int(RowType t) { return t == RowType::kI8 || t == RowType::kI4; }

#include "index_probe.inl"


// out[i] = index.home(keys[i]) for i < n: hash_key (hash.h) four keys at a
// time in the AVX2 build (a chunk's homes before its pipelined pass).
inline void hash_homes(const KeyIndex& index, const int64_t* keys, int64_t n, size_t* out) {
  int64_t i = 0;
#ifdef __AVX2__
  const uint64_t mask = static_cast<uint64_t>(index.bytes() / sizeof(IndexBucket)) - 1;
  const __m256i golden = _mm256_set1_epi64x(static_cast<int64_t>(0x9e3779b97f4a7c15ULL));
  const __m256i m = _mm256_set1_epi64x(static_cast<int64_t>(mask));
  for (; i + 4 <= n; i += 4) {
    __m256i x = _mm256_add_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i)), golden);
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 30));
    x = mul64_avx2(x, 0xbf58476d1ce4e5b9ULL);
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 27));
    x = mul64_avx2(x, 0x94d049bb133111ebULL);
    x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_and_si256(x, m));
  }
#endif
  for (; i < n; ++i) out[i] = index.home(keys[i]);
}

// Pipeline distances over the flat key stream of a chunk, in keys. At key p:
// the index bucket of key p + kQHash is prefetched; key p + kQL2 is probed
// (its bucket in cache by then) and its row lines prefetched into L2; the row
// of key p + kQL1 is prefetched into L1; key p is decoded and accumulated.
// Two levels because one core has few L1 miss buffers and more L2 ones: with
// L1 prefetches alone a random gather stalls on the first (measured 35 ->
// 19 ns per 256 B row and 10 -> 4 ns per 40 B row, native/bench/experiments/
// gather_prefetch.cpp). Distances chosen by the same measurement.
constexpr int64_t kQL1 = 32;
constexpr int64_t kQL2 = 80;
constexpr int64_t kQHash = 120;

// Resolves the chunk's keys ahead of their use (see kQL2); ids[] keeps the
// resolved ids, so a bag's retry re-reads them. keys == nullptr: ids[] came
// resolved (pool_bags_quantized's contract), nothing is hashed or probed.
struct QResolver {
  const KeyIndex& index;
  const ArenaView arena;
  const char* zero;
  const int64_t* keys;
  uint32_t* ids;
  int64_t end, rb, next_hash, next_probe, next_l1, missing = 0;
  static constexpr int64_t kRing = 128;
  static_assert(kRing > kQL2 && kQL2 > kQL1 && kQHash > kQL2 && (kRing & (kRing - 1)) == 0,
                "the ring holds the distance");
  const size_t* home;  // home[q - first]: the bucket of keys[q] (hash_homes), for the chunk's positions
  int64_t first;
  // The row each probed position reads (the zero row for a missing key):
  // valid for positions in (next_probe - kRing, next_probe).
  const uint8_t* rowp[kRing];
  __attribute__((always_inline)) void hash_one(int64_t q) {
    if (keys) index.prefetch_bucket(home[q - first]);
  }
  // Missing keys prefetch the zero row (branch-free); the row's last byte
  // too, for a row that straddles one more line.
  template <int Locality>
  __attribute__((always_inline)) void prefetch_row(const char* row) const {
    for (int64_t c = 0; c < rb; c += 64) __builtin_prefetch(row + c, 0, Locality);
    __builtin_prefetch(row + rb - 1, 0, Locality);
  }
  __attribute__((always_inline)) void probe_one(int64_t q) {
    const uint32_t id = keys ? probe_index(index, home[q - first], keys[q]) : ids[q];
    if (keys) ids[q] = id;
    missing += id == kNoRow;
    const char* row = id < kTombstone ? reinterpret_cast<const char*>(arena.row(id)) : zero;
    rowp[q & (kRing - 1)] = reinterpret_cast<const uint8_t*>(row);
    prefetch_row<2>(row);
  }
  __attribute__((always_inline)) void l1_one(int64_t q) {
    prefetch_row<3>(reinterpret_cast<const char*>(rowp[q & (kRing - 1)]));
  }
  __attribute__((always_inline)) void advance(int64_t p) {
    // Steady state: one key enters each stage per key used.
    if (__builtin_expect(next_hash == p + kQHash && next_hash < end, 1)) {
      hash_one(next_hash++);
      probe_one(next_probe++);
      l1_one(next_l1++);
      return;
    }
    const int64_t hash_to = std::min(end, p + kQHash + 1);
    for (; next_hash < hash_to; ++next_hash) hash_one(next_hash);
    const int64_t probe_to = std::min(end, p + kQL2 + 1);
    for (; next_probe < probe_to; ++next_probe) probe_one(next_probe);
    const int64_t l1_to = std::min(end, p + kQL1 + 1);
    for (; next_l1 < l1_to; ++next_l1) l1_one(next_l1);
  }
};

// Pools bags [b0, b1) of a chunk. D: the dim when it is a compile-time
// instantiation (accumulators in registers), else 0 (runtime dim, memory
// accumulator). One pipelined pass over the chunk's keys (QResolver).
template <RowType T, PoolMode M, bool W, int D>
int64_t pool_range_q(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* __restrict ids,
                     const int64_t* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1, int64_t rt_dim,
                     const float* __restrict w, float* __restrict out) {
  const int64_t dim = D ? D : rt_dim;
  const int64_t nv = (dim + 7) / 8;  // vectors per row
  const int64_t nfull = dim / 8;     // of them whole
  constexpr int kMaxRegs = 16;
  constexpr int V = D ? (D + 7) / 8 : kMaxRegs;
  // int4 rows of a compile-time dim that is a multiple of 16: accumulators
  // in even / odd element order (load16_i4), interleaved once per bag.
  constexpr bool kSplitI4 = T == RowType::kI4 && D > 0 && D % 16 == 0;
  const ArenaView arena = v.arena->view();
  const int64_t rb = row_bytes(T, dim);
  const int64_t so = is_int(T) ? scale_offset(T, dim) : 0;
  const uint8_t* zero = reinterpret_cast<const uint8_t*>(v.zero_row);
  const int64_t p_first = b0 < b1 ? off[b0] : 0;
  const int64_t p_last = (b1 < n_off) ? off[b1] : n;
  thread_local std::vector<size_t> homes;
  if (keys) {  // ids given (keys == nullptr): nothing to hash
    if (homes.size() < static_cast<size_t>(p_last - p_first)) homes.resize(static_cast<size_t>(p_last - p_first));
    hash_homes(index, keys + p_first, p_last - p_first, homes.data());
  }
  QResolver r{index, arena, reinterpret_cast<const char*>(zero), keys, ids, p_last, rb, p_first, p_first, p_first, 0,
              homes.data(), p_first, {}};
  // Runtime-dim accumulator (D == 0): in memory, nv vectors.
  std::vector<float> acc_buf(D ? 0 : 8 * nv + 8);
  v8f* acc_mem = reinterpret_cast<v8f*>(acc_buf.data());  // v8f is declared aligned(4)
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = off[b];
    const int64_t e = (b + 1 < n_off) ? off[b + 1] : n;
    v8f acc_reg[V];
    v8f* acc = D ? acc_reg : acc_mem;
    float bias_sum = 0.0f;  // int8/int4 sum/mean: sum over the bag of w_k * bias_k
    const uint32_t batch0 = v.seq->batch_begin();
    bool check_rows = (batch0 & 1u) != 0;
    for (;;) {
      const float init = (M == PoolMode::kMax) ? -INFINITY : 0.0f;
      for (int64_t k = 0; k < nv; ++k) acc[k] = splat(init);
      bias_sum = 0.0f;
      bool consistent = true;
      for (int64_t p = s; p < e; ++p) {
        r.advance(p);
        // The row pointer the probe left in the ring; a retry (check_rows)
        // re-derives it from ids[] (the ring may have moved on).
        uint32_t id = 0;
        bool real = false;
        const uint8_t* row = r.rowp[p & (QResolver::kRing - 1)];
        if (check_rows) {
          id = ids[p];
          real = id < kTombstone;
          row = real ? reinterpret_cast<const uint8_t*>(arena.row(id)) : zero;
        }
        const uint32_t seq0 = (check_rows && real) ? v.seq->read_begin(id) : 0;
        const float x = W ? w[p] : 1.0f;
        if constexpr (is_int(T)) {
          float scale, bias;
          std::memcpy(&scale, row + so, 4);
          std::memcpy(&bias, row + so + 4, 4);
          if (M == PoolMode::kMax) {
            const v8f sv = splat(scale), bv = splat(bias);
            if constexpr (kSplitI4) {
              for (int64_t k = 0; k < nv; k += 2) {
                v8f ev, od;
                load16_i4(row, k / 2, ev, od);
                ev = ev * sv + bv;  // two roundings, as the stored value
                od = od * sv + bv;
                acc[k] = ev > acc[k] ? ev : acc[k];
                acc[k + 1] = od > acc[k + 1] ? od : acc[k + 1];
              }
            } else {
              for (int64_t k = 0; k < nv; ++k) {
                const v8f val = load_block<T>(row, k, nfull, dim) * sv + bv;  // two roundings, as the stored value
                acc[k] = val > acc[k] ? val : acc[k];
              }
            }
          } else {
            const v8f ws = splat(x * scale);
            if constexpr (kSplitI4) {
              for (int64_t k = 0; k < nv; k += 2) {
                v8f ev, od;
                load16_i4(row, k / 2, ev, od);
                acc[k] = fmadd(ws, ev, acc[k]);
                acc[k + 1] = fmadd(ws, od, acc[k + 1]);
              }
            } else {
              for (int64_t k = 0; k < nv; ++k) acc[k] = fmadd(ws, load_block<T>(row, k, nfull, dim), acc[k]);
            }
            bias_sum = std::fma(x, bias, bias_sum);
          }
        } else {
          if (M == PoolMode::kMax) {
            for (int64_t k = 0; k < nv; ++k) {
              const v8f val = load_block<T>(row, k, nfull, dim);
              acc[k] = val > acc[k] ? val : acc[k];
            }
          } else if (W) {
            const v8f ws = splat(x);
            for (int64_t k = 0; k < nv; ++k) acc[k] = fmadd(ws, load_block<T>(row, k, nfull, dim), acc[k]);
          } else {
            for (int64_t k = 0; k < nv; ++k) acc[k] += load_block<T>(row, k, nfull, dim);
          }
        }
        if (check_rows && real && !v.seq->read_valid(id, seq0)) {
          consistent = false;
          break;
        }
      }
      if (consistent && !check_rows && !v.seq->batch_valid(batch0)) {
        consistent = false;
        check_rows = true;
      }
      if (consistent) break;
    }
    float* o = out + b * dim;
    if (e == s) {
      for (int64_t j = 0; j < dim; ++j) o[j] = 0.0f;
      continue;
    }
    if constexpr (kSplitI4) interleave_pairs(acc, nv);
    const float inv = M == PoolMode::kMean ? 1.0f / static_cast<float>(e - s) : 1.0f;
    const v8f bv = splat(bias_sum);
    for (int64_t k = 0; k < nv; ++k) {
      v8f r = acc[k];
      if (is_int(T) && M != PoolMode::kMax) r += bv;
      if (M == PoolMode::kMean) r *= inv;
      alignas(32) float a[8];
      __builtin_memcpy(a, &r, sizeof(v8f));
      const int64_t m = std::min<int64_t>(8, dim - 8 * k);
      for (int64_t j = 0; j < m; ++j) o[8 * k + j] = a[j];
    }
  }
  return r.missing;
}

template <RowType T, int D>
int64_t pool_range_mode_q(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                          const int64_t* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1, int64_t dim,
                          PoolMode mode, const float* w, float* out) {
  if (mode == PoolMode::kMax)
    return pool_range_q<T, PoolMode::kMax, false, D>(v, index, keys, ids, off, n_off, n, b0, b1, dim, w, out);
  if (mode == PoolMode::kMean)
    return pool_range_q<T, PoolMode::kMean, false, D>(v, index, keys, ids, off, n_off, n, b0, b1, dim, w, out);
  if (w) return pool_range_q<T, PoolMode::kSum, true, D>(v, index, keys, ids, off, n_off, n, b0, b1, dim, w, out);
  return pool_range_q<T, PoolMode::kSum, false, D>(v, index, keys, ids, off, n_off, n, b0, b1, dim, w, out);
}

template <RowType T>
int64_t pool_range_dim_q(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                         const int64_t* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1, int64_t dim,
                         PoolMode mode, const float* w, float* out) {
  switch (dim) {
    case 16: return pool_range_mode_q<T, 16>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
    case 32: return pool_range_mode_q<T, 32>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
    case 64: return pool_range_mode_q<T, 64>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
    case 128: return pool_range_mode_q<T, 128>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
    default: return pool_range_mode_q<T, 0>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
  }
}

}  // namespace

int64_t pool_bags_quantized(const RowView& v, RowType t, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                            int64_t n, const int64_t* off, int64_t n_off, int64_t n_bags, int64_t dim, PoolMode mode,
                            const float* w, float* out, int nthreads) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 1024 + 1)));
  int64_t missing = 0;
  const int64_t n_chunks = std::max<int64_t>(1, (n + kChunkKeys - 1) / kChunkKeys);
  auto bag_at = [&](int64_t pos_target) {
    return static_cast<int64_t>(std::lower_bound(off, off + n_bags, pos_target) - off);
  };
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(+ : missing)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t b0 = c == 0 ? 0 : bag_at(n * c / n_chunks);
    const int64_t b1 = c == n_chunks - 1 ? n_bags : bag_at(n * (c + 1) / n_chunks);
    if (b0 >= b1) continue;
    switch (t) {
      case RowType::kF16:
        missing += pool_range_dim_q<RowType::kF16>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
        break;
      case RowType::kBF16:
        missing += pool_range_dim_q<RowType::kBF16>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
        break;
      case RowType::kI8:
        missing += pool_range_dim_q<RowType::kI8>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
        break;
      case RowType::kI4:
        missing += pool_range_dim_q<RowType::kI4>(v, index, keys, ids, off, n_off, n, b0, b1, dim, mode, w, out);
        break;
      default: break;
    }
  }
  return missing;
}

int64_t gather_rows_quantized(const RowView& v, RowType t, const KeyIndex& index, const int64_t* keys,
                              uint32_t* ids, int64_t n, int64_t dim, float* out, uint8_t* found, int nthreads) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 1024 + 1)));
  int64_t missing = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : missing)
  for (int64_t i = 0; i < n; ++i) {
    constexpr int64_t kAhead = 16;
    if (i + kAhead < n) index.prefetch(keys[i + kAhead]);
    const uint32_t id = probe_index(index, index.home(keys[i]), keys[i]);
    ids[i] = id;
    float* o = out + i * dim;
    if (found) found[i] = id < kTombstone;
    if (id >= kTombstone) {
      ++missing;
      std::memset(o, 0, sizeof(float) * dim);
      continue;
    }
    const uint8_t* row = reinterpret_cast<const uint8_t*>(v.arena->row(id));
    for (;;) {
      const uint32_t s0 = v.seq->read_begin(id);
      decode_row(t, row, dim, o);
      if (v.seq->read_valid(id, s0)) break;
    }
  }
  return missing;
}

}  // namespace EL_ISA_NS
}  // namespace cpu
}  // namespace embedlookup
