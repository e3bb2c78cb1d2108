#include "frequency.h"

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

#include "../cpu/kernels_cpu.h"
#include "../cpu/update_cpu.h"  // torch backend (issue 5)

namespace embedlookup {

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint32_t* freq_scratch_ids(int64_t n) {
  thread_local std::vector<uint32_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n) + n / 4 + 64);
  return buf.data();
}

// Decayed scores below this many steps apart come from a table.
constexpr uint32_t kDecayTable = 4096;

// Admission coin for (key, step): uniform in [0, 1) from a hash, so a replay
// of the same stream makes the same decisions.
double admission_coin(uint64_t seed, int64_t key, uint32_t step) {
  const uint64_t h = mix64(hash_key(key) ^ mix64(seed + step));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

std::string num(double x) {
  std::string s = std::to_string(x);
  return s;
}
}  // namespace

// ----------------------------------------------------------------- options
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
  if (default_row != DefaultRowKind::kZeros && default_row != DefaultRowKind::kCold)
    bad("default_row must be zeros or cold");
  if (!(hot_fraction >= 0.0 && hot_fraction <= 1.0)) bad("hot_fraction must be in [0, 1], got " + num(hot_fraction));
}

// ------------------------------------------------------------------ sketch
CountMinSketch::CountMinSketch(int64_t width, int64_t depth)
    : width_(width), depth_(depth), counts_(static_cast<size_t>(width * depth), 0u) {}

size_t CountMinSketch::slot(int64_t key, int64_t row) const {
  // One independent-looking hash per row: the key's hash re-mixed with the row.
  const uint64_t h = mix64(hash_key(key) + 0x632be59bd9b4e019ULL * static_cast<uint64_t>(row + 1));
  return static_cast<size_t>(row * width_) + (h & static_cast<uint64_t>(width_ - 1));
}

uint32_t CountMinSketch::estimate(int64_t key) const {
  uint32_t m = UINT32_MAX;
  for (int64_t r = 0; r < depth_; ++r) m = std::min(m, counts_[slot(key, r)]);
  return m;
}

uint32_t CountMinSketch::add(int64_t key, uint32_t c) {
  // Conservative update: raise each counter only up to the new estimate, which
  // keeps estimates >= the truth and cuts over-counting from shared counters.
  const uint32_t est = estimate(key);
  const uint32_t target = est > UINT32_MAX - c ? UINT32_MAX : est + c;
  for (int64_t r = 0; r < depth_; ++r) {
    uint32_t& x = counts_[slot(key, r)];
    if (x < target) x = target;
  }
  return target;
}

// ------------------------------------------------------------------- table
FrequencyTable::FrequencyTable(const TableOptions& t, const FrequencyOptions& f)
    : EmbeddingTable(t), fo_(f), sketch_(1, 1) {
  fo_.validate();
  if (t.capacity != 0) throw std::invalid_argument("capacity: a frequency table is bounded by budget_rows, not capacity");
  if (fo_.admit_count > 1) sketch_ = CountMinSketch(fo_.sketch_width, fo_.sketch_depth);
  if (fo_.policy == EvictionPolicy::kTTL && fo_.ttl_interval == 0) fo_.ttl_interval = std::max<int64_t>(1, fo_.ttl / 4);
  decay_table_.resize(kDecayTable);
  for (uint32_t d = 0; d < kDecayTable; ++d) decay_table_[d] = std::pow(2.0, -static_cast<double>(d) / fo_.half_life);
  cold_row_.assign(static_cast<size_t>(stride()), 0.0f);
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

void FrequencyTable::admit_missing(const int64_t* keys, int64_t n, uint32_t* ids, const float* w, uint32_t now,
                                   CallStats& cs) {
  (void)w;
  // storage (issue 4): keys evicted to a tier come back with their trained
  // row and optimizer state (no admission test: they earned a row before).
  if (tier_) {
    std::vector<uint8_t> was_missing(n);
    for (int64_t i = 0; i < n; ++i) was_missing[i] = ids[i] == kNoRow;
    cs.promoted = promote_locked(keys, n, ids);
    if (cs.promoted) {
      ensure_meta();
      for (int64_t i = 0; i < n; ++i)
        if (was_missing[i] && ids[i] != kNoRow) meta_[ids[i]] = RowMeta{0.0f, now};
    }
  }
  // Distinct missing keys in first-occurrence order, with their counts.
  std::unordered_map<int64_t, uint32_t> slot_of;
  std::vector<int64_t> fresh;
  std::vector<uint32_t> count;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] != kNoRow) continue;
    ++cs.misses;
    auto it = slot_of.emplace(keys[i], static_cast<uint32_t>(fresh.size()));
    if (it.second) {
      fresh.push_back(keys[i]);
      count.push_back(0);
    }
    ++count[it.first->second];
  }
  cs.hits = n - cs.misses;
  // The batch must fit the budget (its rows are protected from eviction).
  if (fo_.budget_rows > 0 && n > fo_.budget_rows) {
    std::unordered_set<uint32_t> present;
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] != kNoRow) present.insert(ids[i]);
    const size_t distinct = present.size() + fresh.size();
    if (distinct > static_cast<size_t>(fo_.budget_rows))
      throw std::invalid_argument("keys: this batch holds " + std::to_string(distinct) +
                                  " distinct keys but budget_rows is " + std::to_string(fo_.budget_rows) +
                                  "; raise the budget or split the batch (nothing was changed)");
  }
  if (index_.size() + fresh.size() > static_cast<size_t>(kMaxRowId))
    throw TableFullError("table would exceed 2^32 - 3 rows");
  // Admission decisions (the sketch counts sightings of keys without a row).
  std::vector<uint32_t> id_of(fresh.size(), kNoRow);
  std::vector<uint32_t> created;
  index_.reserve(index_.size() + fresh.size());
  for (size_t u = 0; u < fresh.size(); ++u) {
    bool admit = true;
    if (fo_.admit_count > 1) admit = sketch_.add(fresh[u], count[u]) >= static_cast<uint64_t>(fo_.admit_count);
    if (admit && fo_.admit_probability < 1.0) admit = admission_coin(fo_.admit_seed, fresh[u], now) < fo_.admit_probability;
    if (!admit) {
      ++cs.rejected;
      continue;
    }
    id_of[u] = allocate_row(fresh[u]);
    created.push_back(id_of[u]);
  }
  cs.admitted = static_cast<int64_t>(created.size());
  if (created.empty()) return;
  const uint64_t ver = ++version_;  // storage (issue 4): admitted rows carry their insert's version
  for (uint32_t id : created) stamp(id, ver);
  ensure_meta();
  const int64_t nc = static_cast<int64_t>(created.size()), dim = opt_.dim;
#pragma omp parallel for num_threads(threads()) schedule(static) if (nc > 256)
  for (int64_t k = 0; k < nc; ++k) {
    const uint32_t id = created[k];
    float* r = rows_.row(id);
    init_row(opt_.init, row_keys_[id], r, dim);
    for (int64_t j = dim; j < rows_.stride(); ++j) r[j] = 0.0f;
    init_state_row(id);
    meta_[id] = RowMeta{0.0f, now};
  }
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) ids[i] = id_of[slot_of[keys[i]]];
}

void FrequencyTable::evict_rows(std::vector<uint32_t>& victims, uint32_t now) {
  if (victims.empty()) return;
  // storage (issue 4): with a tier, evicted rows (row, optimizer state,
  // version) are written back there instead of being handed out; a later
  // lookup of the key promotes them again. write_back_locked frees the ids.
  if (tier_) {
    write_back_locked(victims.data(), static_cast<int64_t>(victims.size()));
    for (uint32_t id : victims) meta_[id].score = -1.0f;
    return;
  }
  EvictedRows local;
  const int64_t sd = state_ ? state_->stride() : 0;
  std::unique_lock<std::mutex> buf_lk(evicted_mu_, std::defer_lock);
  EvictedRows* out = &local;
  if (!sink_) {
    buf_lk.lock();
    out = &evicted_buf_;
    // The optimizer state appeared after older rows were evicted: theirs was
    // still the initial value.
    if (!out->keys.empty() && out->state_dim < sd) {
      std::vector<float> st(out->keys.size() * sd, state_init_);
      for (size_t i = 0; i < out->keys.size(); ++i)
        std::copy_n(out->state.begin() + i * out->state_dim, out->state_dim, st.begin() + i * sd);
      out->state.swap(st);
    }
  }
  out->dim = opt_.dim;
  out->state_dim = std::max(out->state_dim, sd);
  const int64_t osd = out->state_dim;
  for (uint32_t id : victims) {
    const int64_t key = row_keys_[id];
    out->keys.push_back(key);
    const float* r = rows_.row(id);
    out->rows.insert(out->rows.end(), r, r + opt_.dim);
    const size_t s0 = out->state.size();
    out->state.resize(s0 + osd, state_init_);
    if (sd) std::copy_n(state_->row(id), sd, out->state.begin() + s0);
    out->scores.push_back(static_cast<float>(score_at(meta_[id], now)));
    out->last.push_back(meta_[id].last);
    index_.erase(key);
    free_rows_.push_back(id);
    meta_[id].score = -1.0f;
    tombstones_[key] = version_.load() + 1;  // storage (issue 4): deltas carry evictions
  }
  ++version_;  // storage (issue 4)
  // Freed ids may be reused: row ids cached by a forward (torch backward) are stale.
  if (!victims.empty()) layout_epoch_.fetch_add(1);
  if (sink_) sink_(local);
}

void FrequencyTable::evict_to_budget(uint32_t now, CallStats& cs) {
  if (fo_.policy == EvictionPolicy::kNone) return;
  const int64_t t0 = now_ns(), evicted0 = cs.evicted;
  struct Timer {  // records the pause when this call evicted anything
    const int64_t t0, before;
    const CallStats& cs;
    int64_t& max_ns;
    ~Timer() {
      if (cs.evicted > before) max_ns = std::max(max_ns, now_ns() - t0);
    }
  } timer{t0, evicted0, cs, evict_pause_max_ns_};
  const uint32_t nr = next_row_;
  std::vector<uint32_t> victims;
  if (fo_.policy == EvictionPolicy::kTTL && now % static_cast<uint64_t>(fo_.ttl_interval) == 0) {
    for (uint32_t id = 0; id < nr; ++id) {
      const RowMeta& m = meta_[id];
      if (m.score >= 0.0f && m.last < now && static_cast<int64_t>(now - m.last) > fo_.ttl) victims.push_back(id);
    }
    // Oldest first, as LRU would order them.
    std::sort(victims.begin(), victims.end(), [&](uint32_t a, uint32_t b) {
      return meta_[a].last != meta_[b].last ? meta_[a].last < meta_[b].last : row_keys_[a] < row_keys_[b];
    });
    cs.evicted += static_cast<int64_t>(victims.size());
    evict_rows(victims, now);
    victims.clear();
  }
  const int64_t budget = fo_.budget_rows;
  const int64_t live = static_cast<int64_t>(index_.size());
  if (budget == 0 || live <= budget) return;
  const int64_t target = budget - static_cast<int64_t>(std::floor(static_cast<double>(budget) * fo_.evict_fraction));
  int64_t need = live - target;
  // Candidates: live rows not touched by this call.
  struct Cand {
    double s;
    uint32_t last, id;
  };
  std::vector<Cand> cand;
  cand.reserve(static_cast<size_t>(live));
  const bool lfu = fo_.policy == EvictionPolicy::kLFU;
  for (uint32_t id = 0; id < nr; ++id) {
    const RowMeta& m = meta_[id];
    if (m.score < 0.0f || m.last >= now) continue;  // touched by this call (or a later concurrent one)
    cand.push_back(Cand{lfu ? score_at(m, now) : 0.0, m.last, id});
  }
  // Priority: LFU (score, last, key); LRU and TTL (last, key). Lowest goes first.
  auto before = [&](const Cand& a, const Cand& b) {
    if (a.s != b.s) return a.s < b.s;
    if (a.last != b.last) return a.last < b.last;
    return row_keys_[a.id] < row_keys_[b.id];
  };
  need = std::min<int64_t>(need, static_cast<int64_t>(cand.size()));
  if (need < static_cast<int64_t>(cand.size())) std::nth_element(cand.begin(), cand.begin() + need, cand.end(), before);
  std::sort(cand.begin(), cand.begin() + need, before);
  victims.reserve(static_cast<size_t>(need));
  for (int64_t i = 0; i < need; ++i) victims.push_back(cand[i].id);
  cs.evicted += need;
  evict_rows(victims, now);
}

template <class Kernel>
CallStats FrequencyTable::train_call(const int64_t* keys, int64_t n, const float* w, Kernel&& kernel,
                                     uint32_t* ids_out, uint64_t* epoch_out) {
  CallStats cs;
  uint32_t* ids = ids_out ? ids_out : freq_scratch_ids(n);
  const uint32_t now = clock_.fetch_add(1) + 1;
  const RowView view{&rows_, &seq_, cold_row_.data()};
  // TTL expiry runs on every ttl_interval-th step, even when nothing is missing.
  const bool ttl_due = fo_.policy == EvictionPolicy::kTTL && now % static_cast<uint64_t>(fo_.ttl_interval) == 0;
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    if (kernel(view, ids) == 0 && !ttl_due) {
      // Every key has a row: only the score side pass remains.
      std::lock_guard<std::mutex> g(meta_mu_);
      cs.hits = n;
      touch(ids, n, w, now, cs);
      add_totals(cs);
      if (epoch_out) *epoch_out = layout_epoch_.load();
      return cs;
    }
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  resolve(keys, n, ids);
  ensure_meta();
  admit_missing(keys, n, ids, w, now, cs);
  touch(ids, n, w, now, cs);
  evict_to_budget(now, cs);  // spares rows this call (or a later concurrent one) touched: last >= now
  // Rows admitted by this call read their initial values, not the default row.
  if (cs.admitted || cs.promoted) kernel(view, ids);
  add_totals(cs);
  if (epoch_out) *epoch_out = layout_epoch_.load();  // after this call's own evictions
  return cs;
}

template <class Kernel>
CallStats FrequencyTable::serve_call(int64_t n, Kernel&& kernel, uint32_t* ids_out, uint64_t* epoch_out) {
  // Read-only: no clock, no scores, no admission; only the counters.
  CallStats cs;
  uint32_t* ids = ids_out ? ids_out : freq_scratch_ids(n);
  const RowView view{&rows_, &seq_, cold_row_.data()};
  std::shared_lock<std::shared_mutex> lk(mu_);
  cs.misses = kernel(view, ids);
  cs.hits = n - cs.misses;
  const uint32_t hot = static_cast<uint32_t>(fo_.hot_fraction * static_cast<double>(index_.size()));
  for (int64_t i = 0; i < n; ++i) cs.hot_hits += ids[i] < hot;
  add_totals(cs);
  if (epoch_out) *epoch_out = layout_epoch_.load();
  return cs;
}

CallStats FrequencyTable::lookup(const int64_t* keys, int64_t n, float* out, bool train, uint8_t* found,
                                 const float* weights) {
  auto kernel = [&](const RowView& v, uint32_t* ids) {
    const int64_t missing = cpu::gather_rows(v, index_, keys, ids, n, opt_.dim, out, found, threads());
    // gather_rows writes zeros for missing keys; the learned cold row replaces them.
    if (missing && fo_.default_row == DefaultRowKind::kCold)
      for (int64_t i = 0; i < n; ++i)
        if (ids[i] >= kTombstone) std::memcpy(out + i * opt_.dim, cold_row_.data(), sizeof(float) * opt_.dim);
    return missing;
  };
  return train ? train_call(keys, n, weights, kernel) : serve_call(n, kernel);
}

CallStats FrequencyTable::pooled_lookup(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                                        int64_t n_bags, PoolMode mode, const float* pool_weights, float* out,
                                        bool train, const float* score_weights) {
  auto kernel = [&](const RowView& v, uint32_t* ids) {
    return cpu::pool_bags(v, index_, values, ids, n, offsets, n_offsets, n_bags, opt_.dim, mode, pool_weights, out,
                          threads());
  };
  return train ? train_call(values, n, score_weights, kernel) : serve_call(n, kernel);
}

void FrequencyTable::apply_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o) {
  if (o.kind == OptimKind::kNone) throw std::invalid_argument("optimizer kind is none");
  const int64_t bad = cpu::first_non_finite(g.grad, g.n_grad_rows, opt_.dim, g.grad_stride, threads());
  if (bad >= 0)
    throw std::invalid_argument("grads: row " + std::to_string(bad) +
                                " holds NaN or inf; non-finite gradients are rejected and nothing was updated");
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
    uint32_t* ids = freq_scratch_ids(n);
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
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (fo_.budget_rows > 0 && n > fo_.budget_rows) {
    std::unordered_set<int64_t> d(keys, keys + n);
    if (d.size() > static_cast<size_t>(fo_.budget_rows))
      throw std::invalid_argument("keys: " + std::to_string(d.size()) + " distinct keys exceed budget_rows " +
                                  std::to_string(fo_.budget_rows) + " (nothing was changed)");
  }
  uint32_t* ids = freq_scratch_ids(n);
  resolve(keys, n, ids);
  std::vector<uint8_t> was_missing(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) was_missing[i] = ids[i] == kNoRow;
  insert_missing(keys, n, ids, false);
  ensure_meta();
  const uint32_t now = clock_.load();
  for (int64_t i = 0; i < n; ++i) {
    if (was_missing[i]) meta_[ids[i]] = RowMeta{0.0f, now};
    std::memcpy(rows_.row(ids[i]), rows + i * opt_.dim, sizeof(float) * opt_.dim);
  }
  const uint64_t ver = ++version_;  // storage (issue 4)
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

// --------------------------------------------------------------- relayout
int64_t FrequencyTable::relayout_step(int64_t max_moves) {
  bool have_plan;
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    have_plan = !plan_.empty();
  }
  std::vector<int64_t> fresh_plan;
  if (!have_plan) {
    // Plan: every live row, hottest first (score now, then most recent, then
    // key). Only the snapshot holds locks (shared, plus the metadata mutex so
    // side passes wait, lookups do not); the sort runs with none.
    struct P {
      double s;
      uint32_t last;
      int64_t key;
    };
    std::vector<P> ps;
    {
      std::shared_lock<std::shared_mutex> lk(mu_);
      std::lock_guard<std::mutex> g(meta_mu_);
      const uint32_t now = clock_.load();
      const uint32_t nr = std::min<uint32_t>(next_row_, static_cast<uint32_t>(meta_.size()));
      ps.reserve(index_.size());
      for (uint32_t id = 0; id < nr; ++id)
        if (meta_[id].score >= 0.0f) ps.push_back(P{score_at(meta_[id], now), meta_[id].last, row_keys_[id]});
    }
    std::sort(ps.begin(), ps.end(), [](const P& a, const P& b) {
      if (a.s != b.s) return a.s > b.s;
      if (a.last != b.last) return a.last > b.last;
      return a.key < b.key;
    });
    fresh_plan.resize(ps.size());
    for (size_t i = 0; i < ps.size(); ++i) fresh_plan[i] = ps[i].key;
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  const int64_t t0 = now_ns();
  struct Timer {
    const int64_t t0;
    int64_t& max_ns;
    ~Timer() { max_ns = std::max(max_ns, now_ns() - t0); }
  } timer{t0, relayout_pause_max_ns_};
  ensure_meta();
  if (plan_.empty()) {
    if (fresh_plan.empty()) {
      if (!have_plan) ++relayouts_completed_;  // an empty table is packed
      return 0;
    }
    plan_.swap(fresh_plan);
    cursor_ = 0;
    target_ = 0;
  }
  // Free row ids can be move targets: find their place in the free list.
  std::unordered_map<uint32_t, size_t> free_pos;
  for (size_t i = 0; i < free_rows_.size(); ++i) free_pos[free_rows_[i]] = i;
  const int64_t stride = rows_.stride();
  const int64_t sd = state_ ? state_->stride() : 0;
  std::vector<float> tmp(static_cast<size_t>(std::max(stride, sd)));
  int64_t moves = 0;
  while (cursor_ < plan_.size() && moves < max_moves) {
    const int64_t key = plan_[cursor_++];
    const uint32_t c = index_.find(key);
    if (c == kNoRow) continue;       // evicted since the plan was made
    if (c < target_) continue;       // re-admitted into an already packed slot
    const uint32_t t = target_++;
    if (c == t) continue;
    if (meta_[t].score >= 0.0f) {
      // Swap the rows at t and c (row, optimizer state, metadata, key).
      const int64_t other = row_keys_[t];
      std::memcpy(tmp.data(), rows_.row(t), sizeof(float) * stride);
      std::memcpy(rows_.row(t), rows_.row(c), sizeof(float) * stride);
      std::memcpy(rows_.row(c), tmp.data(), sizeof(float) * stride);
      if (sd) {
        std::memcpy(tmp.data(), state_->row(t), sizeof(float) * sd);
        std::memcpy(state_->row(t), state_->row(c), sizeof(float) * sd);
        std::memcpy(state_->row(c), tmp.data(), sizeof(float) * sd);
      }
      std::swap(meta_[t], meta_[c]);
      std::swap(row_keys_[t], row_keys_[c]);
      std::swap(row_version_[t], row_version_[c]);  // storage (issue 4): versions move with rows
      index_.set_row(key, t);
      index_.set_row(other, c);
    } else {
      // t is free: move c there and free c in its place.
      std::memcpy(rows_.row(t), rows_.row(c), sizeof(float) * stride);
      if (sd) std::memcpy(state_->row(t), state_->row(c), sizeof(float) * sd);
      meta_[t] = meta_[c];
      meta_[c].score = -1.0f;
      row_keys_[t] = key;
      row_version_[t] = row_version_[c];  // storage (issue 4)
      index_.set_row(key, t);
      const size_t p = free_pos.at(t);
      free_rows_[p] = c;
      free_pos.erase(t);
      free_pos[c] = p;
    }
    ++moves;
  }
  relayout_moves_ += moves;
  if (moves) layout_epoch_.fetch_add(1);  // keys changed row ids
  if (cursor_ >= plan_.size()) {
    plan_.clear();
    plan_.shrink_to_fit();
    cursor_ = 0;
    ++relayouts_completed_;
    return 0;
  }
  return static_cast<int64_t>(plan_.size() - cursor_);
}

void FrequencyTable::relayout(int64_t chunk) {
  while (relayout_step(chunk) > 0) {
  }
}

// ------------------------------------------------------- eviction export
EvictedRows FrequencyTable::take_evicted() {
  std::lock_guard<std::mutex> g(evicted_mu_);
  EvictedRows r;
  std::swap(r, evicted_buf_);
  return r;
}

void FrequencyTable::set_eviction_sink(std::function<void(const EvictedRows&)> sink) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  sink_ = std::move(sink);
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
  return s;
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

// ------------------------------------------- torch backend (issue 5)
CallStats FrequencyTable::pooled_lookup_ids(const int64_t* values, int64_t n, const int64_t* offsets,
                                            int64_t n_offsets, int64_t n_bags, PoolMode mode,
                                            const float* pool_weights, float* out, bool train,
                                            const float* score_weights, uint32_t* ids_out, uint64_t* epoch_out) {
  auto kernel = [&](const RowView& v, uint32_t* ids) {
    return cpu::pool_bags(v, index_, values, ids, n, offsets, n_offsets, n_bags, opt_.dim, mode, pool_weights, out,
                          threads());
  };
  return train ? train_call(values, n, score_weights, kernel, ids_out, epoch_out)
               : serve_call(n, kernel, ids_out, epoch_out);
}

CallStats FrequencyTable::pooled_max_argmax(const int64_t* values, int64_t n, const int64_t* offsets,
                                            int64_t n_offsets, int64_t n_bags, float* out, int64_t* argmax,
                                            bool train, uint32_t* ids_out, uint64_t* epoch_out) {
  // Resolve, then pool: missing values read the default row (the view's
  // stand-in row), as in pool_bags.
  auto kernel = [&](const RowView& v, uint32_t* ids) {
    resolve(values, n, ids);
    int64_t missing = 0;
    for (int64_t i = 0; i < n; ++i) missing += ids[i] >= kTombstone;
    cpu::pool_max_argmax(v, ids, n, offsets, n_offsets, n_bags, opt_.dim, out, argmax, threads());
    return missing;
  };
  return train ? train_call(values, n, nullptr, kernel, ids_out, epoch_out)
               : serve_call(n, kernel, ids_out, epoch_out);
}

void FrequencyTable::apply_pooled_gradients(const int64_t* values, int64_t n, const int64_t* offsets,
                                            int64_t n_offsets, int64_t n_bags, PoolMode mode, const float* weights,
                                            const int64_t* argmax, const float* grad_out, int64_t grad_stride,
                                            const OptimSpec& o, const uint32_t* ids, uint64_t ids_epoch) {
  // The routing to rows / the default row is apply_gradients'.
  const GradSource g =
      pooled_grad_source(offsets, n_offsets, n_bags, n, mode, weights, argmax, grad_out, grad_stride, o);
  apply_gradients_hinted(values, n, g, o, ids, ids_epoch);
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
