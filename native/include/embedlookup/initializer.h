// Deterministic row initializers: element j of key k's initial row is a pure
// function of (seed, k, j), so the same key gets the same row whatever the
// insertion order, thread count or backend.
#pragma once
#include <cmath>
#include "embedlookup/hash.h"

namespace embedlookup {

enum class InitKind : int32_t { kZeros = 0, kUniform = 1, kNormal = 2, kConstant = 3 };

struct InitSpec {
  InitKind kind = InitKind::kUniform;
  float a = -0.01f;    // uniform: low;  normal: mean;  constant: value
  float b = 0.01f;     // uniform: high; normal: std
  uint64_t seed = 0;   // part of every element's counter
};

// Per-row part of the counter: computed once per row, not per element.
EL_HD uint64_t counter_base(uint64_t seed, int64_t key) { return mix64(seed ^ 0x5851f42d4c957f2dULL) ^ hash_key(key); }

// Uniform in [0, 1) from the top 24 bits of a counter hash (exact in fp32).
EL_HD float counter_uniform(uint64_t base, uint64_t j) {
  const uint64_t h = mix64(base ^ (j * 0xd1342543de82ef95ULL));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

EL_HD void init_row(const InitSpec& s, int64_t key, float* row, int64_t dim) {
  const uint64_t base = counter_base(s.seed, key);
  switch (s.kind) {
    case InitKind::kZeros:
      for (int64_t j = 0; j < dim; ++j) row[j] = 0.0f;
      break;
    case InitKind::kConstant:
      for (int64_t j = 0; j < dim; ++j) row[j] = s.a;
      break;
    case InitKind::kUniform:
      for (int64_t j = 0; j < dim; ++j) row[j] = s.a + (s.b - s.a) * counter_uniform(base, j);
      break;
    case InitKind::kNormal:
      // Box-Muller on the pair (2p, 2p+1); u1 is shifted away from 0 for log().
      for (int64_t j = 0; j < dim; ++j) {
        const uint64_t p = static_cast<uint64_t>(j) >> 1;
        const float u1 = counter_uniform(base, 2 * p) + (0.5f / 16777216.0f);
        const float u2 = counter_uniform(base, 2 * p + 1);
        const float r = sqrtf(-2.0f * logf(u1));
        const float t = 6.283185307179586f * u2;
        row[j] = s.a + s.b * r * ((j & 1) ? sinf(t) : cosf(t));
      }
      break;
  }
}

}  // namespace embedlookup
