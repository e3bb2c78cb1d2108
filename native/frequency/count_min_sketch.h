// CountMinSketch: how often keys without a row were seen, in fixed memory
// (FrequencyTable's admission test).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace embedlookup {

// Count-min sketch with conservative update: estimates never fall below the
// true count; memory is depth * width * 4 bytes whatever the key count.
class CountMinSketch {
 public:
  CountMinSketch(int64_t width, int64_t depth);
  // Adds `c` sightings of key and returns its new estimate.
  uint32_t add(int64_t key, uint32_t c);
  uint32_t estimate(int64_t key) const;
  size_t bytes() const { return counts_.size() * sizeof(uint32_t); }
  // Checkpoints carry the counters.
  const std::vector<uint32_t>& counts() const { return counts_; }
  std::vector<uint32_t>& counts() { return counts_; }

 private:
  size_t slot(int64_t key, int64_t row) const;
  int64_t width_, depth_;
  std::vector<uint32_t> counts_;
};

}  // namespace embedlookup
