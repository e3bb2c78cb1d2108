// FrequencyTable's admission (count-min sketch + coin) of keys without a row,
// and its batched eviction under the row budget (LFU / LRU / TTL), to the tier
// when there is one, else to a sink or the export buffer.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "frequency_table.h"
#include "frequency_util.h"

namespace embedlookup {

using frequency_detail::admission_coin;
using frequency_detail::now_ns;

void FrequencyTable::admit_missing(const int64_t* keys, int64_t n, uint32_t* ids, const float* w, uint32_t now,
                                   CallStats& cs) {
  (void)w;
  // Keys with rows in the tier were promoted by the read path already (no
  // admission test: they earned a row before).
  // Distinct missing keys in first-occurrence order, with their counts; each
  // missing position's index into them (filled with the new ids at the end).
  FlatKeyMap<uint32_t> slot_of;
  std::vector<int64_t> fresh;
  std::vector<uint32_t> count, slot_at;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] != kNoRow) continue;
    ++cs.misses;
    const auto got = slot_of.try_emplace(keys[i], static_cast<uint32_t>(fresh.size()));
    if (got.second) {
      fresh.push_back(keys[i]);
      count.push_back(0);
    }
    ++count[got.first];
    slot_at.push_back(got.first);
  }
  cs.hits = n - cs.misses;
  // The batch fits the budget: frequency_read checked its distinct keys before the clock moved.
  if (index_.size() + fresh.size() > static_cast<size_t>(kMaxRowId))
    throw TableFullError("table would exceed 2^32 - 3 rows");
  // Admission decisions (the sketch counts sightings of keys without a row).
  std::vector<uint32_t> id_of(fresh.size(), kNoRow);
  std::vector<uint32_t> created;
  index_.reserve(index_.size() + fresh.size());
  // The sketch's verdicts first, its counters fetched a few keys ahead (each
  // add reads and writes one random line per sketch row); allocation leaves
  // the sketch alone, so this is the order of one key at a time.
  std::vector<uint8_t> seen_enough(fresh.size(), 1);
  if (fo_.admit_count > 1) {
    constexpr size_t kAhead = 8;
    for (size_t u = 0; u < fresh.size(); ++u) {
      if (u + kAhead < fresh.size()) sketch_.prefetch(fresh[u + kAhead]);
      seen_enough[u] = sketch_.add(fresh[u], count[u]) >= static_cast<uint64_t>(fo_.admit_count);
    }
  }
  for (size_t u = 0; u < fresh.size(); ++u) {
    bool admit = seen_enough[u] != 0;
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
  const uint64_t ver = ++version_;  // admitted rows carry their insert's version
  for (uint32_t id : created) stamp(id, ver);
  ensure_meta();
  const int64_t nc = static_cast<int64_t>(created.size());
#pragma omp parallel for num_threads(threads()) schedule(static) if (nc > 256)
  for (int64_t k = 0; k < nc; ++k) {
    const uint32_t id = created[k];
    init_row_at(id);
    init_state_row(id);
    meta_[id] = RowMeta{0.0f, now};
  }
  size_t miss = 0;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) ids[i] = id_of[slot_at[miss++]];
}

void FrequencyTable::evict_rows(std::vector<uint32_t>& victims, uint32_t now) {
  if (victims.empty()) return;
  const int64_t nv = static_cast<int64_t>(victims.size());
  if (cold_) {
    // Demotion: the rows are stored compressed (a change of value: a new
    // version, so deltas carry what the table now serves) with their score.
    std::vector<int64_t> keys(victims.size());
    std::vector<float> score(victims.size());
    std::vector<uint32_t> last(victims.size());
    const uint64_t ver = version_.load() + 1;
    std::vector<uint64_t> old(victims.size());
    for (size_t i = 0; i < victims.size(); ++i) {
      keys[i] = row_keys_[victims[i]];
      score[i] = meta_[victims[i]].score;
      last[i] = meta_[victims[i]].last;
      old[i] = stamped(victims[i]);
      stamp(victims[i], ver);
    }
    try {
      write_back_locked(victims.data(), nv);  // the store refuses (before any change) a row it cannot encode
    } catch (...) {
      for (size_t i = 0; i < victims.size(); ++i) stamp(victims[i], old[i]);
      throw;
    }
    version_.store(ver);
    cold_->set_meta(keys.data(), nv, score.data(), last.data());
    for (uint32_t id : victims) meta_[id].score = -1.0f;
    cold_demoted_ += nv;
    return;
  }
  // With a tier, evicted rows (row, optimizer state, version) are written
  // back there instead of being handed out; a later
  // lookup of the key promotes them again. write_back_locked frees the ids.
  if (tier_) {
    write_back_locked(victims.data(), nv);
    for (uint32_t id : victims) meta_[id].score = -1.0f;
    return;
  }
  // on_evict="drop": nobody takes the rows, so only their keys are kept
  // (hand_out tombstones them); rows, state, scores are not copied out.
  const bool copy = collects_evicted();
  const int64_t sd = state_ && copy ? state_->stride() : 0;
  const size_t nc = copy ? victims.size() : 0;
  std::vector<int64_t> keys(victims.size());
  std::vector<float> rows(nc * opt_.dim), state(nc * sd), scores(nc);
  std::vector<uint32_t> last(nc);
  for (size_t i = 0; i < victims.size(); ++i) {
    const uint32_t id = victims[i];
    keys[i] = row_keys_[id];
    if (copy) {
      load_row(id, rows.data() + i * opt_.dim);
      if (sd) std::copy_n(state_->row(id), sd, state.begin() + i * sd);
      scores[i] = static_cast<float>(score_at(meta_[id], now));
      last[i] = meta_[id].last;
    }
    index_.erase(keys[i]);
    free_rows_.push_back(id);
    meta_[id].score = -1.0f;
  }
  // Freed ids may be reused: row ids cached by a forward (torch backward) are stale.
  layout_epoch_.fetch_add(1);
  hand_out(keys, rows.data(), state.data(), sd, scores, last);
}

void FrequencyTable::hand_out(const std::vector<int64_t>& keys, const float* rows, const float* state, int64_t sd,
                              const std::vector<float>& scores, const std::vector<uint32_t>& last) {
  if (!collects_evicted()) {  // on_evict="drop": the tombstones only, as below
    for (int64_t key : keys) tombstones_.assign(key, version_.load() + 1);
    ++version_;
    return;
  }
  EvictedRows local;
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
  for (size_t i = 0; i < keys.size(); ++i) {
    out->keys.push_back(keys[i]);
    out->rows.insert(out->rows.end(), rows + i * opt_.dim, rows + (i + 1) * opt_.dim);
    const size_t s0 = out->state.size();
    out->state.resize(s0 + osd, state_init_);
    if (sd) std::copy_n(state + i * sd, sd, out->state.begin() + s0);
    out->scores.push_back(scores[i]);
    out->last.push_back(last[i]);
    tombstones_.assign(keys[i], version_.load() + 1);  // deltas carry evictions
  }
  ++version_;
  if (sink_) sink_(local);
}

std::vector<uint32_t> FrequencyTable::eviction_candidates(int64_t need, uint32_t now) {
  // Candidates: live rows not touched by this call. Each carries its key:
  // rows of equal score and step are ordered by key, and with the key beside
  // them the sort no longer reads row_keys_ at random (ties are the common
  // case: rows seen once in the same step).
  struct Cand {
    double s;
    uint32_t last, id;
    int64_t key;
  };
  std::vector<Cand> cand;
  cand.reserve(index_.size());
  const bool lfu = fo_.policy == EvictionPolicy::kLFU;
  auto consider = [&](uint32_t id) {
    const RowMeta& m = meta_[id];
    if (m.score < 0.0f || m.last >= now) return;  // touched by this call (or a later concurrent one)
    cand.push_back(Cand{lfu ? score_at(m, now) : 0.0, m.last, id, row_keys_[id]});
  };
  if (cold_) {
    // Live rows from the index: rows loaded by a delta have no score yet
    // (they start at 0, as of step 0).
    index_.for_each([&](int64_t, uint32_t id) {
      if (meta_[id].score < 0.0f) meta_[id] = RowMeta{0.0f, 0};
      consider(id);
    });
  } else {
    const uint32_t nr = next_row_;
    for (uint32_t id = 0; id < nr; ++id) consider(id);
  }
  // Priority: LFU (score, last, key); LRU and TTL (last, key). Lowest goes first.
  auto before = [&](const Cand& a, const Cand& b) {
    if (a.s != b.s) return a.s < b.s;
    if (a.last != b.last) return a.last < b.last;
    return a.key < b.key;
  };
  need = std::max<int64_t>(0, std::min<int64_t>(need, static_cast<int64_t>(cand.size())));
  if (need < static_cast<int64_t>(cand.size())) std::nth_element(cand.begin(), cand.begin() + need, cand.end(), before);
  std::sort(cand.begin(), cand.begin() + need, before);
  std::vector<uint32_t> victims;
  victims.reserve(static_cast<size_t>(need));
  for (int64_t i = 0; i < need; ++i) victims.push_back(cand[i].id);
  return victims;
}

void FrequencyTable::cold_budget(uint32_t now, CallStats& cs) {
  const int64_t h = co_.hot_row_bytes, c = co_.cold_row_bytes, B = co_.budget_bytes;
  // 1. Hot rows above their share: the lowest-priority ones (not touched by
  //    this call) are demoted, down to hot_cap - floor(hot_cap * evict_fraction).
  const int64_t hot_cap = static_cast<int64_t>(std::floor(co_.hot_share * static_cast<double>(B) / h));
  const int64_t H = static_cast<int64_t>(index_.size());
  if (H > hot_cap) {
    const int64_t keep = hot_cap - static_cast<int64_t>(std::floor(static_cast<double>(hot_cap) * fo_.evict_fraction));
    std::vector<uint32_t> victims = eviction_candidates(H - keep, now);
    evict_rows(victims, now);
  }
  // 2. Hot and cold rows above the budget: the lowest-priority cold rows
  //    leave, down to B - floor(B * evict_fraction).
  const int64_t total = static_cast<int64_t>(index_.size()) * h + cold_->size() * c;
  if (total <= B) return;
  const int64_t T = B - static_cast<int64_t>(std::floor(static_cast<double>(B) * fo_.evict_fraction));
  drop_cold(std::min<int64_t>(cold_->size(), (total - T + c - 1) / c), now, cs);
}

void FrequencyTable::drop_cold(int64_t n, uint32_t now, CallStats& cs) {
  if (n <= 0) return;
  std::vector<int64_t> keys;
  std::vector<float> score;
  std::vector<uint32_t> last;
  cold_->all_meta(keys, score, last);
  std::vector<uint32_t> order(keys.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  std::vector<double> pri(keys.size(), 0.0);
  if (fo_.policy == EvictionPolicy::kLFU)
    for (size_t i = 0; i < keys.size(); ++i) pri[i] = score_at(RowMeta{score[i], last[i]}, now);
  auto before = [&](uint32_t a, uint32_t b) {
    if (pri[a] != pri[b]) return pri[a] < pri[b];
    if (last[a] != last[b]) return last[a] < last[b];
    return keys[a] < keys[b];
  };
  n = std::min<int64_t>(n, static_cast<int64_t>(keys.size()));
  if (n < static_cast<int64_t>(order.size())) std::nth_element(order.begin(), order.begin() + n, order.end(), before);
  std::sort(order.begin(), order.begin() + n, before);
  std::vector<int64_t> gone(static_cast<size_t>(n));
  std::vector<float> sc(static_cast<size_t>(n));
  std::vector<uint32_t> la(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    gone[i] = keys[order[i]];
    sc[i] = static_cast<float>(pri[order[i]]);
    la[i] = last[order[i]];
  }
  const int64_t sd = cold_->state_floats();
  std::vector<float> rows(static_cast<size_t>(n) * opt_.dim), state(static_cast<size_t>(n) * sd);
  std::vector<uint8_t> found(static_cast<size_t>(n));
  cold_->get(gone.data(), n, rows.data(), sd ? state.data() : nullptr, nullptr, found.data());
  cold_->erase(gone.data(), n);
  unstage(gone.data(), n);
  hand_out(gone, rows.data(), state.data(), sd, sc, la);
  cs.evicted += n;
  cold_dropped_ += n;
}

void FrequencyTable::evict_to_budget(uint32_t now, CallStats& cs) {
  if (fo_.policy == EvictionPolicy::kNone) return;
  const int64_t t0 = now_ns(), evicted0 = cs.evicted, demoted0 = cold_demoted_;
  struct Timer {  // records the pause when this call evicted or demoted anything
    const int64_t t0, before, demoted_before;
    const CallStats& cs;
    const std::atomic<int64_t>& demoted;
    int64_t& max_ns;
    ~Timer() {
      if (cs.evicted > before || demoted.load() > demoted_before) max_ns = std::max(max_ns, now_ns() - t0);
    }
  } timer{t0, evicted0, demoted0, cs, cold_demoted_, evict_pause_max_ns_};
  if (cold_) {
    cold_budget(now, cs);
    return;
  }
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
  victims = eviction_candidates(live - target, now);
  cs.evicted += static_cast<int64_t>(victims.size());
  evict_rows(victims, now);
}

EvictedRows FrequencyTable::take_evicted() {
  std::lock_guard<std::mutex> g(evicted_mu_);
  EvictedRows r;
  std::swap(r, evicted_buf_);
  return r;
}

void FrequencyTable::set_discard_evicted(bool discard) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  discard_evicted_ = discard;
}

void FrequencyTable::set_eviction_sink(std::function<void(const EvictedRows&)> sink) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  sink_ = std::move(sink);
}

}  // namespace embedlookup
