// Key hashing shared by every backend (CPU index, CUDA index, OpenCL/HLS probes).
#pragma once
#include "embedlookup/portable.h"

namespace embedlookup {

// splitmix64's finalizer: a bijection on 64-bit words with full avalanche, so
// sequential IDs (the common case for feature values) spread over buckets.
EL_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

EL_HD uint64_t hash_key(int64_t key) { return mix64(static_cast<uint64_t>(key) + 0x9e3779b97f4a7c15ULL); }

}  // namespace embedlookup
