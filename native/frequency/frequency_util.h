// Small helpers shared by the FrequencyTable sources.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "embedlookup/hash.h"

namespace embedlookup {
namespace frequency_detail {

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Per-thread scratch for resolved row ids, reused across calls.
inline uint32_t* scratch_ids(int64_t n) {
  thread_local std::vector<uint32_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n) + n / 4 + 64);
  return buf.data();
}

// Admission coin for (key, step): uniform in [0, 1) from a hash, so a replay
// of the same stream makes the same decisions.
inline double admission_coin(uint64_t seed, int64_t key, uint32_t step) {
  const uint64_t h = mix64(hash_key(key) ^ mix64(seed + step));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

inline std::string num(double x) { return std::to_string(x); }

}  // namespace frequency_detail
}  // namespace embedlookup
