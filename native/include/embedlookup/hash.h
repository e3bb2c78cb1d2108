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

// Which of n shards owns a key (the parameter server's one rule; Python's
// embedlookup.sharding.shard_of is its definition and its test oracle):
// MurmurHash3's 64-bit finalizer (fmix64) of the key XOR a fixed salt, then
// the hash's top 32 bits mapped onto [0, n) by multiply-shift. Not the bucket
// hash above, so keys that share a shard still spread over its buckets.
constexpr uint64_t kShardSalt = 0x5EEDC0DED15CA11EULL;

EL_HD uint32_t shard_of(int64_t key, uint32_t n) {
  uint64_t h = static_cast<uint64_t>(key) ^ kShardSalt;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return static_cast<uint32_t>(((h >> 32) * n) >> 32);
}

}  // namespace embedlookup
