// EmbeddingTable over a lower storage tier (tier.h): read-through with
// promotion into memory, serving in place, demotion and write-back under a
// memory budget.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>

#include "table.h"

namespace embedlookup {

namespace {
template <class T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
}  // namespace

void EmbeddingTable::attach_tier(std::shared_ptr<StorageTier> tier, const TierOptions& o) {
  if (!tier) throw std::invalid_argument("tier: none given");
  if (tier->dim() != opt_.dim)
    throw std::invalid_argument("tier: it stores rows of dim " + std::to_string(tier->dim()) +
                                " but this table has dim " + std::to_string(opt_.dim));
  if (o.memory_rows < 0) throw std::invalid_argument("memory_rows must be >= 0, got " + std::to_string(o.memory_rows));
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (tier_) throw std::invalid_argument("tier: this table already has one");
  tier_ = std::move(tier);
  // Rows already in a reopened tier keep their versions: continue above them.
  if (tier_->max_version() > version_.load()) version_.store(tier_->max_version());
  tier_opt_ = o;
  if (o.memory_rows > 0) index_.for_each([&](int64_t k, uint32_t) { arrival_.push_back(k); });
  enforce_budget_locked();
}

int64_t EmbeddingTable::write_back_locked(const uint32_t* ids, int64_t n) {
  if (!tier_) throw std::logic_error("write_back_locked: the table has no tier");
  if (n == 0) return 0;
  const int64_t dim = opt_.dim, sf = state_ ? state_->stride() : 0, tsf = tier_->state_floats();
  if (sf > 0 && tsf != sf)
    throw std::invalid_argument("tier: it stores " + std::to_string(tsf) +
                                " optimizer-state floats per row but this table's optimizer needs " +
                                std::to_string(sf) + "; create the table with optimizer=... before the tier opens");
  std::vector<int64_t> keys(n);
  std::vector<float> rows(static_cast<size_t>(n) * dim), st(static_cast<size_t>(n) * tsf);
  std::vector<uint64_t> ver(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = row_keys_[ids[i]];
    load_row(ids[i], rows.data() + i * dim);
    if (tsf) {
      if (sf) std::memcpy(st.data() + i * tsf, state_->row(ids[i]), sizeof(float) * tsf);
      else std::fill(st.data() + i * tsf, st.data() + (i + 1) * tsf, 0.0f);
    }
    ver[i] = stamped(ids[i]);
  }
  tier_->set(keys.data(), n, rows.data(), tsf ? st.data() : nullptr, ver.data());  // throws before any change
  for (int64_t i = 0; i < n; ++i) {
    index_.erase(keys[i]);
    free_rows_.push_back(ids[i]);
    if (row_in_tier_[ids[i]]) {  // its tier copy was just overwritten: the key is in the tier only
      row_in_tier_[ids[i]] = 0;
      --rows_in_both_;
    }
  }
  if (n) layout_epoch_.fetch_add(1);  // freed ids: cached row ids are stale
  demotions_.fetch_add(n);
  return n;
}

int64_t EmbeddingTable::demote(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (!tier_) throw std::invalid_argument("demote: this table has no tier");
  std::vector<uint32_t> ids(n), take;
  resolve(keys, n, ids.data());
  std::unordered_set<uint32_t> seen;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] != kNoRow && seen.insert(ids[i]).second) take.push_back(ids[i]);
  return write_back_locked(take.data(), static_cast<int64_t>(take.size()));
}

void EmbeddingTable::enforce_budget_locked() {
  if (tier_opt_.memory_rows <= 0) return;
  const int64_t excess = static_cast<int64_t>(index_.size()) - tier_opt_.memory_rows;
  if (excess <= 0) return;
  // Oldest arrivals first: a stand-in until the frequency-aware eviction
  // policy picks victims and calls write_back_locked itself.
  std::vector<uint32_t> victims;
  std::vector<int64_t> popped;
  std::unordered_set<uint32_t> seen;
  while (static_cast<int64_t>(victims.size()) < excess && !arrival_.empty()) {
    const int64_t k = arrival_.front();
    arrival_.pop_front();
    popped.push_back(k);
    const uint32_t id = index_.find(k);
    if (id != kNoRow && seen.insert(id).second) victims.push_back(id);
  }
  try {
    write_back_locked(victims.data(), static_cast<int64_t>(victims.size()));
  } catch (...) {
    for (auto it = popped.rbegin(); it != popped.rend(); ++it) arrival_.push_front(*it);  // nothing lost
    throw;
  }
}

int64_t EmbeddingTable::promote_locked(const int64_t* keys, int64_t n, uint32_t* ids, bool require_all) {
  std::vector<int64_t> want;
  std::unordered_set<int64_t> seen;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow && seen.insert(keys[i]).second) want.push_back(keys[i]);
  if (want.empty()) return 0;
  const int64_t m = static_cast<int64_t>(want.size()), dim = opt_.dim, tsf = tier_->state_floats();
  const int64_t sf = state_ ? state_->stride() : 0;
  std::vector<float> r(static_cast<size_t>(m) * dim), st(static_cast<size_t>(m) * tsf);
  std::vector<uint64_t> ver(m);
  std::vector<uint8_t> found(m);
  const int64_t got = tier_->get(want.data(), m, r.data(), tsf ? st.data() : nullptr, ver.data(), found.data());
  if (require_all && got < m)
    for (int64_t j = 0; j < m; ++j)
      if (!found[j]) {
        const int64_t pos = std::find(keys, keys + n, want[j]) - keys;
        throw KeyMissingError("keys: key " + std::to_string(want[j]) + " (position " + std::to_string(pos) +
                              ") is not in the table; look keys up (which inserts them) before applying gradients");
      }
  if (got == 0) return 0;
  if (opt_.capacity > 0 && index_.size() + got > static_cast<size_t>(opt_.capacity))
    throw TableFullError("table is full: promoting " + std::to_string(got) + " rows from the tier would pass capacity " +
                         std::to_string(opt_.capacity));
  index_.reserve(index_.size() + got);
  std::vector<uint32_t> promoted_ids;
  promoted_ids.reserve(got);
  for (int64_t j = 0; j < m; ++j) {
    if (!found[j]) continue;
    const uint32_t id = allocate_row(want[j]);
    store_row(id, r.data() + j * dim);
    if (sf) {
      if (tsf == sf) std::memcpy(state_->row(id), st.data() + j * sf, sizeof(float) * sf);
      else init_state_row(id);
    }
    stamp(id, ver[j]);  // a copy is not a change: the version stays
    row_in_tier_[id] = 1;  // the tier keeps its (durable) copy
    ++rows_in_both_;
    promoted_ids.push_back(id);
  }
  rows_promoted_locked(promoted_ids.data(), static_cast<int64_t>(promoted_ids.size()));
  int64_t positions = 0;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) {
      ids[i] = index_.find(keys[i]);
      positions += ids[i] != kNoRow;
    }
  tier_hits_.fetch_add(positions);
  promotions_.fetch_add(got);
  return got;
}

namespace {
// Per-thread scratch for read-through (reused: no allocation per call).
struct ServeScratch {
  std::vector<int64_t> pos, keys;
  std::vector<float> rows;
  std::vector<uint8_t> found;
};
ServeScratch& serve_scratch() {
  thread_local ServeScratch s;
  return s;
}
}  // namespace

// Reads the tier rows of the positions the memory pass missed (ids == kNoRow)
// into the thread's scratch: pos / rows / found for m positions. Returns m
// and sets `got` to the number found.
int64_t EmbeddingTable::fetch_missing(const int64_t* keys, int64_t n, const uint32_t* ids, int64_t& got) const {
  ServeScratch& s = serve_scratch();
  s.pos.clear();
  s.keys.clear();
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) {
      s.pos.push_back(i);
      s.keys.push_back(keys[i]);
    }
  const int64_t m = static_cast<int64_t>(s.pos.size());
  float* r = scratch(s.rows, static_cast<size_t>(m) * opt_.dim);
  uint8_t* f = scratch(s.found, m);
  got = tier_->get(s.keys.data(), m, r, nullptr, nullptr, f);
  tier_hits_.fetch_add(got, std::memory_order_relaxed);
  return m;
}

int64_t EmbeddingTable::serve_gather(const int64_t* keys, int64_t n, const uint32_t* ids, float* out,
                                     uint8_t* found) {
  int64_t got;
  const int64_t m = fetch_missing(keys, n, ids, got), dim = opt_.dim;
  const ServeScratch& s = serve_scratch();
  for (int64_t j = 0; j < m; ++j) {
    if (!s.found[j]) continue;
    std::memcpy(out + s.pos[j] * dim, s.rows.data() + j * dim, sizeof(float) * dim);
    if (found) found[s.pos[j]] = 1;
  }
  return m - got;
}

int64_t EmbeddingTable::serve_pool(const Bags& bags, const uint32_t* ids, float* out, const float* default_row) {
  const int64_t* values = bags.values;
  const int64_t n = bags.n, n_off = bags.n_offsets, n_bags = bags.n_bags;
  const int64_t* off = bags.offsets;
  const float* w = bags.weights;
  const PoolMode mode = bags.mode;
  int64_t got;
  const int64_t m = fetch_missing(values, n, ids, got), dim = opt_.dim;
  if (got == 0 || n_bags == 0) return m - got;
  const ServeScratch& s = serve_scratch();
  const float* r = s.rows.data();
  const uint8_t* f = s.found.data();
  auto bag_of = [&](int64_t p) { return static_cast<int64_t>(std::upper_bound(off, off + n_bags, p) - off) - 1; };
  auto bag_end = [&](int64_t b) { return b + 1 < n_off ? off[b + 1] : n; };
  if (mode != PoolMode::kMax) {
    // The kernel pooled the default row for each missing key: swap in the tier rows.
    int64_t b = 0;
    for (int64_t j = 0; j < m; ++j) {
      if (!f[j]) continue;
      const int64_t p = s.pos[j];
      // positions ascend: most misses fall in the bag of the previous one
      if (!(off[b] <= p && p < bag_end(b))) b = bag_of(p);
      if (b < 0) continue;  // before the first bag (offsets[0] > 0): pooled nowhere
      float x = w ? w[p] : 1.0f;
      if (mode == PoolMode::kMean) x /= static_cast<float>(bag_end(b) - off[b]);
      float* o = out + b * dim;
      const float* row = r + j * dim;
      for (int64_t c = 0; c < dim; ++c) o[c] += x * (row[c] - default_row[c]);
    }
    return m - got;
  }
  // Max: recompute each bag that holds a tier row.
  std::vector<float> tmp(rows_.stride());
  int64_t last_bag = -1;
  for (int64_t j = 0; j < m; ++j) {
    if (!f[j]) continue;
    const int64_t b = bag_of(s.pos[j]);
    if (b < 0 || b == last_bag) continue;
    last_bag = b;
    float* o = out + b * dim;
    for (int64_t c = 0; c < dim; ++c) o[c] = -INFINITY;
    for (int64_t p = off[b]; p < bag_end(b); ++p) {
      const float* row;
      if (ids[p] < kTombstone) {
        read_row_locked(ids[p], tmp.data(), nullptr);
        row = tmp.data();
      } else {
        const int64_t k = std::lower_bound(s.pos.begin(), s.pos.begin() + m, p) - s.pos.begin();
        row = f[k] ? r + k * dim : default_row;
      }
      for (int64_t c = 0; c < dim; ++c) o[c] = row[c] > o[c] ? row[c] : o[c];
    }
  }
  return m - got;
}

EmbeddingTable::TierCounters EmbeddingTable::tier_counters() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return {memory_hits_.load(), tier_hits_.load(), promotions_.load(), demotions_.load(),
          static_cast<int64_t>(index_.size())};
}

}  // namespace embedlookup
