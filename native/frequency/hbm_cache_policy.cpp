#include "hbm_cache_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace embedlookup {

namespace {
constexpr int64_t kFree = std::numeric_limits<int64_t>::min();
}

HbmCachePolicy::HbmCachePolicy(const CachePolicyOptions& o)
    : o_(o), sketch_(o.sketch_width, o.sketch_depth) {
  if (o.slots < 1 || o.slots > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("slots must be in [1, 2^31 - 1], got " + std::to_string(o.slots));
  if (!(o.half_life > 0.0) || !std::isfinite(o.half_life))
    throw std::invalid_argument("half_life must be finite and > 0");
  if (o.admit_count < 1) throw std::invalid_argument("admit_count must be >= 1");
  if (o.sketch_width < 1 || (o.sketch_width & (o.sketch_width - 1)) != 0 || o.sketch_depth < 1)
    throw std::invalid_argument("sketch_width must be a power of two and sketch_depth >= 1");
  const size_t n = static_cast<size_t>(o.slots);
  slot_key_.assign(n, kFree);
  score_.assign(n, 0.0f);
  last_.assign(n, 0);
  dirty_.assign(n, 0);
  pin_count_.assign(n, 0);
  free_.resize(n);
  for (size_t i = 0; i < n; ++i) free_[i] = static_cast<int32_t>(n - 1 - i);
}

double HbmCachePolicy::priority(int32_t s) const {
  const double sc = score_[s];
  return (sc > 0.0 ? std::log2(sc) : -std::numeric_limits<double>::infinity()) + last_[s] / o_.half_life;
}

void HbmCachePolicy::pin(int32_t s) {
  if (pin_count_[s]++ == 0) evictable_.erase({priority(s), s});
}

void HbmCachePolicy::unpin(int32_t s) {
  if (--pin_count_[s] == 0 && slot_key_[s] != kFree) evictable_.insert({priority(s), s});
}

CachePlan HbmCachePolicy::plan(const int64_t* keys, int64_t n, bool write) {
  CachePlan p;
  p.slot_of.assign(static_cast<size_t>(n), -1);
  const uint32_t now = ++clock_;
  // Distinct keys in first-occurrence order with their counts.
  std::unordered_map<int64_t, uint32_t> first;
  std::vector<int64_t> distinct;
  std::vector<uint32_t> count;
  for (int64_t i = 0; i < n; ++i) {
    auto it = first.emplace(keys[i], static_cast<uint32_t>(distinct.size()));
    if (it.second) {
      distinct.push_back(keys[i]);
      count.push_back(0);
    }
    ++count[it.first->second];
  }
  std::vector<int32_t> used;
  // Residents: pin (out of the victim set), then raise the score.
  struct Cand {
    uint32_t est;
    uint32_t order;
  };
  std::vector<Cand> cands;
  for (size_t u = 0; u < distinct.size(); ++u) {
    auto it = map_.find(distinct[u]);
    if (it != map_.end()) {
      const int32_t s = it->second;
      pin(s);
      const uint32_t age = now - last_[s];
      score_[s] = static_cast<float>(score_[s] * std::exp2(-static_cast<double>(age) / o_.half_life) + count[u]);
      last_[s] = now;
      used.push_back(s);
      p.hits += count[u];
    } else {
      p.misses += count[u];
      const uint32_t est = sketch_.add(distinct[u], count[u]);
      if (est >= static_cast<uint64_t>(o_.admit_count)) cands.push_back({est, static_cast<uint32_t>(u)});
    }
  }
  // Candidates, most frequent first; each takes a free slot or beats the coldest evictable one.
  std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) { return a.est > b.est; });
  for (const Cand& c : cands) {
    int32_t s;
    if (!free_.empty()) {
      s = free_.back();
      free_.pop_back();
    } else {
      if (evictable_.empty()) break;
      const auto victim = *evictable_.begin();
      const double mine = std::log2(static_cast<double>(c.est)) + now / o_.half_life;
      if (!(mine > victim.first)) break;  // later candidates are no hotter
      s = victim.second;
      evictable_.erase(evictable_.begin());
      p.evict_slots.push_back(s);
      p.evict_keys.push_back(slot_key_[s]);
      if (dirty_[s]) {
        p.writeback_slots.push_back(s);
        p.writeback_keys.push_back(slot_key_[s]);
      }
      map_.erase(slot_key_[s]);
    }
    const int64_t key = distinct[c.order];
    slot_key_[s] = key;
    map_[key] = s;
    score_[s] = static_cast<float>(c.est);
    last_[s] = now;
    dirty_[s] = 0;
    pin_count_[s] = 1;  // not in evictable_: pinned from the start
    used.push_back(s);
    p.fill_slots.push_back(s);
    p.fill_keys.push_back(key);
  }
  for (int64_t i = 0; i < n; ++i) {
    auto it = map_.find(keys[i]);
    if (it != map_.end()) p.slot_of[i] = it->second;
  }
  if (write)
    for (int32_t s : used) dirty_[s] = 1;
  pins_.push_back(std::move(used));
  return p;
}

void HbmCachePolicy::release() {
  if (pins_.empty()) throw std::logic_error("release: no planned batch to release");
  for (int32_t s : pins_.front()) unpin(s);
  pins_.pop_front();
}

void HbmCachePolicy::mark_dirty(const int64_t* keys, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    auto it = map_.find(keys[i]);
    if (it != map_.end()) dirty_[it->second] = 1;
  }
}

std::pair<std::vector<int32_t>, std::vector<int64_t>> HbmCachePolicy::take_dirty() {
  std::pair<std::vector<int32_t>, std::vector<int64_t>> r;
  for (size_t s = 0; s < dirty_.size(); ++s) {
    if (!dirty_[s]) continue;
    r.first.push_back(static_cast<int32_t>(s));
    r.second.push_back(slot_key_[s]);
    dirty_[s] = 0;
  }
  return r;
}

int32_t HbmCachePolicy::slot_of(int64_t key) const {
  auto it = map_.find(key);
  return it == map_.end() ? -1 : it->second;
}

int64_t HostRowIndex::resolve(const int64_t* keys, int64_t n, bool insert, int64_t* rows) {
  int64_t created = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = map_.find(keys[i]);
    if (it != map_.end()) {
      rows[i] = it->second;
    } else if (insert) {
      const int64_t id = static_cast<int64_t>(map_.size());
      map_.emplace(keys[i], id);
      keys_.push_back(keys[i]);
      rows[i] = id;
      ++created;
    } else {
      rows[i] = -1;
    }
  }
  return created;
}

}  // namespace embedlookup
