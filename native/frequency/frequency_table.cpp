// FrequencyTable: options, scores, the read path's hooks (admission and
// eviction themselves live in admission_eviction.cpp, relayout in
// relayout.cpp), gradient routing to rows or the default row, stats and
// checkpoint state.
#include "frequency_table.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "../core/read_path.h"
#include "../cpu/kernels_cpu.h"
#include "../cpu/update_cpu.h"
#include "frequency_util.h"

namespace embedlookup {

using frequency_detail::num;

namespace {
// Decayed scores below this many steps apart come from a table.
constexpr uint32_t kDecayTable = 4096;
}  // namespace

void FrequencyOptions::validate() const {
  auto bad = [](const std::string& m) { throw std::invalid_argument(m); };
  if (!(half_life > 0.0) || !std::isfinite(half_life)) bad("half_life must be a finite number > 0 steps, got " + num(half_life));
  if (budget_rows < 0) bad("budget_rows must be >= 0 (0 = unbounded), got " + std::to_string(budget_rows));
  if (policy != EvictionPolicy::kNone && policy != EvictionPolicy::kLFU && policy != EvictionPolicy::kLRU &&
      policy != EvictionPolicy::kTTL)
    bad("policy must be one of none, lfu, lru, ttl");
  if (budget_rows > 0 && policy == EvictionPolicy::kNone) bad("a budget needs an eviction policy (lfu, lru or ttl)");
  if (budget_rows == 0 && (policy == EvictionPolicy::kLFU || policy == EvictionPolicy::kLRU))
    bad("policy lfu/lru needs a budget (budget_rows > 0)");
  if (!(evict_fraction >= 0.0 && evict_fraction < 1.0)) bad("evict_fraction must be in [0, 1), got " + num(evict_fraction));
  if (policy == EvictionPolicy::kTTL && ttl <= 0) bad("policy ttl needs ttl > 0 steps, got " + std::to_string(ttl));
  if (ttl < 0 || ttl_interval < 0) bad("ttl and ttl_interval must be >= 0");
  if (admit_count < 1) bad("admit_count must be >= 1, got " + std::to_string(admit_count));
  if (!(admit_probability > 0.0 && admit_probability <= 1.0))
    bad("admit_probability must be in (0, 1], got " + num(admit_probability));
  if (sketch_width < 1 || (sketch_width & (sketch_width - 1)) != 0)
    bad("sketch_width must be a power of two, got " + std::to_string(sketch_width));
  if (sketch_depth < 1 || sketch_depth > 16) bad("sketch_depth must be in [1, 16], got " + std::to_string(sketch_depth));
  // width * depth * 4 bytes, checked without overflowing (width <= 2^62 here).
  if (admit_count > 1 && sketch_width > kMaxSketchBytes / 4 / sketch_depth)
    bad("sketch_width x sketch_depth: " + std::to_string(sketch_width) + " x " + std::to_string(sketch_depth) +
        " counters exceed the sketch's limit of " + std::to_string(kMaxSketchBytes) + " bytes");
  if (default_row != DefaultRowKind::kZeros && default_row != DefaultRowKind::kCold)
    bad("default_row must be zeros or cold");
  if (!(hot_fraction >= 0.0 && hot_fraction <= 1.0)) bad("hot_fraction must be in [0, 1], got " + num(hot_fraction));
}

FrequencyTable::FrequencyTable(const TableOptions& t, const FrequencyOptions& f)
    : EmbeddingTable(t), fo_(f), sketch_(1, 1) {
  fo_.validate();
  if (t.capacity != 0) throw std::invalid_argument("capacity: a frequency table is bounded by budget_rows, not capacity");
  if (fo_.admit_count > 1) sketch_ = CountMinSketch(fo_.sketch_width, fo_.sketch_depth);
  if (fo_.policy == EvictionPolicy::kTTL && fo_.ttl_interval == 0) fo_.ttl_interval = std::max<int64_t>(1, fo_.ttl / 4);
  decay_table_.resize(kDecayTable);
  for (uint32_t d = 0; d < kDecayTable; ++d) decay_table_[d] = std::pow(2.0, -static_cast<double>(d) / fo_.half_life);
  if (fo_.default_row == DefaultRowKind::kCold && t.row_type != RowType::kF32)
    throw std::invalid_argument(std::string("default_row='cold' needs row_type fp32 (the cold row is a learned fp32 "
                                            "row read in place of missing keys); this table stores ") +
                                row_type_name(t.row_type));
  // Also the kernels' stand-in row: all-zero bytes read as zeros in every row type.
  cold_row_.assign(static_cast<size_t>(std::max<int64_t>(stride(), padded_stride(t.dim))), 0.0f);
}

double FrequencyTable::decay(uint32_t dt) const {
  return dt < kDecayTable ? decay_table_[dt] : std::pow(2.0, -static_cast<double>(dt) / fo_.half_life);
}

void FrequencyTable::ensure_meta() {
  if (meta_.size() < next_row_) meta_.resize(std::max<size_t>(next_row_, meta_.size() * 2), RowMeta{-1.0f, 0});
}

void FrequencyTable::add_totals(const CallStats& cs) {
  hits_ += cs.hits;
  misses_ += cs.misses;
  admitted_ += cs.admitted;
  rejected_ += cs.rejected;
  evicted_ += cs.evicted;
  hot_hits_ += cs.hot_hits;
}

void FrequencyTable::touch(const uint32_t* ids, int64_t n, const float* w, uint32_t now, CallStats& cs) {
  const uint32_t hot = static_cast<uint32_t>(fo_.hot_fraction * static_cast<double>(index_.size()));
  // Threads own disjoint rows (by 64-byte line of metadata), and each scans the
  // ids in order, so a row's updates apply in occurrence order, race-free and
  // deterministic, without atomics.
  // ~20 ns a key on one thread: threads only pay off for very large batches.
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads(), n / 262144 + 1)));
  int64_t hot_hits = 0;
#pragma omp parallel num_threads(nt) reduction(+ : hot_hits)
  {
    const uint32_t me = static_cast<uint32_t>(omp_get_thread_num()), T = static_cast<uint32_t>(omp_get_num_threads());
    constexpr int64_t kAhead = 16;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n && ids[i + kAhead] < kTombstone && ((ids[i + kAhead] >> 3) % T) == me)
        __builtin_prefetch(&meta_[ids[i + kAhead]], 1, 3);
      const uint32_t id = ids[i];
      if (id >= kTombstone || ((id >> 3) % T) != me) continue;
      RowMeta& m = meta_[id];
      const double wi = w ? w[i] : 1.0;
      // Lazy decay: the score is stored as of step `last`; it is decayed to
      // now only when touched (and when compared for eviction).
      m.score = static_cast<float>(score_at(m, now) + wi);
      m.last = std::max(m.last, now);
      hot_hits += id < hot;
    }
  }
  cs.hot_hits += hot_hits;
}

// ---- the read path's hooks
// A serving call changes no metadata: it reads tier rows in place where its
// kernel can (a promotion would move rows past the budget without a score).
bool FrequencyTable::serves_in_place(const ReadCall& c) const { return c.now == 0 || !tier_opt_.promote; }

bool FrequencyTable::miss_needs_exclusive(const ReadCall& c, int64_t missing) const {
  if (c.now == 0) return false;  // serving: read-only (the read path still promotes tier rows)
  // TTL expiry runs on every ttl_interval-th step, even when nothing is missing.
  const bool ttl_due = fo_.policy == EvictionPolicy::kTTL && c.now % static_cast<uint64_t>(fo_.ttl_interval) == 0;
  return missing > 0 || ttl_due;
}

void FrequencyTable::read_done_shared(ReadCall& c, const uint32_t* ids, int64_t missing) {
  CallStats& cs = c.stats;
  if (c.now == 0) {  // serving: no clock, no scores, no admission; only the counters
    cs.misses = missing;
    cs.hits = c.n - missing;
    const uint32_t hot = static_cast<uint32_t>(fo_.hot_fraction * static_cast<double>(index_.size()));
    for (int64_t i = 0; i < c.n; ++i) cs.hot_hits += ids[i] < hot;
  } else {  // every key has a row: only the score side pass remains
    std::lock_guard<std::mutex> g(meta_mu_);
    cs.hits = c.n;
    touch(ids, c.n, c.score_weights, c.now, cs);
  }
  add_totals(cs);
}

void FrequencyTable::fill_missing_locked(ReadCall& c, uint32_t* ids) {
  CallStats& cs = c.stats;
  if (c.now == 0) {  // a serving call whose kernel needed promoted rows (row ids)
    for (int64_t i = 0; i < c.n; ++i) cs.misses += ids[i] == kNoRow;
    cs.hits = c.n - cs.misses;
    const uint32_t hot = static_cast<uint32_t>(fo_.hot_fraction * static_cast<double>(index_.size()));
    for (int64_t i = 0; i < c.n; ++i) cs.hot_hits += ids[i] < hot;
    if (cs.promoted) evict_to_budget(clock_.load(), cs);  // the budget holds; this call's rows are spared
    add_totals(cs);
    return;
  }
  ensure_meta();
  admit_missing(c.keys, c.n, ids, c.score_weights, c.now, cs);
  touch(ids, c.n, c.score_weights, c.now, cs);
  evict_to_budget(c.now, cs);  // spares rows this call (or a later concurrent one) touched: last >= now
  add_totals(cs);
}

void FrequencyTable::rows_promoted_locked(const uint32_t* ids, int64_t n) {
  ensure_meta();
  const uint32_t now = clock_.load();
  if (!cold_) {  // Promoted rows start scoring afresh, as of the current step.
    for (int64_t i = 0; i < n; ++i) meta_[ids[i]] = RowMeta{0.0f, now};
    return;
  }
  // A cold row comes back to fp32 with the score it left with, and leaves the
  // cold store (memory holds it now: one copy, counted once).
  std::vector<int64_t> keys(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t id = ids[i];
    keys[i] = row_keys_[id];
    RowMeta m{0.0f, now};
    cold_->meta(keys[i], m.score, m.last);
    meta_[id] = m;
    if (row_in_tier_[id]) {
      row_in_tier_[id] = 0;
      --rows_in_both_;
    }
  }
  cold_->erase(keys.data(), n);
  unstage(keys.data(), n);
  cold_promoted_ += n;
}

template <class Kernel, class Serve>
CallStats FrequencyTable::frequency_read(const int64_t* keys, int64_t n, bool train, const float* score_weights,
                                         uint32_t* ids, uint64_t* epoch_out, Kernel&& kernel, Serve&& serve) {
  // A training batch must fit the budget (its rows are protected from
  // eviction); refused before the clock moves, so a refused call changes nothing.
  if (train && fo_.budget_rows > 0 && n > fo_.budget_rows) {
    std::vector<int64_t> d(keys, keys + n);
    std::sort(d.begin(), d.end());
    const int64_t distinct = std::unique(d.begin(), d.end()) - d.begin();
    if (distinct > fo_.budget_rows)
      throw std::invalid_argument("keys: this batch holds " + std::to_string(distinct) +
                                  " distinct keys but budget_rows is " + std::to_string(fo_.budget_rows) +
                                  "; raise the budget or split the batch (nothing was changed)");
  }
  const uint32_t now = train ? clock_.fetch_add(1) + 1 : 0;
  ReadCall c{keys, n, train, now, score_weights, {}};
  const uint64_t epoch = read_path(c, ids ? ids : frequency_detail::scratch_ids(n), cold_row_.data(), kernel, serve);
  if (epoch_out) *epoch_out = epoch;
  return c.stats;
}

CallStats FrequencyTable::lookup(const int64_t* keys, int64_t n, float* out, bool train, uint8_t* found,
                                 const float* weights) {
  return frequency_read(keys, n, train, weights, nullptr, nullptr, [&](const RowView& v, uint32_t* ids) {
    const int64_t missing = gather(v, keys, ids, n, out, found);
    // gather_rows writes zeros for missing keys; the learned cold row replaces them.
    if (missing && fo_.default_row == DefaultRowKind::kCold)
      for (int64_t i = 0; i < n; ++i)
        if (ids[i] >= kTombstone) std::memcpy(out + i * opt_.dim, cold_row_.data(), sizeof(float) * opt_.dim);
    return missing;
  }, [&](uint32_t* ids) { return serve_gather(keys, n, ids, out, found); });
}

CallStats FrequencyTable::pooled_lookup(const Bags& b, float* out, bool train, const float* score_weights) {
  return frequency_read(
      b.values, b.n, train, score_weights, nullptr, nullptr,
      [&](const RowView& v, uint32_t* ids) {
        return pool(v, b, ids, out);
      },
      [&](uint32_t* ids) { return serve_pool(b, ids, out, cold_row_.data()); });
}

CallStats FrequencyTable::pooled_lookup_ids(const Bags& b, float* out, bool train, const float* score_weights,
                                            uint32_t* ids_out, uint64_t* epoch_out) {
  return frequency_read(b.values, b.n, train, score_weights, ids_out, epoch_out, [&](const RowView& v, uint32_t* ids) {
    return pool(v, b, ids, out);
  }, nullptr);
}

CallStats FrequencyTable::pooled_max_argmax(const Bags& b, float* out, int64_t* argmax, bool train, uint32_t* ids_out,
                                            uint64_t* epoch_out) {
  check_max_argmax();
  // Resolve, then pool: missing values read the default row (the view's
  // stand-in row), as in pool_bags.
  return frequency_read(b.values, b.n, train, nullptr, ids_out, epoch_out, [&](const RowView& v, uint32_t* ids) {
    resolve(b.values, b.n, ids);
    int64_t missing = 0;
    for (int64_t i = 0; i < b.n; ++i) missing += ids[i] >= kTombstone;
    cpu::pool_max_argmax(v, ids, b.n, b.offsets, b.n_offsets, b.n_bags, opt_.dim, out, argmax, threads());
    return missing;
  }, nullptr);
}

void FrequencyTable::apply_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o) {
  check_gradients(keys, n, g, o);
  apply_gradients_hinted(keys, n, g, o, nullptr, 0);
}

void FrequencyTable::apply_gradients_hinted(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o,
                                            const uint32_t* hint, uint64_t hint_epoch) {
  std::vector<int64_t> pk, src, miss;
  std::vector<uint32_t> pid, ids2;
  std::vector<float> scale;
  // Keys without a row (never admitted, or evicted since their lookup; with a
  // hint, also those that read the default row in the forward) are split off;
  // the rest get one fused optimizer step, as in EmbeddingTable. The split's
  // row ids go to lock_for_update as a hint with the epoch they were read at:
  // a row freed or moved since (eviction, relayout, erase) bumps the epoch,
  // the keys are resolved again, and a key gone meanwhile surfaces as
  // KeyMissingError before any change, so the split is simply redone.
  for (int attempt = 0;; ++attempt) {
    uint32_t* ids = frequency_detail::scratch_ids(n);
    uint64_t epoch;
    if (hint && attempt == 0) {
      std::copy(hint, hint + n, ids);
      epoch = hint_epoch;
    } else {
      std::shared_lock<std::shared_mutex> lk(mu_);
      resolve(keys, n, ids);
      epoch = layout_epoch_.load();
      if (hint)  // what the forward read decides where the gradient goes
        for (int64_t i = 0; i < n; ++i)
          if (hint[i] >= kTombstone) ids[i] = kNoRow;
    }
    pk.clear();
    pid.clear();
    src.clear();
    scale.clear();
    miss.clear();
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] >= kTombstone) {
        miss.push_back(i);
        continue;
      }
      pk.push_back(keys[i]);
      pid.push_back(ids[i]);
      src.push_back(g.src ? g.src[i] : i);
      if (g.scale) scale.push_back(g.scale[i]);
    }
    if (pk.empty()) break;
    const int64_t m = static_cast<int64_t>(pk.size());
    const GradSource g2{g.grad, g.n_grad_rows, g.grad_stride, src.data(), g.scale ? scale.data() : nullptr};
    ids2.resize(pk.size());
    try {
      fused_step(pk.data(), m, ids2.data(), g2, o, pid.data(), epoch);
      break;
    } catch (const KeyMissingError&) {
      if (attempt >= 16) throw;
    }
  }
  if (miss.empty()) return;
  if (fo_.default_row != DefaultRowKind::kCold) {
    grads_dropped_ += static_cast<int64_t>(miss.size());
    return;
  }
  // One optimizer step on the shared cold row with the summed gradient of
  // every key that has no row. Readers of the default row hold the table lock
  // shared, so the exclusive lock keeps them from seeing a half-written row.
  std::vector<float> gsum(static_cast<size_t>(opt_.dim), 0.0f);
  for (int64_t i : miss) {
    const float* s = g.grad + (g.src ? g.src[i] : i) * g.grad_stride;
    const float sc = g.scale ? g.scale[i] : 1.0f;
    for (int64_t j = 0; j < opt_.dim; ++j) gsum[j] += sc * s[j];
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  const size_t nf = static_cast<size_t>(state_floats(o.kind, opt_.dim));
  if (cold_state_.size() != nf) cold_state_.assign(nf, initial_state_value(o));
  const StepScalars c = step_scalars(o, std::max<int64_t>(1, step_.load()));
  apply_row(o, c, cold_row_.data(), cold_state_.empty() ? nullptr : cold_state_.data(), gsum.data(), opt_.dim);
  ++cold_updates_;
}

void FrequencyTable::assign(const int64_t* keys, int64_t n, const float* rows) {
  check_representable(rows, n, "rows");
  if (cold_)  // any row may be demoted later: it must encode in the cold type
    for (int64_t i = 0; i < n; ++i)
      if (!row_representable(co_.type, rows + i * opt_.dim, opt_.dim))
        throw std::invalid_argument("rows: row " + std::to_string(i) + " spans more than float32 can hold (max - min "
                                    "overflows), so it could not be demoted to " + row_type_name(co_.type) +
                                    " (nothing was changed)");
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (fo_.budget_rows > 0 && n > fo_.budget_rows) {
    std::unordered_set<int64_t> d(keys, keys + n);
    if (d.size() > static_cast<size_t>(fo_.budget_rows))
      throw std::invalid_argument("keys: " + std::to_string(d.size()) + " distinct keys exceed budget_rows " +
                                  std::to_string(fo_.budget_rows) + " (nothing was changed)");
  }
  uint32_t* ids = frequency_detail::scratch_ids(n);
  resolve(keys, n, ids);
  if (tier_) promote_locked(keys, n, ids);  // a key in the tier keeps one row (and its optimizer state)
  std::vector<uint8_t> was_missing(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) was_missing[i] = ids[i] == kNoRow;
  insert_missing(keys, n, ids, false);
  ensure_meta();
  const uint32_t now = clock_.load();
  for (int64_t i = 0; i < n; ++i) {
    if (was_missing[i]) meta_[ids[i]] = RowMeta{0.0f, now};
    store_row(ids[i], rows + i * opt_.dim);
  }
  const uint64_t ver = ++version_;
  for (int64_t i = 0; i < n; ++i) stamp(ids[i], ver);
  // New rows carry last == now and are spared, like a lookup's rows.
  CallStats cs;
  evict_to_budget(now, cs);
  evicted_ += cs.evicted;
}

int64_t FrequencyTable::erase(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  ensure_meta();
  std::vector<uint32_t> freed;
  const int64_t erased = erase_locked(keys, n, &freed);  // index, tombstones, tier, version, epoch
  for (uint32_t id : freed) meta_[id].score = -1.0f;
  return erased;
}

FrequencyStats FrequencyTable::stats() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  FrequencyStats s;
  s.totals.hits = hits_;
  s.totals.misses = misses_;
  s.totals.admitted = admitted_;
  s.totals.rejected = rejected_;
  s.totals.evicted = evicted_;
  s.totals.hot_hits = hot_hits_;
  s.clock = clock_.load();
  s.rows = static_cast<int64_t>(index_.size());
  s.hot_rows = static_cast<int64_t>(fo_.hot_fraction * static_cast<double>(index_.size()));
  s.relayout_moves = relayout_moves_;
  s.relayouts_completed = relayouts_completed_;
  s.relayout_pause_max_ns = relayout_pause_max_ns_;
  s.evict_pause_max_ns = evict_pause_max_ns_;
  s.grads_dropped = grads_dropped_;
  s.cold_updates = cold_updates_;
  s.index_bytes = index_.bytes();
  s.row_bytes = rows_.bytes();
  s.state_bytes = (state_ ? state_->bytes() : 0) + cold_state_.capacity() * sizeof(float);
  s.metadata_bytes = row_keys_.capacity() * sizeof(int64_t) + free_rows_.capacity() * sizeof(uint32_t) +
                     meta_.capacity() * sizeof(RowMeta) + plan_.capacity() * sizeof(int64_t);
  s.sketch_bytes = fo_.admit_count > 1 ? sketch_.bytes() : 0;
  {
    std::lock_guard<std::mutex> g(evicted_mu_);
    s.evicted_pending = static_cast<int64_t>(evicted_buf_.keys.size());
    s.evicted_buffer_bytes = evicted_buf_.keys.capacity() * 8 + evicted_buf_.rows.capacity() * 4 +
                             evicted_buf_.state.capacity() * 4 + evicted_buf_.scores.capacity() * 4 +
                             evicted_buf_.last.capacity() * 4;
  }
  if (cold_) {
    const ColdRowStore::Memory m = cold_->memory();
    s.cold_rows = m.rows;
    s.cold_row_bytes = m.row_bytes;
    s.cold_state_bytes = m.state_bytes;
    s.cold_metadata_bytes = m.metadata_bytes;
    s.cold_index_bytes = m.index_bytes;
    s.cold_demoted = cold_demoted_;
    s.cold_promoted = cold_promoted_;
    s.cold_dropped = cold_dropped_;
  }
  return s;
}

void FrequencyTable::enable_cold_rows(const ColdRowsOptions& o) {
  if (o.type == RowType::kF32) throw std::invalid_argument("cold_row_type: must be a compressed type, not fp32");
  if (opt_.row_type != RowType::kF32)
    throw std::invalid_argument(std::string("cold_row_type: needs hot rows of row_type 'fp32', got '") +
                                row_type_name(opt_.row_type) + "'");
  if (o.budget_bytes <= 0 || o.hot_row_bytes <= 0 || o.cold_row_bytes <= 0 || o.cold_row_bytes >= o.hot_row_bytes)
    throw std::invalid_argument("cold rows: budget_bytes, hot_row_bytes > cold_row_bytes > 0 are required");
  if (!(o.hot_share > 0.0 && o.hot_share <= 1.0)) throw std::invalid_argument("hot_share must be in (0, 1]");
  if (fo_.policy != EvictionPolicy::kLFU && fo_.policy != EvictionPolicy::kLRU)
    throw std::invalid_argument("cold rows: policy must be 'lfu' or 'lru' (who is demoted first)");
  auto store = std::make_shared<ColdRowStore>(opt_.dim, o.state_floats, o.type);
  {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (tier_) throw std::invalid_argument("cold rows: this table already has a tier");
    if (index_.size() != 0) throw std::invalid_argument("cold rows: enable them on an empty table");
  }
  TierOptions to;
  to.memory_rows = 0;  // the byte budget rules (cold_budget), not the tier's row budget
  to.promote = true;
  attach_tier(store, to);
  std::unique_lock<std::shared_mutex> lk(mu_);
  cold_ = std::move(store);
  co_ = o;
}

std::vector<int64_t> FrequencyTable::cold_keys() const {
  std::vector<int64_t> k;
  if (cold_) cold_->scan(0, k);
  std::sort(k.begin(), k.end());
  return k;
}

void FrequencyTable::inspect(const int64_t* keys, int64_t n, float* score, uint32_t* last, uint32_t* row_id) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t id = index_.find(keys[i]);
    row_id[i] = id;
    const bool ok = id != kNoRow && id < meta_.size();
    score[i] = ok ? meta_[id].score : -1.0f;
    last[i] = ok ? meta_[id].last : 0;
  }
}

void FrequencyTable::apply_pooled_gradients(const Bags& b, const int64_t* argmax, const float* grad_out,
                                            int64_t grad_stride, const OptimSpec& o, const uint32_t* ids,
                                            uint64_t ids_epoch) {
  // The routing to rows / the default row is apply_gradients'.
  const GradSource g = pooled_grad_source(b, argmax, grad_out, grad_stride, o);
  apply_gradients_hinted(b.values, b.n, g, o, ids, ids_epoch);
}

FrequencyTable::SavedState FrequencyTable::save_state() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  SavedState s;
  s.clock = clock_.load();
  if (fo_.admit_count > 1) s.sketch = sketch_.counts();
  s.cold_row.assign(cold_row_.begin(), cold_row_.begin() + opt_.dim);
  s.cold_state = cold_state_;
  return s;
}

void FrequencyTable::restore_state(const SavedState& s, const int64_t* keys, int64_t n, const float* scores,
                                   const uint32_t* last) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  const size_t want = fo_.admit_count > 1 ? sketch_.counts().size() : 0;
  if (s.sketch.size() != want)
    throw std::invalid_argument("sketch: " + std::to_string(s.sketch.size()) + " counters given, this table keeps " +
                                std::to_string(want) + " (sketch_width x sketch_depth, none when admit_count == 1)");
  if (static_cast<int64_t>(s.cold_row.size()) != opt_.dim)
    throw std::invalid_argument("cold_row: expected " + std::to_string(opt_.dim) + " floats, got " +
                                std::to_string(s.cold_row.size()));
  if (!s.cold_state.empty() && s.cold_state.size() != static_cast<size_t>(opt_.dim) &&
      s.cold_state.size() != 1 && s.cold_state.size() != static_cast<size_t>(2 * opt_.dim))
    throw std::invalid_argument("cold_state: " + std::to_string(s.cold_state.size()) +
                                " floats fit no optimizer state of this dim");
  for (int64_t i = 0; i < n; ++i)
    if (!(scores[i] >= 0.0f) || !std::isfinite(scores[i]))
      throw std::invalid_argument("scores: must be finite and >= 0, got " + num(scores[i]) + " at position " +
                                  std::to_string(i));
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  resolve(keys, n, ids.data());
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) throw KeyMissingError("keys: key " + std::to_string(keys[i]) + " is not in the table");
  ensure_meta();
  for (int64_t i = 0; i < n; ++i) meta_[ids[i]] = RowMeta{scores[i], last[i]};
  clock_.store(s.clock);
  if (!s.sketch.empty()) sketch_.counts() = s.sketch;
  std::copy(s.cold_row.begin(), s.cold_row.end(), cold_row_.begin());
  cold_state_ = s.cold_state;
}

}  // namespace embedlookup
