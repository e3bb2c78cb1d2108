// The device-side key index: open addressing with linear probing over 16-byte
// slots {key, row id}, hashed with hash_key() from hash.h (the CPU index's hash).
//
// A slot is free while its key is kEmptyKey. The one key equal to kEmptyKey
// lives in an extra slot past the end (slots[mask + 1]), present when its id is
// not kNoRow, so every int64 is a valid key. Inserting claims a slot by a CAS on
// its key; the winner then allocates a row id and writes it. Slots are never
// freed (no erase on the GPU), so a probe stops at the first free slot.
#pragma once
#include <cstdint>

#include "embedlookup/hash.h"
#include "embedlookup/row_id.h"

namespace embedlookup {
namespace cuda {

constexpr int64_t kEmptyKey = INT64_MIN;
using embedlookup::kNoRow;                   // absent, or claimed but id not yet written
constexpr uint32_t kClaimed = kTombstone;   // the extra slot: claimed, id not yet written
constexpr uint32_t kMaxRows = kMaxRowId;

struct alignas(16) Slot {
  int64_t key;
  uint32_t id;
  uint32_t unused;
};

struct IndexView {
  Slot* slots;    // mask + 2 slots: mask + 1 hashed ones and the extra one
  uint64_t mask;  // hashed slots - 1 (a power of two minus one)
};

#ifdef __CUDACC__
// Row id of `key`, or kNoRow. Only valid while no insert runs on the index.
__device__ __forceinline__ uint32_t find_row(const IndexView& ix, int64_t key) {
  if (key == kEmptyKey) {
    const uint32_t id = ix.slots[ix.mask + 1].id;
    return id == kClaimed ? kNoRow : id;
  }
  uint64_t s = hash_key(key) & ix.mask;
  for (;;) {
    // One 16-byte read brings key and id together.
    const longlong2 v = __ldg(reinterpret_cast<const longlong2*>(ix.slots + s));
    if (v.x == key) return static_cast<uint32_t>(v.y);
    if (v.x == kEmptyKey) return kNoRow;
    s = (s + 1) & ix.mask;
  }
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace embedlookup
