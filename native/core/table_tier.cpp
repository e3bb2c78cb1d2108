// EmbeddingTable over a lower storage tier (tier.h): read-through with
// promotion into memory, serving in place, demotion and write-back under a
// memory budget.
#include <algorithm>
#include <cmath>
#include <chrono>
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
  // A tier of the table's compressed row type takes the stored bytes as
  // they are (bit for bit); any other converts through fp32.
  const bool raw = raw_tier();
  const int64_t rb = row_bytes(opt_.row_type, dim);
  std::vector<int64_t> keys(n);
  std::vector<float> rows(raw ? 0 : static_cast<size_t>(n) * dim), st(static_cast<size_t>(n) * tsf);
  std::vector<uint8_t> raw_rows(raw ? static_cast<size_t>(n * rb) : 0);
  std::vector<uint64_t> ver(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = row_keys_[ids[i]];
    if (raw)
      std::memcpy(raw_rows.data() + i * rb, rows_.row(ids[i]), static_cast<size_t>(rb));
    else
      load_row(ids[i], rows.data() + i * dim);
    if (tsf) {
      if (sf) std::memcpy(st.data() + i * tsf, state_->row(ids[i]), sizeof(float) * tsf);
      else std::fill(st.data() + i * tsf, st.data() + (i + 1) * tsf, 0.0f);
    }
    ver[i] = stamped(ids[i]);
  }
  {
    ElapsedNs t(tier_write_ns_);
    if (raw)
      tier_->set_raw(keys.data(), n, raw_rows.data(), tsf ? st.data() : nullptr, ver.data());  // throws before any change
    else
      tier_->set(keys.data(), n, rows.data(), tsf ? st.data() : nullptr, ver.data());
  }
  unstage(keys.data(), n);  // the tier copy changed: a staged one is stale
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
  // A tier of the table's compressed row type: the stored bytes as they are
  // (prefetched copies hold fp32 rows for serving: dropped, not used).
  const bool raw = raw_tier();
  const int64_t rb = row_bytes(opt_.row_type, dim);
  std::vector<float> r(raw ? 0 : static_cast<size_t>(m) * dim), st(static_cast<size_t>(m) * tsf);
  std::vector<uint8_t> raw_rows(raw ? static_cast<size_t>(m * rb) : 0);
  std::vector<uint64_t> ver(m);
  std::vector<uint8_t> found(m);
  int64_t got;
  if (raw) {
    {
      ElapsedNs t(tier_read_ns_);
      got = tier_->get_raw(want.data(), m, raw_rows.data(), tsf ? st.data() : nullptr, ver.data(), found.data());
    }
    unstage(want.data(), m);
  } else {
    got = tier_get(want.data(), m, r.data(), tsf ? st.data() : nullptr, ver.data(), found.data(), true);
  }
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
    if (raw)
      std::memcpy(rows_.row(id), raw_rows.data() + j * rb, static_cast<size_t>(rb));
    else
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
  got = tier_get(s.keys.data(), m, r, nullptr, nullptr, f, false);
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

// ---------------------------------------------------------------- prefetch
// Staged rows are a cache of tier copies, keyed by key. Invariant: a staged
// row equals the tier's current copy of its key. It holds because every tier
// write or erase made through the table (write_back_locked, erase_locked,
// apply_batch) calls unstage() after it, which drops the key's staged row and,
// while a prefetch is in flight, remembers the key as dirty so that the
// prefetch (which read the tier before or during that write) does not stage
// it. The memory copy wins over both while a key has one: staged rows are
// only consulted for keys with no row in memory.

namespace {
// Drops the oldest prefetch's rows still staged (those no later prefetch
// replaced); returns how many.
template <class Order, class Staged>
int64_t drop_oldest_batch(Order& order, Staged& staged) {
  auto b = order.front();
  order.pop_front();
  int64_t dropped = 0;
  for (size_t j = 0; j < b->keys.size(); ++j) {
    auto it = staged.find(b->keys[j]);
    if (it != staged.end() && it->second.batch == b) {
      staged.erase(it);
      ++dropped;
    }
  }
  return dropped;
}
}  // namespace

EmbeddingTable::~EmbeddingTable() {
  std::unordered_map<uint64_t, std::future<void>> pending;
  {
    std::lock_guard<std::mutex> lk(pf_mu_);
    pending.swap(prefetches_);
  }
  for (auto& kv : pending)
    if (kv.second.valid()) kv.second.wait();  // their errors have no one to go to
}

uint64_t EmbeddingTable::prefetch(const int64_t* keys, int64_t n) {
  if (!tier_) throw std::invalid_argument("prefetch: this table has no tier");
  std::vector<int64_t> k(keys, keys + n);
  std::lock_guard<std::mutex> lk(pf_mu_);
  // Fire-and-forget prefetches: drop the finished ones nobody waits for.
  for (auto it = prefetches_.begin(); it != prefetches_.end();)
    if (it->second.wait_for(std::chrono::seconds(0)) == std::future_status::ready) it = prefetches_.erase(it);
    else ++it;
  {
    std::lock_guard<std::mutex> sl(stage_mu_);
    ++stage_in_flight_;  // before the thread starts: a write from now on marks its keys dirty
  }
  try {
    const uint64_t t = ++next_ticket_;
    prefetches_[t] = std::async(std::launch::async, [this, k = std::move(k)] { run_prefetch(k); });
    return t;
  } catch (...) {
    std::lock_guard<std::mutex> sl(stage_mu_);
    if (--stage_in_flight_ == 0) stage_dirty_.clear();
    throw;
  }
}

void EmbeddingTable::wait_prefetch(uint64_t ticket) {
  std::future<void> f;
  {
    std::lock_guard<std::mutex> lk(pf_mu_);
    auto it = prefetches_.find(ticket);
    if (it == prefetches_.end()) return;
    f = std::move(it->second);
    prefetches_.erase(it);
  }
  f.get();  // rethrows the prefetch's error
}

void EmbeddingTable::wait_all_prefetches() {
  std::vector<uint64_t> tickets;
  {
    std::lock_guard<std::mutex> lk(pf_mu_);
    for (const auto& kv : prefetches_) tickets.push_back(kv.first);
  }
  std::sort(tickets.begin(), tickets.end());
  for (uint64_t t : tickets) wait_prefetch(t);
}

void EmbeddingTable::set_max_staged_rows(int64_t rows) {
  if (rows < 0) throw std::invalid_argument("max_staged_rows must be >= 0, got " + std::to_string(rows));
  std::lock_guard<std::mutex> sl(stage_mu_);
  max_staged_rows_ = rows;
  while (static_cast<int64_t>(staged_.size()) > rows && !stage_order_.empty())
    pf_dropped_ += drop_oldest_batch(stage_order_, staged_);
}

void EmbeddingTable::drop_staged_locked(int64_t key) const {
  auto it = staged_.find(key);
  if (it == staged_.end()) return;
  --it->second.batch->live;
  staged_.erase(it);
}

void EmbeddingTable::unstage(const int64_t* keys, int64_t n) const {
  std::lock_guard<std::mutex> sl(stage_mu_);
  if (staged_.empty() && stage_in_flight_ == 0) return;
  for (int64_t i = 0; i < n; ++i) {
    if (!staged_.empty()) drop_staged_locked(keys[i]);
    if (stage_in_flight_) stage_dirty_.insert(keys[i]);
  }
}

void EmbeddingTable::run_prefetch(const std::vector<int64_t>& keys) {
  struct InFlight {  // the prefetch is over, however it ends
    const EmbeddingTable* t;
    ~InFlight() {
      std::lock_guard<std::mutex> sl(t->stage_mu_);
      if (--t->stage_in_flight_ == 0) t->stage_dirty_.clear();
    }
  } in_flight{this};
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<int64_t> want;
  {
    std::vector<uint32_t> ids(static_cast<size_t>(n));
    std::shared_lock<std::shared_mutex> lk(mu_);
    resolve(keys.data(), n, ids.data());
    std::unordered_set<int64_t> seen;
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] == kNoRow && seen.insert(keys[i]).second) want.push_back(keys[i]);
  }
  {
    std::lock_guard<std::mutex> sl(stage_mu_);
    want.erase(std::remove_if(want.begin(), want.end(), [&](int64_t k) { return staged_.count(k) != 0; }),
               want.end());
    // Room: the oldest prefetches' unused rows go first.
    while (static_cast<int64_t>(staged_.size() + want.size()) > max_staged_rows_ && !stage_order_.empty())
      pf_dropped_ += drop_oldest_batch(stage_order_, staged_);
    const int64_t room = std::max<int64_t>(0, max_staged_rows_ - static_cast<int64_t>(staged_.size()));
    if (static_cast<int64_t>(want.size()) > room) want.resize(static_cast<size_t>(room));
  }
  if (want.empty()) return;
  const int64_t m = static_cast<int64_t>(want.size()), dim = opt_.dim, tsf = tier_->state_floats();
  auto b = std::make_shared<StagedBatch>();
  b->rows.resize(static_cast<size_t>(m) * dim);
  b->state.resize(static_cast<size_t>(m) * tsf);
  b->versions.resize(m);
  std::vector<uint8_t> found(m);
  {
    ElapsedNs t(pf_read_ns_);
    tier_->get_background(want.data(), m, b->rows.data(), tsf ? b->state.data() : nullptr, b->versions.data(),
                          found.data());
  }
  b->keys = std::move(want);
  std::lock_guard<std::mutex> sl(stage_mu_);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t k = b->keys[j];
    if (!found[j] || stage_dirty_.count(k) || staged_.count(k)) continue;
    staged_.emplace(k, StageRef{b, static_cast<uint32_t>(j)});
    ++b->live;
  }
  pf_prefetched_ += b->live;
  if (b->live) stage_order_.push_back(std::move(b));
  while (!stage_order_.empty() && stage_order_.front()->live == 0) stage_order_.pop_front();
}

int64_t EmbeddingTable::tier_get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                                 uint8_t* found, bool consume) const {
  std::vector<int64_t> rest_keys;
  std::vector<int64_t> rest_pos;
  int64_t got = 0;
  const int64_t dim = opt_.dim, tsf = tier_->state_floats();
  {
    std::unique_lock<std::mutex> sl(stage_mu_);
    if (staged_.empty()) {
      sl.unlock();  // a prefetch in flight stages under stage_mu_: not held across the read
      ElapsedNs t(tier_read_ns_);
      return tier_->get(keys, n, rows, state, versions, found);
    }
    for (int64_t i = 0; i < n; ++i) {
      auto it = staged_.find(keys[i]);
      if (it == staged_.end()) {
        rest_keys.push_back(keys[i]);
        rest_pos.push_back(i);
        continue;
      }
      const StagedBatch& b = *it->second.batch;
      const size_t j = it->second.i;
      std::memcpy(rows + i * dim, b.rows.data() + j * dim, sizeof(float) * dim);
      if (state && tsf) std::memcpy(state + i * tsf, b.state.data() + j * tsf, sizeof(float) * tsf);
      if (versions) versions[i] = b.versions[j];
      found[i] = 1;
      ++got;
      if (consume) {
        drop_staged_locked(keys[i]);
        ++pf_used_;
      }
    }
    while (!stage_order_.empty() && stage_order_.front()->live == 0) stage_order_.pop_front();
  }
  if (rest_keys.empty()) return got;
  const int64_t m = static_cast<int64_t>(rest_keys.size());
  std::vector<float> r(static_cast<size_t>(m) * dim), st(static_cast<size_t>(m) * tsf);
  std::vector<uint64_t> v(m);
  std::vector<uint8_t> f(m);
  {
    ElapsedNs t(tier_read_ns_);
    got += tier_->get(rest_keys.data(), m, r.data(), state && tsf ? st.data() : nullptr, v.data(), f.data());
  }
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = rest_pos[j];
    found[i] = f[j];
    if (!f[j]) continue;
    std::memcpy(rows + i * dim, r.data() + j * dim, sizeof(float) * dim);
    if (state && tsf) std::memcpy(state + i * tsf, st.data() + j * tsf, sizeof(float) * tsf);
    if (versions) versions[i] = v[j];
  }
  return got;
}

EmbeddingTable::PrefetchCounters EmbeddingTable::prefetch_counters() const {
  std::lock_guard<std::mutex> sl(stage_mu_);
  const int64_t n = static_cast<int64_t>(staged_.size());
  // bytes held: every batch still referenced (a batch is freed when its last row goes)
  int64_t bytes = 0;
  for (const auto& b : stage_order_) bytes += static_cast<int64_t>((b->rows.size() + b->state.size()) * 4);
  return {n, bytes, max_staged_rows_, pf_prefetched_, pf_used_, pf_dropped_, stage_in_flight_, pf_read_ns_.load()};
}

EmbeddingTable::TierCounters EmbeddingTable::tier_counters() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return {memory_hits_.load(), tier_hits_.load(), promotions_.load(), demotions_.load(),
          static_cast<int64_t>(index_.size()), tier_read_ns_.load(), tier_write_ns_.load()};
}

}  // namespace embedlookup
