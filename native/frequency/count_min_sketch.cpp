#include "count_min_sketch.h"

#include <algorithm>
#include <climits>

#include "embedlookup/hash.h"

namespace embedlookup {

CountMinSketch::CountMinSketch(int64_t width, int64_t depth)
    : width_(width), depth_(depth), counts_(static_cast<size_t>(width * depth), 0u) {}

uint32_t CountMinSketch::estimate(int64_t key) const {
  uint32_t m = UINT32_MAX;
  for (int64_t r = 0; r < depth_; ++r) m = std::min(m, counts_[slot(key, r)]);
  return m;
}

uint32_t CountMinSketch::add(int64_t key, uint32_t c) {
  // Conservative update: raise each counter only up to the new estimate, which
  // keeps estimates >= the truth and cuts over-counting from shared counters.
  const uint32_t est = estimate(key);
  const uint32_t target = est > UINT32_MAX - c ? UINT32_MAX : est + c;
  for (int64_t r = 0; r < depth_; ++r) {
    uint32_t& x = counts_[slot(key, r)];
    if (x < target) x = target;
  }
  return target;
}

}  // namespace embedlookup
