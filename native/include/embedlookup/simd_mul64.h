// The low 64 bits of a * c in each of four 64-bit lanes. AVX2 has no 64-bit
// multiply: a * c mod 2^64 = lo(a) lo(c) + ((lo(a) hi(c) + hi(a) lo(c)) << 32).
// Used by the four-keys-at-a-time hashes (shard_of, hash_key), which must give
// the same bits as their scalar versions.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace embedlookup {

__attribute__((target("avx2"), always_inline)) inline __m256i mul64_avx2(__m256i a, uint64_t c) {
  const __m256i lo = _mm256_set1_epi64x(static_cast<int64_t>(c & 0xffffffffULL));
  const __m256i hi = _mm256_set1_epi64x(static_cast<int64_t>(c >> 32));
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(a, hi), _mm256_mul_epu32(_mm256_srli_epi64(a, 32), lo));
  return _mm256_add_epi64(_mm256_mul_epu32(a, lo), _mm256_slli_epi64(cross, 32));
}

}  // namespace embedlookup
