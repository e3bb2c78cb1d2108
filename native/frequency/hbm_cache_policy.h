// HbmCachePolicy: which rows of a table held in host memory get a slot in a
// fixed-size cache in GPU memory (HBM), decided on the host per batch, and the
// slot map (key -> slot) that the CUDA kernels read through.
//
// Admission uses FrequencyTable's rule: a count-min sketch counts sightings of
// keys without a slot; a key is a candidate once its estimate reaches
// admit_count. A slot's score is a decayed access count (half-life in plan
// steps), as FrequencyTable's row score. A candidate takes a free slot, or
// replaces the resident with the lowest score when its own estimate beats it
// (TinyLFU-style: the cache never trades a hot row for a colder one).
//
// Decayed scores keep their order while untouched: score * 2^-(now-last)/h
// compares as log2(score) + last/h, a constant per slot. So victims come from
// an ordered set of (priority, slot) over the slots that may be evicted; a slot
// used by a planned batch is pinned (out of the set) until that batch is
// released, so a batch in flight (or a prefetched one) never loses its rows.
//
// Nothing is lost: a slot written since it was filled is dirty, and evicting it
// schedules its write-back to the host row (to run before the slot is refilled).
#pragma once
#include <cstdint>
#include <deque>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "count_min_sketch.h"

namespace embedlookup {

// What the device must do for one batch, in this order: write back, fill, run.
struct CachePlan {
  std::vector<int32_t> slot_of;          // per position: its HBM slot, or -1 (read the host row)
  std::vector<int32_t> writeback_slots;  // evicted dirty slots: copy slot -> host row of writeback_keys[i]
  std::vector<int64_t> writeback_keys;
  std::vector<int32_t> evict_slots;      // every eviction (dirty or clean), with the key it held
  std::vector<int64_t> evict_keys;
  std::vector<int32_t> fill_slots;       // admitted: copy host row of fill_keys[i] -> slot
  std::vector<int64_t> fill_keys;
  int64_t hits = 0, misses = 0;          // positions found in / not in a slot before this plan
};

struct CachePolicyOptions {
  int64_t slots = 0;            // HBM slots (rows the cache holds), 1 .. 2^31 - 1
  double half_life = 1000.0;    // plan steps after which a slot's score halves (finite, > 0)
  int64_t admit_count = 1;      // sketch estimate a key needs to be a candidate (>= 1)
  int64_t sketch_width = 1 << 20, sketch_depth = 4;  // width a power of two
};

class HbmCachePolicy {
 public:
  explicit HbmCachePolicy(const CachePolicyOptions& o);
  // Plans one batch (one clock step). write: the batch updates its rows (a
  // training step), so every slot it uses becomes dirty. Pins the batch's
  // slots until release().
  CachePlan plan(const int64_t* keys, int64_t n, bool write);
  // Unpins the oldest planned batch that is not released yet.
  void release();
  // Marks the slots of keys (those that have one) dirty.
  void mark_dirty(const int64_t* keys, int64_t n);
  // Every dirty slot with its key (slot order), now clean: for a flush.
  std::pair<std::vector<int32_t>, std::vector<int64_t>> take_dirty();
  int32_t slot_of(int64_t key) const;
  int64_t key_of(int32_t slot) const { return slot_key_[slot]; }
  bool dirty(int32_t slot) const { return dirty_[slot] != 0; }
  uint32_t estimate(int64_t key) const { return sketch_.estimate(key); }
  int64_t slots() const { return static_cast<int64_t>(slot_key_.size()); }
  int64_t used() const { return static_cast<int64_t>(map_.size()); }
  uint32_t clock() const { return clock_; }
  int64_t pending() const { return static_cast<int64_t>(pins_.size()); }

 private:
  double priority(int32_t s) const;  // log2(score) + last / half_life
  void pin(int32_t s);
  void unpin(int32_t s);

  CachePolicyOptions o_;
  CountMinSketch sketch_;
  std::unordered_map<int64_t, int32_t> map_;  // key -> slot
  std::vector<int64_t> slot_key_;              // slot -> key, or kFree
  std::vector<float> score_;                   // decayed count as of last_
  std::vector<uint32_t> last_;
  std::vector<uint8_t> dirty_;
  std::vector<uint32_t> pin_count_;
  std::set<std::pair<double, int32_t>> evictable_;  // unpinned occupied slots by priority
  std::vector<int32_t> free_;                        // free slots, lowest on top
  std::deque<std::vector<int32_t>> pins_;            // slots pinned by each unreleased plan
  uint32_t clock_ = 0;
};

// Host row ids of keys for a table whose rows live in host memory: a key gets
// the next row id the first time it is inserted.
class HostRowIndex {
 public:
  // rows[i] = row id of keys[i]; absent keys get new ids when insert, else -1.
  // Returns how many ids were created.
  int64_t resolve(const int64_t* keys, int64_t n, bool insert, int64_t* rows);
  int64_t size() const { return static_cast<int64_t>(keys_.size()); }
  const std::vector<int64_t>& keys() const { return keys_; }  // by row id

 private:
  std::unordered_map<int64_t, int64_t> map_;
  std::vector<int64_t> keys_;
};

}  // namespace embedlookup
