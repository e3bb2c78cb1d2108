#include "partition.h"

#include <immintrin.h>

#include <cstddef>

#include "../cpu/kernels_cpu.h"
#include "embedlookup/hash.h"
#include "embedlookup/simd_mul64.h"

namespace embedlookup {

namespace {

// shard_of on four keys at once; same bits as shard_of (tested against the
// NumPy rule).
__attribute__((target("avx2"))) inline __m256i shard_of4(const int64_t* keys, __m256i n) {
  __m256i h = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys)),
                               _mm256_set1_epi64x(static_cast<int64_t>(kShardSalt)));
  h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 33));
  h = mul64_avx2(h, 0xff51afd7ed558ccdULL);
  h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 33));
  h = mul64_avx2(h, 0xc4ceb9fe1a85ec53ULL);
  h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 33));
  return _mm256_srli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(h, 32), n), 32);
}
// Shard ids of keys[0, n) rounded down to a multiple of 4; returns how many were done.
__attribute__((target("avx2"))) int64_t shard_ids_avx2(const int64_t* keys, int64_t n, uint32_t num_shards,
                                                        int64_t* out) {
  const __m256i ns = _mm256_set1_epi64x(num_shards);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), shard_of4(keys + i, ns));
  return i;
}
// Two shards: each key's shard as a byte, and how many go to shard 1.
__attribute__((target("avx2"))) int64_t shard_bytes_two_avx2(const int64_t* keys, int64_t n, uint8_t* sid,
                                                              int64_t* ones) {
  const __m256i two = _mm256_set1_epi64x(2);
  __m256i count = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256i s = shard_of4(keys + i, two);
    count = _mm256_add_epi64(count, s);
    const int m = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_slli_epi64(s, 63)));
    for (int j = 0; j < 4; ++j) sid[i + j] = static_cast<uint8_t>((m >> j) & 1);
  }
  alignas(32) int64_t c[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(c), count);
  *ones = c[0] + c[1] + c[2] + c[3];
  return i;
}

}  // namespace

void shard_ids(const int64_t* keys, int64_t n, uint32_t num_shards, int64_t* out) {
  const int64_t done = cpu::has_avx2() ? shard_ids_avx2(keys, n, num_shards, out) : 0;
  for (int64_t i = done; i < n; ++i) out[i] = shard_of(keys[i], num_shards);
}

namespace {

// Bag b of the input spans [lo, hi); `runs` is the number of bags (1 for flat keys).
inline int64_t bag_lo(const PartitionInput& in, int64_t b) { return in.offsets ? in.offsets[b] : 0; }
inline int64_t bag_hi(const PartitionInput& in, int64_t b) {
  return !in.offsets ? in.n : (b + 1 < in.n_offsets ? in.offsets[b + 1] : in.n);
}

// Two shards, the common case: every key is written to both parts' next slot
// and only its own shard's cursor moves (no branch on the shard, no counter in
// memory); each part has one slot of slack for the write that does not count.
template <bool kWeights, bool kPositions>
void fill_two(const PartitionInput& in, const uint8_t* sid, ShardPart* p) {
  int64_t* v0 = p[0].values.data();
  int64_t* v1 = p[1].values.data();
  float* w0 = kWeights ? p[0].weights.data() : nullptr;
  float* w1 = kWeights ? p[1].weights.data() : nullptr;
  int64_t* q0 = kPositions ? p[0].positions.data() : nullptr;
  int64_t* q1 = kPositions ? p[1].positions.data() : nullptr;
  int64_t j0 = 0, j1 = 0;
  const int64_t runs = in.offsets ? in.n_bags : 1;
  for (int64_t b = 0; b < runs; ++b) {
    const int64_t lo = bag_lo(in, b), hi = bag_hi(in, b);
    if (in.offsets) {
      p[0].offsets[b] = j0;
      p[1].offsets[b] = j1;
    }
    const float inv_len = hi > lo ? 1.0f / static_cast<float>(hi - lo) : 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t s = sid[i];
      const int64_t k = in.values[i];
      v0[j0] = k;
      v1[j1] = k;
      if constexpr (kWeights) {
        const float w = in.mean_weights ? inv_len : in.weights[i];
        w0[j0] = w;
        w1[j1] = w;
      }
      if constexpr (kPositions) {
        q0[j0] = i;
        q1[j1] = i;
      }
      j1 += s;
      j0 += 1 - s;
    }
  }
}

std::vector<ShardPart> partition_two(const PartitionInput& in) {
  const int64_t n = in.n;
  thread_local Buffer<uint8_t> sid_scratch;  // reused: no page faults per call
  if (static_cast<int64_t>(sid_scratch.size()) < n) sid_scratch.resize(static_cast<size_t>(n));
  uint8_t* sid = sid_scratch.data();
  int64_t c1 = 0;
  const int64_t done = cpu::has_avx2() ? shard_bytes_two_avx2(in.values, n, sid, &c1) : 0;
  for (int64_t i = done; i < n; ++i) {
    const uint32_t s = shard_of(in.values[i], 2);
    sid[i] = static_cast<uint8_t>(s);
    c1 += s;
  }
  const int64_t count[2] = {n - c1, c1};
  const bool with_w = in.weights != nullptr || in.mean_weights;
  std::vector<ShardPart> parts(2);
  for (int s = 0; s < 2; ++s) {
    const auto slack = static_cast<size_t>(count[s] + 1);
    parts[s].values.resize(slack);
    if (in.offsets) parts[s].offsets.resize(static_cast<size_t>(in.n_bags));
    if (with_w) parts[s].weights.resize(slack);
    if (in.positions) parts[s].positions.resize(slack);
  }
  if (with_w)
    in.positions ? fill_two<true, true>(in, sid, parts.data()) : fill_two<true, false>(in, sid, parts.data());
  else
    in.positions ? fill_two<false, true>(in, sid, parts.data()) : fill_two<false, false>(in, sid, parts.data());
  for (int s = 0; s < 2; ++s) {  // drop the slack slot (no reallocation)
    const auto c = static_cast<size_t>(count[s]);
    parts[s].values.resize(c);
    if (with_w) parts[s].weights.resize(c);
    if (in.positions) parts[s].positions.resize(c);
  }
  return parts;
}

}  // namespace

std::vector<ShardPart> partition_by_shard(const PartitionInput& in, uint32_t num_shards) {
  if (num_shards == 2) return partition_two(in);
  const int64_t n = in.n;
  // Pass 1: every key's shard (hashed once) and each shard's count.
  std::vector<uint32_t> sid(static_cast<size_t>(n));
  std::vector<int64_t> count(num_shards, 0);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t s = shard_of(in.values[i], num_shards);
    sid[i] = s;
    ++count[s];
  }
  const bool with_w = in.weights != nullptr || in.mean_weights;
  std::vector<ShardPart> parts(num_shards);
  for (uint32_t s = 0; s < num_shards; ++s) {
    parts[s].values.resize(count[s]);
    if (in.offsets) parts[s].offsets.resize(in.n_bags);
    if (with_w) parts[s].weights.resize(count[s]);
    if (in.positions) parts[s].positions.resize(count[s]);
  }
  // Pass 2: bag by bag, each key to its shard's next slot.
  std::vector<int64_t> cur(num_shards, 0);
  const int64_t runs = in.offsets ? in.n_bags : 1;
  for (int64_t b = 0; b < runs; ++b) {
    const int64_t lo = bag_lo(in, b), hi = bag_hi(in, b);
    if (in.offsets)
      for (uint32_t s = 0; s < num_shards; ++s) parts[s].offsets[b] = cur[s];
    const float inv_len = hi > lo ? 1.0f / static_cast<float>(hi - lo) : 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      ShardPart& p = parts[sid[i]];
      int64_t j = cur[sid[i]]++;
      p.values[j] = in.values[i];
      if (with_w) p.weights[j] = in.mean_weights ? inv_len : in.weights[i];
      if (in.positions) p.positions[j] = i;
    }
  }
  return parts;
}

DistinctKeys distinct_keys(const int64_t* keys, int64_t n) {
  DistinctKeys d;
  d.inverse.resize(n);
  size_t cap = 16;
  while (cap < static_cast<size_t>(n) * 2) cap <<= 1;  // load <= 1/2
  const int shift = 64 - __builtin_ctzll(cap);
  // slot -> distinct index + 1 (0: empty); the key is read back from d.keys.
  std::vector<uint32_t> slot(cap, 0);
  d.keys.reserve(n);
  d.counts.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = keys[i];
    size_t h = static_cast<size_t>((static_cast<uint64_t>(k) * 0x9E3779B97F4A7C15ull) >> shift);
    for (;;) {
      const uint32_t s = slot[h];
      if (s == 0) {
        slot[h] = static_cast<uint32_t>(d.keys.size() + 1);
        d.inverse[i] = static_cast<int64_t>(d.keys.size());
        d.keys.push_back(k);
        d.counts.push_back(1);
        break;
      }
      if (d.keys[s - 1] == k) {
        d.inverse[i] = s - 1;
        ++d.counts[s - 1];
        break;
      }
      h = (h + 1) & (cap - 1);
    }
  }
  return d;
}

}  // namespace embedlookup
