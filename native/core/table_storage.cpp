// EmbeddingTable, storage part (issue 4): versions -> deltas and checkpoints,
// and the lower tier (read-through, write-back). Declared in table.h's
// "storage" blocks; kept in its own file so the hot-path code stays short.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <mutex>
#include <unordered_set>

#include "../cpu/kernels_cpu.h"
#include "table.h"

namespace embedlookup {

namespace {
[[noreturn]] void bad_batch(const std::string& m) { throw std::invalid_argument(m); }
std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}
template <class T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
}  // namespace

void EmbeddingTable::read_row_locked(uint32_t id, float* row, float* state) const {
  const int64_t sf = state_ ? state_->stride() : 0;
  for (;;) {  // row and state from the same instant (gradient steps run under the shared lock)
    const uint32_t s0 = seq_.read_begin(id);
    std::memcpy(row, rows_.row(id), sizeof(float) * opt_.dim);
    if (state && sf) std::memcpy(state, state_->row(id), sizeof(float) * sf);
    if (seq_.read_valid(id, s0)) return;
  }
}

// ------------------------------------------------------------ deltas/checkpoints
void EmbeddingTable::collect(uint64_t since, bool full, bool with_versions, RowBatch& b) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  b = RowBatch();
  b.full = full;
  b.lineage = lineage_;
  b.to_version = version_.load();  // first: later changes may slip in, none before it is missed
  if (full) since = 0;
  b.from_version = since;
  b.dim = opt_.dim;
  b.init = opt_.init;
  b.capacity = opt_.capacity;
  b.state_kind = state_kind_.load();
  b.state_init = state_init_;
  b.state_floats = state_floats(b.state_kind, opt_.dim);
  b.step = step_.load();
  b.has_versions = with_versions;
  const int64_t dim = opt_.dim, sf = b.state_floats;

  // (key, memory row id or kNoRow + tier position): 16 bytes, sorted below
  struct Src {
    int64_t key;
    uint32_t id;
    uint32_t tpos;
  };
  std::vector<Src> src;
  src.reserve(full ? index_.size() : 0);
  // A sequential scan of the index (not a probe per row id): live rows only.
  index_.for_each([&](int64_t k, uint32_t id) {
    if (stamped(id) > since) src.push_back({k, id, 0});
  });
  std::vector<int64_t> tk;
  std::vector<float> tr, ts;
  std::vector<uint64_t> tv;
  int64_t tsf = 0;
  if (tier_) {
    tier_->scan(since, tk);
    const int64_t m = static_cast<int64_t>(tk.size());
    tsf = tier_->state_floats();
    tr.resize(m * dim);
    ts.resize(m * tsf);
    tv.resize(m);
    std::vector<uint8_t> f(m);
    tier_->get(tk.data(), m, tr.data(), tsf ? ts.data() : nullptr, tv.data(), f.data());
    for (int64_t j = 0; j < m; ++j)
      if (f[j]) src.push_back({tk[j], kNoRow, static_cast<uint32_t>(j)});  // tier rows < 2^32
  }
  std::sort(src.begin(), src.end(), [](const Src& a, const Src& c) { return a.key < c.key; });
  const int64_t n = static_cast<int64_t>(src.size());
  b.keys.resize(n);
  b.rows.resize(static_cast<size_t>(n) * dim);
  b.state.resize(static_cast<size_t>(n) * sf);
  if (with_versions) b.versions.resize(n);
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 4096)
  for (int64_t i = 0; i < n; ++i) {
    const Src& s = src[i];
    b.keys[i] = s.key;
    float* st = sf ? b.state.data() + i * sf : nullptr;
    uint64_t v;
    if (s.id != kNoRow) {
      read_row_locked(s.id, b.rows.data() + i * dim, st);
      v = stamped(s.id);
    } else {
      std::memcpy(b.rows.data() + i * dim, tr.data() + s.tpos * dim, sizeof(float) * dim);
      if (st) {
        if (tsf == sf) std::memcpy(st, ts.data() + s.tpos * sf, sizeof(float) * sf);
        else std::fill(st, st + sf, state_init_);
      }
      v = tv[s.tpos];
    }
    if (with_versions) b.versions[i] = v;
  }
  if (!full) {
    std::vector<std::pair<int64_t, uint64_t>> dead;
    for (const auto& kv : tombstones_)
      if (kv.second > since) dead.push_back(kv);
    std::sort(dead.begin(), dead.end());
    for (const auto& kv : dead) {
      b.dead_keys.push_back(kv.first);
      b.dead_versions.push_back(kv.second);
    }
  }
}

void EmbeddingTable::apply_batch(const RowBatchView& b) {
  const char* what = b.full ? "checkpoint" : "delta";
  if (b.dim != opt_.dim)
    bad_batch(std::string(what) + ": rows have dim " + std::to_string(b.dim) + " but this table has dim " +
              std::to_string(opt_.dim));
  const size_t n = b.keys.size();
  if (b.rows.size() != n * b.dim || b.state.size() != n * b.state_floats ||
      (b.has_versions && b.versions.size() != n) || b.dead_keys.size() != b.dead_versions.size() ||
      b.state_floats != state_floats(b.state_kind, b.dim))
    bad_batch(std::string(what) + ": inconsistent sizes");
  std::unique_lock<std::shared_mutex> lk(mu_);
  // ---- validate everything before the first change
  // Keys are strictly ascending (the encoder sorts them, the decoder checks):
  // no duplicates, so counting needs no set.
  for (size_t i = 1; i < n; ++i)
    if (b.keys[i] <= b.keys[i - 1]) bad_batch(std::string(what) + ": keys are not strictly ascending");
  const uint64_t have = version_.load();
  const size_t in_tier = tier_ ? static_cast<size_t>(tier_->size()) : 0;
  const bool fresh = have == 0 && index_.size() == 0 && in_tier == 0;
  if (b.full) {
    if (!fresh)
      bad_batch("checkpoint: a full checkpoint loads only into a new, empty table (this one is at version " +
                std::to_string(have) + "); use EmbeddingTable.load(path)");
  } else {
    if (!fresh && b.lineage != lineage_)
      bad_batch("delta: it comes from another table (lineage " + hex(b.lineage) + ", this table's is " +
                hex(lineage_) + ")");
    if (b.from_version > have)
      bad_batch("delta: out of order: it holds the changes after version " + std::to_string(b.from_version) +
                " but this table is at version " + std::to_string(have) + "; apply the deltas in between first");
    if (b.to_version < have)
      bad_batch("delta: stale: it ends at version " + std::to_string(b.to_version) +
                " but this table is already at version " + std::to_string(have));
  }
  const OptimKind have_kind = state_kind_.load();
  if (b.state_kind != OptimKind::kNone && have_kind != OptimKind::kNone && b.state_kind != have_kind)
    bad_batch(std::string(what) + ": its optimizer state is of kind " + std::to_string(int(b.state_kind)) +
              " but this table's is of kind " + std::to_string(int(have_kind)));
  const int64_t n64 = static_cast<int64_t>(n);
  std::vector<uint32_t> ids(n);
  resolve(b.keys.data(), n64, ids.data());
  size_t dead_in_memory = 0, incoming = 0;
  for (int64_t k : b.dead_keys)
    if (index_.find(k) != kNoRow) ++dead_in_memory;
  std::unordered_set<int64_t> dead;
  if (!b.dead_keys.empty()) dead.insert(b.dead_keys.begin(), b.dead_keys.end());
  for (size_t i = 0; i < n; ++i) incoming += ids[i] == kNoRow || (!dead.empty() && dead.count(b.keys[i]));
  const size_t after = index_.size() - dead_in_memory + incoming;
  if (opt_.capacity > 0 && after > static_cast<size_t>(opt_.capacity))
    throw TableFullError(std::string(what) + ": applying it needs " + std::to_string(after) +
                         " rows in memory > capacity " + std::to_string(opt_.capacity) + "; nothing was applied");
  if (after > static_cast<size_t>(kMaxRowId)) throw TableFullError("table would exceed 2^32 - 3 rows");

  // ---- apply (exclusive lock held: readers see none of it until we return)
  if (b.state_kind != OptimKind::kNone && have_kind == OptimKind::kNone) {
    OptimSpec o;
    o.kind = b.state_kind;
    o.initial_accumulator_value = b.state_init;
    bind_state(o);
  }
  for (size_t i = 0; i < b.dead_keys.size(); ++i) {
    const int64_t k = b.dead_keys[i];
    const uint32_t id = index_.erase(k);
    if (id != kNoRow) free_rows_.push_back(id);
    tombstones_[k] = b.dead_versions[i];
  }
  if (!b.dead_keys.empty()) layout_epoch_.fetch_add(1);  // freed ids: cached row ids are stale
  if (tier_) {
    if (!b.dead_keys.empty()) tier_->erase(b.dead_keys.data(), static_cast<int64_t>(b.dead_keys.size()));
    // Rows the batch overwrites leave the tier: memory holds the new value.
    tier_->erase(b.keys.data(), n64);
  }
  index_.reserve(index_.size() + incoming);
  const int64_t dim = opt_.dim, sf = state_ ? state_->stride() : 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t id = index_.find(b.keys[i]);
    const bool created = id == kNoRow;
    if (created) id = allocate_row(b.keys[i]);
    std::memcpy(rows_.row(id), b.rows.data() + i * dim, sizeof(float) * dim);
    if (sf) {
      if (b.state_floats == sf) std::memcpy(state_->row(id), b.state.data() + i * sf, sizeof(float) * sf);
      else if (created) init_state_row(id);
    }
    stamp(id, b.has_versions ? b.versions[i] : b.to_version);
  }
  version_.store(std::max(have, b.to_version));
  if (b.step > step_.load()) step_.store(b.step);
  lineage_ = b.lineage;
  if (tier_) enforce_budget_locked();
}

// ------------------------------------------------------------------ the tier
void EmbeddingTable::attach_tier(std::shared_ptr<StorageTier> tier, int64_t memory_rows, bool promote) {
  if (!tier) throw std::invalid_argument("tier: none given");
  if (tier->dim() != opt_.dim)
    throw std::invalid_argument("tier: it stores rows of dim " + std::to_string(tier->dim()) +
                                " but this table has dim " + std::to_string(opt_.dim));
  if (memory_rows < 0) throw std::invalid_argument("memory_rows must be >= 0");
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (tier_) throw std::invalid_argument("tier: this table already has one");
  tier_ = std::move(tier);
  // Rows already in a reopened tier keep their versions: continue above them.
  if (tier_->max_version() > version_.load()) version_.store(tier_->max_version());
  memory_rows_ = memory_rows;
  promote_ = promote;
  if (memory_rows_ > 0) index_.for_each([&](int64_t k, uint32_t) { arrival_.push_back(k); });
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
    std::memcpy(rows.data() + i * dim, rows_.row(ids[i]), sizeof(float) * dim);
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
  if (memory_rows_ <= 0) return;
  const int64_t excess = static_cast<int64_t>(index_.size()) - memory_rows_;
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

int64_t EmbeddingTable::promote_locked(const int64_t* keys, int64_t n, uint32_t* ids) {
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
  if (got == 0) return 0;
  if (opt_.capacity > 0 && index_.size() + got > static_cast<size_t>(opt_.capacity))
    throw TableFullError("table is full: promoting " + std::to_string(got) + " rows from the tier would pass capacity " +
                         std::to_string(opt_.capacity));
  index_.reserve(index_.size() + got);
  std::vector<int64_t> moved;
  moved.reserve(got);
  for (int64_t j = 0; j < m; ++j) {
    if (!found[j]) continue;
    const uint32_t id = allocate_row(want[j]);
    std::memcpy(rows_.row(id), r.data() + j * dim, sizeof(float) * dim);
    if (sf) {
      if (tsf == sf) std::memcpy(state_->row(id), st.data() + j * sf, sizeof(float) * sf);
      else init_state_row(id);
    }
    stamp(id, ver[j]);  // a move is not a change: the version stays
    moved.push_back(want[j]);
  }
  tier_->erase(moved.data(), static_cast<int64_t>(moved.size()));
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

int64_t EmbeddingTable::serve_pool(const int64_t* values, int64_t n, const uint32_t* ids, const int64_t* off,
                                   int64_t n_off, int64_t n_bags, PoolMode mode, const float* w, float* out) {
  int64_t got;
  const int64_t m = fetch_missing(values, n, ids, got), dim = opt_.dim;
  if (got == 0 || n_bags == 0) return m - got;
  const ServeScratch& s = serve_scratch();
  const float* r = s.rows.data();
  const uint8_t* f = s.found.data();
  auto bag_of = [&](int64_t p) { return static_cast<int64_t>(std::upper_bound(off, off + n_bags, p) - off) - 1; };
  auto bag_end = [&](int64_t b) { return b + 1 < n_off ? off[b + 1] : n; };
  if (mode != PoolMode::kMax) {
    // The kernel pooled a zero row for each missing key: add the tier rows.
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
      for (int64_t c = 0; c < dim; ++c) o[c] += x * row[c];
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
        row = f[k] ? r + k * dim : zero_row_.data();
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
