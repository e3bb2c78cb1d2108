// Host-side helpers for the embedding-bag kernel (not synthesized): builds
// the hash index the kernel probes, with the CPU engine's hash.
#pragma once
#include <cstdint>
#include <vector>

#include "embedding_bag.h"
#include "embedlookup/hash.h"

namespace el_hls {

// Linear-probing index over a power-of-two number of slots, load <= 1/2:
// slot_rows[s] == kNoRow marks an empty slot; table key i gets row id i.
// Every key ends fewer than kMaxProbe slots from its home slot (the kernel's
// probe bound); on a rare longer cluster the slot count doubles. Keys must be
// distinct. Returns the slot mask to pass to the kernel.
inline uint64_t build_index(const int64_t* keys, int64_t n, std::vector<int64_t>& slot_keys,
                            std::vector<int32_t>& slot_rows) {
  uint64_t slots = 16;
  while (slots < 2 * static_cast<uint64_t>(n)) slots *= 2;
  for (;;) {
    const uint64_t mask = slots - 1;
    slot_keys.assign(slots, 0);
    slot_rows.assign(slots, kNoRow);
    bool fits = true;
    for (int64_t i = 0; i < n && fits; ++i) {
      uint64_t s = embedlookup::hash_key(keys[i]) & mask;
      int step = 0;
      while (slot_rows[s] != kNoRow && step < kMaxProbe) {
        s = (s + 1) & mask;
        ++step;
      }
      fits = step < kMaxProbe;
      slot_keys[s] = keys[i];
      slot_rows[s] = static_cast<int32_t>(i);
    }
    if (fits) return mask;
    slots *= 2;
  }
}

}  // namespace el_hls
