// CountMinSketch: how often keys without a row were seen, in fixed memory
// (FrequencyTable's admission test).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "embedlookup/hash.h"

namespace embedlookup {

// Count-min sketch with conservative update: estimates never fall below the
// true count; memory is depth * width * 4 bytes whatever the key count.
class CountMinSketch {
 public:
  CountMinSketch(int64_t width, int64_t depth);
  // Adds `c` sightings of key and returns its new estimate.
  uint32_t add(int64_t key, uint32_t c);
  uint32_t estimate(int64_t key) const;
  // Starts fetching key's counters (one random line per row of the sketch):
  // a batch of adds issues this a few keys ahead.
  __attribute__((always_inline)) void prefetch(int64_t key) const {
    for (int64_t r = 0; r < depth_; ++r) __builtin_prefetch(&counts_[slot(key, r)], 1, 3);
  }
  size_t bytes() const { return counts_.size() * sizeof(uint32_t); }
  // Checkpoints carry the counters.
  const std::vector<uint32_t>& counts() const { return counts_; }
  std::vector<uint32_t>& counts() { return counts_; }

 private:
  size_t slot(int64_t key, int64_t row) const {
    // One independent-looking hash per row: the key's hash re-mixed with the row.
    const uint64_t h = mix64(hash_key(key) + 0x632be59bd9b4e019ULL * static_cast<uint64_t>(row + 1));
    return static_cast<size_t>(row * width_) + (h & static_cast<uint64_t>(width_ - 1));
  }
  int64_t width_, depth_;
  std::vector<uint32_t> counts_;
};

}  // namespace embedlookup
