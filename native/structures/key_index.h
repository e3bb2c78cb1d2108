// KeyIndex: int64 key -> uint32 row id, open addressing over 64-byte buckets.
//
// One bucket is one cache line holding 5 keys and their 5 row ids, so a probe
// usually costs a single line (and 1 M keys take ~32 MB, which can stay in a
// server's last-level cache while the rows stream from DRAM). Buckets fill in
// slot order and probing moves linearly bucket to bucket, so a lookup stops at
// the first empty slot. Erase leaves a tombstone; rehash clears them.
//
// Not thread-safe by itself: the table serialises mutations with its lock.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "embedlookup/hash.h"
#include "embedlookup/row_id.h"  // kNoRow: empty slot / key not found; kTombstone: erased slot

namespace embedlookup {

struct alignas(64) IndexBucket {
  static constexpr int kSlots = 5;
  int64_t keys[kSlots];
  uint32_t rows[kSlots];
  uint32_t unused;
};
static_assert(sizeof(IndexBucket) == 64, "one bucket per cache line");

class KeyIndex {
 public:
  explicit KeyIndex(size_t expected_keys = 0);
  ~KeyIndex();
  KeyIndex(const KeyIndex&) = delete;
  KeyIndex& operator=(const KeyIndex&) = delete;

  // Branch-free within a bucket: the matching slot is random, so per-slot
  // branches would mispredict about once per lookup on the hot path.
  __attribute__((always_inline)) uint32_t find(int64_t key) const { return find_from(home(key), key); }
  __attribute__((always_inline)) size_t home(int64_t key) const { return hash_key(key) & mask_; }
  __attribute__((always_inline)) uint32_t find_from(size_t b, int64_t key) const {
    for (;;) {
      const IndexBucket& bk = buckets_[b];
      unsigned hit = 0, empty = 0;
      for (int s = 0; s < IndexBucket::kSlots; ++s) {
        hit |= static_cast<unsigned>((bk.keys[s] == key) & (bk.rows[s] < kTombstone)) << s;
        empty |= static_cast<unsigned>(bk.rows[s] == kNoRow) << s;
      }
      if (__builtin_expect(hit != 0, 1)) return bk.rows[__builtin_ctz(hit)];
      if (empty) return kNoRow;
      b = (b + 1) & mask_;
    }
  }
  __attribute__((always_inline)) void prefetch_bucket(size_t b) const { __builtin_prefetch(&buckets_[b], 0, 3); }
  // For ISA-specific probes (native/cpu/kernels_cpu.inl).
  const IndexBucket& bucket(size_t b) const { return buckets_[b]; }
  size_t next_bucket(size_t b) const { return (b + 1) & mask_; }
  __attribute__((always_inline)) void prefetch(int64_t key) const { __builtin_prefetch(&buckets_[hash_key(key) & mask_], 0, 3); }
  // Into L2 only: the first of two prefetch levels (native/cpu/kernels_cpu.h, kL2Ahead).
  __attribute__((always_inline)) void prefetch_bucket_l2(size_t b) const { __builtin_prefetch(&buckets_[b], 0, 2); }

  // Key must be absent (the caller has just found it missing under the
  // table's exclusive lock). Grows (rehashes) first when the load would pass
  // the limit, and clears tombstones when they pile up.
  void insert(int64_t key, uint32_t row);
  // Returns the erased row id or kNoRow.
  uint32_t erase(int64_t key);
  // Repoints an existing key to another row (relayout).
  void set_row(int64_t key, uint32_t row);
  // Makes room for `n` live keys without further rehash.
  void reserve(size_t n);

  size_t size() const { return live_; }
  size_t bytes() const { return (mask_ + 1) * sizeof(IndexBucket); }

  template <class F>
  void for_each(F&& f) const {
    for (size_t b = 0; b <= mask_; ++b)
      for (int s = 0; s < IndexBucket::kSlots; ++s) {
        const uint32_t r = buckets_[b].rows[s];
        if (r < kTombstone) f(buckets_[b].keys[s], r);
      }
  }

 private:
  void rehash(size_t n_buckets);
  IndexBucket* buckets_ = nullptr;
  size_t mask_ = 0;
  size_t live_ = 0;
  size_t used_ = 0;  // live + tombstones
};

}  // namespace embedlookup
