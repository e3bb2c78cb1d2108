// The frequency-aware table: an EmbeddingTable that spends rows only on keys
// that earn them and keeps the hottest rows physically together.
//
// What it adds (docs/frequency.md has the full contract):
//  * a per-row score: a decayed access count (half-life in clock steps) and the
//    last access step, 8 bytes per row, updated by a side pass over the
//    resolved row ids after the lookup kernel (never inside it);
//  * admission: a missing key gets a row once a count-min sketch has seen it
//    `admit_count` times (and, optionally, a per-(key, step) coin of
//    probability `admit_probability` says yes); until then it reads the
//    default row (zeros, or one shared learned "cold" row);
//  * eviction under a row budget: LFU (lowest decayed score), LRU (oldest last
//    access) or TTL (unseen for more than `ttl` steps, then LRU if still over
//    budget). Eviction runs in batches: when the table passes its budget it
//    drops to budget * (1 - evict_fraction), so one O(rows) selection pays for
//    budget * evict_fraction admissions. Evicted rows (key, row, optimizer
//    state, score, last step) go to a sink callback or an export buffer;
//  * relayout: packs rows in score order (hottest at row id 0) in chunks of a
//    bounded number of row moves, each chunk under the table lock held
//    exclusively (so no reader sees a moving row, no update is lost);
//  * stats: hits, misses, admitted, rejected, evicted, hot-region hits, bytes.
//
// Clock: one step per training lookup call (train=true). Serving lookups
// (train=false) neither advance the clock nor change any metadata.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "../core/table.h"
#include "cold_store.h"
#include "count_min_sketch.h"

namespace embedlookup {

// Score metadata of one row. score < 0 marks a free row id.
struct RowMeta {
  float score;    // decayed access count as of step `last`
  uint32_t last;  // clock step of the last access
};

// What one lookup call did (the Python layer adds these to per-feature stats).
using CallStats = ReadStats;

struct FrequencyStats {
  CallStats totals;
  int64_t clock = 0, rows = 0, hot_rows = 0, relayout_moves = 0, relayouts_completed = 0;
  int64_t grads_dropped = 0, cold_updates = 0, evicted_pending = 0;
  // Longest exclusive-lock holds (what a concurrent lookup may wait): one
  // relayout step, and one eviction selection + export.
  int64_t relayout_pause_max_ns = 0, evict_pause_max_ns = 0;
  size_t index_bytes = 0, row_bytes = 0, state_bytes = 0, metadata_bytes = 0, sketch_bytes = 0,
         evicted_buffer_bytes = 0;
  // Cold rows (enable_cold_rows): rows held compressed, their bytes by part
  // (ColdRowStore::memory), and rows demoted / promoted back / dropped so far.
  int64_t cold_rows = 0, cold_demoted = 0, cold_promoted = 0, cold_dropped = 0;
  int64_t cold_row_bytes = 0, cold_state_bytes = 0, cold_metadata_bytes = 0, cold_index_bytes = 0;
};

// Precision that follows frequency: one byte budget for hot (fp32) rows and
// cold (compressed) rows. docs/frequency.md states the rule.
struct ColdRowsOptions {
  RowType type = RowType::kI8;  // the cold rows' storage type
  int64_t budget_bytes = 0;     // hot rows x hot_row_bytes + cold rows x cold_row_bytes stays below this
  int64_t hot_row_bytes = 0;    // accounted bytes of one hot row (row, state, metadata, key, index share)
  int64_t cold_row_bytes = 0;   // accounted bytes of one cold row (must be < hot_row_bytes)
  double hot_share = 0.25;       // hot rows: at most floor(hot_share * budget_bytes / hot_row_bytes)
  int64_t state_floats = 0;     // optimizer-state floats per row the cold rows keep (int8)
};

// Rows that left the table, in eviction order (lowest priority first).
struct EvictedRows {
  int64_t dim = 0, state_dim = 0;
  std::vector<int64_t> keys;
  std::vector<float> rows;    // keys.size() x dim
  std::vector<float> state;   // keys.size() x state_dim (0 floats when no optimizer state yet)
  std::vector<float> scores;  // score at eviction, decayed to the eviction step
  std::vector<uint32_t> last;
  void clear() { keys.clear(); rows.clear(); state.clear(); scores.clear(); last.clear(); }
};

class FrequencyTable : public EmbeddingTable {
 public:
  FrequencyTable(const TableOptions& t, const FrequencyOptions& f);

  const FrequencyOptions& frequency_options() const { return fo_; }

  // train=true: advances the clock, admits/scores/evicts. train=false: a
  // read-only serving lookup (missing keys read the default row). weights
  // (score weight per key occurrence, >= 0) may be null (= 1 each).
  CallStats lookup(const int64_t* keys, int64_t n, float* out, bool train, uint8_t* found, const float* weights);
  CallStats pooled_lookup(const Bags& b, float* out, bool train, const float* score_weights);
  // Gradients of keys without a row are dropped (default_row kZeros) or summed
  // into the shared cold row and applied to it with the same optimizer.
  void apply_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o) override;
  // Explicit writes always admit; the budget is enforced afterwards.
  void assign(const int64_t* keys, int64_t n, const float* rows) override;
  int64_t erase(const int64_t* keys, int64_t n) override;

  // Relayout: moves at most max_moves rows (one exclusive-lock pause), starting
  // a new plan when none is active. Returns the planned positions left (0 =
  // the layout is packed in the plan's score order).
  int64_t relayout_step(int64_t max_moves);
  void relayout(int64_t chunk);  // runs steps of `chunk` moves until done

  // Evicted rows not yet taken (only collected when no sink is set).
  EvictedRows take_evicted();
  // Called under the table's exclusive lock with each eviction batch; must not
  // call back into the table. Replaces the export buffer.
  void set_eviction_sink(std::function<void(const EvictedRows&)> sink);
  // on_evict="drop": evicted rows are not collected at all (only counted and
  // tombstoned), which saves copying each evicted row out twice.
  void set_discard_evicted(bool discard);

  FrequencyStats stats() const;

  // Precision that follows frequency: hot rows above their share of the
  // byte budget are demoted (lowest priority first) to an in-memory
  // ColdRowStore (compressed row, int8 optimizer state, score); a training
  // read promotes a cold row back to fp32 with its state and score; when hot
  // and cold rows together pass the budget, the lowest-priority cold rows
  // leave the table (as evictions: sink / export buffer, tombstones). Call on
  // an empty table without a tier (std::invalid_argument otherwise).
  void enable_cold_rows(const ColdRowsOptions& o);
  bool has_cold_rows() const { return cold_ != nullptr; }
  const ColdRowsOptions& cold_rows_options() const { return co_; }
  // Keys held as cold rows, sorted.
  std::vector<int64_t> cold_keys() const;
  // For tests and tools: stored (score, last) and row id of each key (score -1,
  // id kNoRow when absent).
  void inspect(const int64_t* keys, int64_t n, float* score, uint32_t* last, uint32_t* row_id) const;
  const float* default_row() const { return cold_row_.data(); }

  // ---- the torch backend's entry points (embedlookup.torch modules)
  // pooled_lookup (train=true: a training access that scores, admits and
  // evicts) that also writes the row id each value resolved to (ids_out, n;
  // kNoRow: the value read the default row) and the layout epoch those ids
  // belong to, both taken under the table lock.
  CallStats pooled_lookup_ids(const Bags& b, float* out, bool train, const float* score_weights, uint32_t* ids_out,
                              uint64_t* epoch_out);
  // Max pooling with the winning position per (bag, column), as
  // EmbeddingTable::pooled_max_argmax, with this table's training side effects.
  CallStats pooled_max_argmax(const Bags& b, float* out, int64_t* argmax, bool train, uint32_t* ids_out,
                              uint64_t* epoch_out);
  // Fused backward of the two above (EmbeddingTable::apply_pooled_gradients'
  // contract), routed like apply_gradients: values that read the default row
  // in the forward (ids[p] == kNoRow), or whose row is gone by now, have their
  // gradients dropped (kZeros) or summed into the cold row (kCold); the rest
  // update their rows. ids/ids_epoch may be null/0 (keys are resolved then).
  void apply_pooled_gradients(const Bags& b, const int64_t* argmax, const float* grad_out, int64_t grad_stride,
                              const OptimSpec& o, const uint32_t* ids = nullptr, uint64_t ids_epoch = 0);
  // Checkpoint state beyond rows and optimizer state: the clock, the sketch
  // counters, the cold row (dim floats) and its optimizer state.
  struct SavedState {
    uint32_t clock = 0;
    std::vector<uint32_t> sketch;
    std::vector<float> cold_row, cold_state;
  };
  SavedState save_state() const;
  // Restores a SavedState and the (score, last) of existing keys; validates
  // sizes and keys first (std::invalid_argument / KeyMissingError, no change).
  void restore_state(const SavedState& s, const int64_t* keys, int64_t n, const float* scores, const uint32_t* last);

 protected:
  // The read path's hooks (read_path.h): admission, scoring and eviction.
  bool serves_in_place(const ReadCall& c) const override;
  bool miss_needs_exclusive(const ReadCall& c, int64_t missing) const override;
  void read_done_shared(ReadCall& c, const uint32_t* ids, int64_t missing) override;
  void fill_missing_locked(ReadCall& c, uint32_t* ids) override;
  void rows_promoted_locked(const uint32_t* ids, int64_t n) override;

 private:
  // Runs one lookup through the read path: a training call (train=true)
  // advances the clock; the kernel reads the default row for missing keys.
  template <class Kernel, class Serve>
  CallStats frequency_read(const int64_t* keys, int64_t n, bool train, const float* score_weights, uint32_t* ids,
                           uint64_t* epoch_out, Kernel&& kernel, Serve&& serve);
  // apply_gradients with the forward's row ids;
  // hint[i] == kNoRow routes position i to the default row.
  void apply_gradients_hinted(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o,
                              const uint32_t* hint, uint64_t hint_epoch);
  // All three: caller holds mu_ exclusively.
  void admit_missing(const int64_t* keys, int64_t n, uint32_t* ids, const float* w, uint32_t now, CallStats& cs);
  void evict_to_budget(uint32_t now, CallStats& cs);
  void evict_rows(std::vector<uint32_t>& victims, uint32_t now);
  // Up to `need` live rows not touched by this call, lowest priority first.
  std::vector<uint32_t> eviction_candidates(int64_t need, uint32_t now);
  // The byte budget of a table with cold rows: demote above the hot share,
  // then drop cold rows above the budget.
  void cold_budget(uint32_t now, CallStats& cs);
  void drop_cold(int64_t n, uint32_t now, CallStats& cs);
  // Hands evicted rows to the sink or the export buffer (rows: n x dim,
  // state: n x sd), tombstones their keys and takes a new version.
  void hand_out(const std::vector<int64_t>& keys, const float* rows, const float* state, int64_t sd,
                const std::vector<float>& scores, const std::vector<uint32_t>& last);
  // Score side pass; caller holds mu_ (shared with meta_mu_, or exclusive).
  void touch(const uint32_t* ids, int64_t n, const float* w, uint32_t now, CallStats& cs);
  void ensure_meta();
  double decay(uint32_t dt) const;
  // A concurrent call with a later step may have touched the row already
  // (last > now): no decay then.
  double score_at(const RowMeta& m, uint32_t now) const { return m.last >= now ? m.score : m.score * decay(now - m.last); }
  void add_totals(const CallStats& cs);

  FrequencyOptions fo_;
  CountMinSketch sketch_;
  std::vector<RowMeta> meta_;        // row id -> score metadata
  std::vector<double> decay_table_;  // 2^(-dt / half_life) for small dt
  std::mutex meta_mu_;               // serialises score side passes of concurrent readers
  std::atomic<uint32_t> clock_{0};
  std::atomic<int64_t> hits_{0}, misses_{0}, admitted_{0}, rejected_{0}, evicted_{0}, hot_hits_{0};
  std::atomic<int64_t> grads_dropped_{0}, cold_updates_{0};
  int64_t relayout_moves_ = 0, relayouts_completed_ = 0;
  int64_t relayout_pause_max_ns_ = 0, evict_pause_max_ns_ = 0;  // written under the exclusive lock

  // Relayout plan: keys in target order; positions [0, cursor_) are done,
  // target_ is the next row id to fill.
  std::vector<int64_t> plan_;
  size_t cursor_ = 0;
  uint32_t target_ = 0;

  std::vector<float> cold_row_;    // default row: zeros, or the learned cold row
  std::vector<float> cold_state_;  // optimizer state of the cold row
  mutable std::mutex evicted_mu_;
  EvictedRows evicted_buf_;
  std::function<void(const EvictedRows&)> sink_;
  bool discard_evicted_ = false;
  // Whether evicted rows go anywhere (a sink, or the buffer for take_evicted).
  bool collects_evicted() const { return sink_ || !discard_evicted_; }

  std::shared_ptr<ColdRowStore> cold_;  // also tier_ when set
  ColdRowsOptions co_;
  std::atomic<int64_t> cold_demoted_{0}, cold_promoted_{0}, cold_dropped_{0};
};

}  // namespace embedlookup
