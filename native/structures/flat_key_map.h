// FlatKeyMap: int64 key -> small value, open addressing with linear probing
// in one flat array (no allocation per key), erase by backward shift (so no
// tombstones and no rehash to clear them).
//
// Why not std::unordered_map: a table that evicts keeps a tombstone per
// evicted key (deltas carry evictions) and erases it when the key comes back.
// In a FrequencyTable churning ~50 K rows a batch, the node allocation, free
// and the pointer chase of std::unordered_map took about a third of the
// training lookup's time (perf, trainer-side cache of the parameter server).
//
// Not thread-safe: the owner serialises mutations (the table's lock).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "embedlookup/hash.h"

namespace embedlookup {

template <class V>
class FlatKeyMap {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t bytes() const { return slots_.capacity() * sizeof(Slot) + full_.capacity(); }

  // Sets key's value (inserting it if absent); true when inserted.
  bool assign(int64_t key, V value) {
    const auto at = place(key, value);
    slots_[at.first].value = value;
    return at.second;
  }

  // Inserts key with `value` unless present; returns its value (the stored
  // one when it was present) and whether it was inserted.
  std::pair<V, bool> try_emplace(int64_t key, V value) {
    const auto at = place(key, value);
    return {slots_[at.first].value, at.second};
  }

  // Removes key; true when it was there. Backward shift: the following
  // entries of the run move up so every key stays reachable from its home.
  bool erase(int64_t key) {
    if (size_ == 0) return false;
    size_t i = home(key);
    for (;; i = (i + 1) & mask_) {
      if (!full_[i]) return false;
      if (slots_[i].key == key) break;
    }
    for (size_t j = (i + 1) & mask_; full_[j]; j = (j + 1) & mask_) {
      const size_t h = home(slots_[j].key);
      // Entry j may move to the hole i unless its home lies cyclically in (i, j].
      if (((j - h) & mask_) >= ((j - i) & mask_)) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    full_[i] = 0;
    --size_;
    return true;
  }

  template <class F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < full_.size(); ++i)
      if (full_[i]) f(slots_[i].key, slots_[i].value);
  }

 private:
  struct Slot {
    int64_t key;
    V value;
  };
  // key's slot, inserting it with `value` if absent (growing first); and
  // whether it was inserted.
  std::pair<size_t, bool> place(int64_t key, V value) {
    if (need_grow(size_ + 1)) rehash(capacity_for(size_ + 1));
    size_t i = home(key);
    for (; full_[i]; i = (i + 1) & mask_)
      if (slots_[i].key == key) return {i, false};
    full_[i] = 1;
    slots_[i] = Slot{key, value};
    ++size_;
    return {i, true};
  }
  // Load at most 1/2: short runs keep erase's shift and the misses' probes short.
  static size_t capacity_for(size_t n) {
    size_t c = 16;
    while (c < 2 * n) c <<= 1;
    return c;
  }
  bool need_grow(size_t n) const { return full_.empty() || 2 * n > full_.size(); }
  size_t home(int64_t key) const { return static_cast<size_t>(hash_key(key)) & mask_; }
  void rehash(size_t cap) {
    std::vector<Slot> old_slots;
    std::vector<uint8_t> old_full;
    old_slots.swap(slots_);
    old_full.swap(full_);
    slots_.assign(cap, Slot{0, V{}});
    full_.assign(cap, 0);
    mask_ = cap - 1;
    for (size_t i = 0; i < old_full.size(); ++i) {
      if (!old_full[i]) continue;
      size_t j = home(old_slots[i].key);
      while (full_[j]) j = (j + 1) & mask_;
      full_[j] = 1;
      slots_[j] = old_slots[i];
    }
  }

  std::vector<Slot> slots_;
  std::vector<uint8_t> full_;
  size_t mask_ = 0, size_ = 0;
};

}  // namespace embedlookup
