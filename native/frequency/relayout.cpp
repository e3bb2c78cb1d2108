// FrequencyTable's relayout: rows packed in score order (hottest at row id 0)
// in chunks of bounded row moves, each chunk under the exclusive lock, so no
// reader sees a moving row and no update is lost.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "frequency_table.h"
#include "frequency_util.h"

namespace embedlookup {

using frequency_detail::now_ns;

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
      std::swap(row_version_[t], row_version_[c]);  // versions and tier-copy marks move with rows
      std::swap(row_in_tier_[t], row_in_tier_[c]);
      index_.set_row(key, t);
      index_.set_row(other, c);
    } else {
      // t is free: move c there and free c in its place.
      std::memcpy(rows_.row(t), rows_.row(c), sizeof(float) * stride);
      if (sd) std::memcpy(state_->row(t), state_->row(c), sizeof(float) * sd);
      meta_[t] = meta_[c];
      meta_[c].score = -1.0f;
      row_keys_[t] = key;
      row_version_[t] = row_version_[c];
      row_in_tier_[t] = row_in_tier_[c];
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

}  // namespace embedlookup
