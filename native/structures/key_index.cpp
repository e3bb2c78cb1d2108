#include "key_index.h"

#include <cstring>
#include <new>
#include <stdexcept>

#include "huge_alloc.h"

namespace embedlookup {

namespace {
// Load limit (live + tombstones, of slots). At 0.8 about a quarter of the
// keys of a full index sat outside their home bucket, and each such probe costs
// a mispredicted branch and a second dependent line: the 1 M-row pooled lookup
// (1 M keys) ran ~20% faster with the index at 0.4 load than at 0.8 (same
// run, alternated). 0.6 keeps the load between 0.3 and 0.6 (power-of-two
// bucket counts) for 21-43 bytes of index per key instead of 16-32.
constexpr double kMaxLoad = 0.60;

// Smallest power-of-two bucket count holding `keys` under the load limit.
size_t buckets_for(size_t keys) {
  size_t need = static_cast<size_t>(keys / (kMaxLoad * IndexBucket::kSlots)) + 1;
  size_t n = 16;
  while (n < need) n <<= 1;
  return n;
}
}  // namespace

KeyIndex::KeyIndex(size_t expected_keys) { rehash(buckets_for(expected_keys)); }

KeyIndex::~KeyIndex() { huge_free(buckets_, (mask_ + 1) * sizeof(IndexBucket)); }

void KeyIndex::rehash(size_t n_buckets) {
  auto* nb = static_cast<IndexBucket*>(huge_alloc(n_buckets * sizeof(IndexBucket)));
  for (size_t b = 0; b < n_buckets; ++b)
    for (int s = 0; s < IndexBucket::kSlots; ++s) nb[b].rows[s] = kNoRow;
  const size_t nmask = n_buckets - 1;
  if (buckets_) {
    for_each([&](int64_t key, uint32_t row) {
      size_t b = hash_key(key) & nmask;
      for (;;) {
        for (int s = 0; s < IndexBucket::kSlots; ++s)
          if (nb[b].rows[s] == kNoRow) {
            nb[b].keys[s] = key;
            nb[b].rows[s] = row;
            return;
          }
        b = (b + 1) & nmask;
      }
    });
    huge_free(buckets_, (mask_ + 1) * sizeof(IndexBucket));
  }
  buckets_ = nb;
  mask_ = nmask;
  used_ = live_;
}

void KeyIndex::reserve(size_t n) {
  if (static_cast<double>(n) > kMaxLoad * (mask_ + 1) * IndexBucket::kSlots) rehash(buckets_for(n));
}

void KeyIndex::insert(int64_t key, uint32_t row) {
  const size_t slots = (mask_ + 1) * IndexBucket::kSlots;
  if (static_cast<double>(used_ + 1) > kMaxLoad * slots) {
    // Mostly tombstones: rehash at the same size; else double.
    rehash(static_cast<double>(live_ + 1) > 0.5 * slots ? 2 * (mask_ + 1) : mask_ + 1);
  } else if (used_ - live_ > slots / 4) {
    // Insert/erase churn: tombstones lengthen every probe that misses; clear them.
    rehash(mask_ + 1);
  }
  // The caller guarantees the key is absent, so the first free slot (empty or
  // tombstone) on its probe path is its place: no walk to the end of the run.
  size_t b = hash_key(key) & mask_;
  for (;;) {
    IndexBucket& bk = buckets_[b];
    for (int s = 0; s < IndexBucket::kSlots; ++s) {
      const uint32_t r = bk.rows[s];
      if (r == kTombstone || r == kNoRow) {
        bk.keys[s] = key;
        bk.rows[s] = row;
        if (r == kNoRow) ++used_;
        ++live_;
        return;
      }
    }
    b = (b + 1) & mask_;
  }
}

uint32_t KeyIndex::erase(int64_t key) {
  size_t b = hash_key(key) & mask_;
  for (;;) {
    IndexBucket& bk = buckets_[b];
    for (int s = 0; s < IndexBucket::kSlots; ++s) {
      const uint32_t r = bk.rows[s];
      if (r == kNoRow) return kNoRow;
      if (r != kTombstone && bk.keys[s] == key) {
        bk.rows[s] = kTombstone;
        --live_;
        return r;
      }
    }
    b = (b + 1) & mask_;
  }
}

void KeyIndex::set_row(int64_t key, uint32_t row) {
  size_t b = hash_key(key) & mask_;
  for (;;) {
    IndexBucket& bk = buckets_[b];
    for (int s = 0; s < IndexBucket::kSlots; ++s) {
      const uint32_t r = bk.rows[s];
      if (r == kNoRow) throw std::logic_error("KeyIndex::set_row: key absent");
      if (r != kTombstone && bk.keys[s] == key) {
        bk.rows[s] = row;
        return;
      }
    }
    b = (b + 1) & mask_;
  }
}

}  // namespace embedlookup
