// EmbeddingTable: the global shared table. int64 key -> row of `dim` floats
// (+ optimizer state), collision-free. See docs/design.md for the concurrency
// contract:
//  * reads (lookup/find/pooled/export) and gradient updates run under a shared
//    lock and may overlap; each row a reader returns is wholly from before or
//    wholly from after any concurrent update (per-row seqlock stripes);
//  * structural changes (insert of missing keys, assign, erase, growth) take
//    the lock exclusively, briefly;
//  * every operation validates first and mutates after, so a failed call
//    leaves the table exactly as it was.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <stdexcept>
#include <vector>

#include "embedlookup/initializer.h"
#include "embedlookup/optimizer.h"
#include "embedlookup/pooling.h"
#include "key_index.h"
#include "row_arena.h"
// -- storage (issue 4) --
#include <deque>
#include <unordered_map>
#include "row_batch.h"
#include "../storage/tier.h"
// -- end storage --
#include "row_seqlock.h"

namespace embedlookup {

struct TableOptions {
  int64_t dim = 0;        // floats per row (> 0)
  InitSpec init;          // initializer for rows created by lookups
  int64_t capacity = 0;   // max rows; 0 = grow without bound
  int num_threads = 0;    // OpenMP threads per call; 0 = OpenMP's default
};

class TableFullError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class KeyMissingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct MemoryStats {
  size_t index_bytes, row_bytes, state_bytes, metadata_bytes, rows;
};

// Where a row occurrence's gradient comes from: grad + src[i] * grad_stride,
// times scale[i]. src/scale may be null (identity / 1).
struct GradSource {
  const float* grad;
  int64_t n_grad_rows;
  int64_t grad_stride;
  const int64_t* src;
  const float* scale;
};

class EmbeddingTable {
 public:
  explicit EmbeddingTable(const TableOptions& o);

  int64_t dim() const { return opt_.dim; }
  int64_t stride() const { return rows_.stride(); }
  size_t size() const;
  int64_t step() const { return step_.load(); }
  OptimKind state_kind() const { return state_kind_.load(); }
  const TableOptions& options() const { return opt_; }

  // out: n x dim. insert=false writes zeros for missing keys; found (n bytes)
  // may be null.
  void lookup(const int64_t* keys, int64_t n, float* out, bool insert, uint8_t* found);
  // Bags: bag b = [offsets[b], b+1 < n_offsets ? offsets[b+1] : n). out: n_bags x dim.
  void pooled_lookup(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                     int64_t n_bags, PoolMode mode, const float* weights, float* out, bool insert);
  // Last occurrence of a duplicated key wins. Existing keys keep their optimizer state.
  void assign(const int64_t* keys, int64_t n, const float* rows);
  int64_t erase(const int64_t* keys, int64_t n);
  // erase() with mu_ held exclusively; appends the freed row ids to `freed`
  // (may be null). Also erases keys held by an attached tier.
  int64_t erase_locked(const int64_t* keys, int64_t n, std::vector<uint32_t>* freed);
  // Sorted by key.
  void export_rows(std::vector<int64_t>& keys, std::vector<float>& rows) const;
  // Merges duplicate keys, then one optimizer step per distinct row. All keys
  // must exist (KeyMissingError otherwise, before any change).
  void apply_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o);
  MemoryStats memory() const;

  // --- frequency (issue 3): FrequencyTable (frequency.h) derives from this
  // table and drives its index, arena and free list directly for admission,
  // eviction and relayout. ---
  friend class FrequencyTable;
  // ---- storage (issue 4): versions, deltas, checkpoints, lower tier ----
  // Every change (insert, assign, gradient step, erase, applied delta) takes a
  // new table version; each row records the version of its last change and
  // each erased key leaves a tombstone (key, version). Only writers touch
  // versions: the lookup path is unchanged.
  uint64_t version() const { return version_.load(); }
  uint64_t lineage() const { return lineage_; }
  // Rows changed after `since` (+ tombstones), or all rows (full). Runs under
  // the shared lock: lookups and gradient steps continue meanwhile; each row
  // is read consistently (row + state) and to_version is taken first, so the
  // batch holds every change up to to_version (and maybe some later ones).
  void collect(uint64_t since, bool full, bool with_versions, RowBatch& out) const;
  // Validates the whole batch first (dim, optimizer state, lineage, order,
  // capacity), then applies it under the exclusive lock: a concurrent reader
  // sees all of it or none. A full batch loads into an empty table only.
  void apply_batch(const RowBatchView& b);
  // Lower tier: rows missing from memory are read through from `tier`
  // (promote: moved into memory; else served in place while no new key needs
  // inserting); memory_rows > 0 caps the rows kept in memory (excess rows are
  // demoted oldest-first until an eviction policy calls write_back_locked).
  void attach_tier(std::shared_ptr<StorageTier> tier, int64_t memory_rows, bool promote);
  const std::shared_ptr<StorageTier>& tier() const { return tier_; }
  // Moves these keys' rows (those in memory) to the tier; returns how many.
  int64_t demote(const int64_t* keys, int64_t n);
  // Eviction hook: writes rows `ids` (with state and version) to the tier and
  // frees them. The caller holds mu_ exclusively. TierFullError before any change.
  int64_t write_back_locked(const uint32_t* ids, int64_t n);
  struct TierCounters {
    int64_t memory_hits, tier_hits, promotions, demotions, memory_rows;
  };
  TierCounters tier_counters() const;
  // ---- end storage ----
  // ---- Training entry points for the torch backend (issue 5); defined in
  // table_training.cpp.
  // Backward of pooled_lookup fused with one optimizer step: occurrence p of
  // bag b gets grad_out[b] (row stride grad_stride) times per_sample_weights[p]
  // (sum) or 1/len(b) (mean); max mode routes each column to the position in
  // argmax (from pooled_max_argmax). Keys must exist; nothing changes on error.
  // ids/ids_epoch: the row ids and layout_epoch() a forward returned (may be
  // null); used instead of resolving the keys again when no row was freed or
  // moved since.
  void apply_pooled_gradients(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                              int64_t n_bags, PoolMode mode, const float* weights, const int64_t* argmax,
                              const float* grad_out, int64_t grad_stride, const OptimSpec& o,
                              const uint32_t* ids = nullptr, uint64_t ids_epoch = 0);
  // pooled_lookup that also returns the resolved row ids (ids_out, n) and the
  // layout epoch they belong to.
  uint64_t pooled_lookup_ids(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                             int64_t n_bags, PoolMode mode, const float* weights, float* out, bool insert,
                             uint32_t* ids_out);
  // Max pooling that also returns the winning position per (bag, column),
  // and the row ids / epoch as pooled_lookup_ids.
  uint64_t pooled_max_argmax(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                             int64_t n_bags, float* out, int64_t* argmax, bool insert, uint32_t* ids_out);
  // Bumped whenever a row id may stop meaning the same key (erase; relayout
  // and eviction must bump it too).
  uint64_t layout_epoch() const { return layout_epoch_.load(); }
  // Optimizer state per row (0 when no state is bound yet).
  int64_t state_stride() const;
  // Optimizer-state rows of `keys` (n x state_stride()); all keys must exist.
  void export_state(const int64_t* keys, int64_t n, float* out) const;
  // Writes optimizer-state rows for existing keys, binding state of o.kind
  // first when none is bound (rows not listed start at o's initial value).
  void import_state(const int64_t* keys, int64_t n, const float* state, const OptimSpec& o);
  void set_step(int64_t step) { step_.store(step); }

 private:
  // Resolves keys (all must exist) and binds optimizer state of o.kind on
  // first use; returns holding the shared lock.
  std::shared_lock<std::shared_mutex> lock_for_update(const int64_t* keys, int64_t n, uint32_t* ids,
                                                      const OptimSpec& o, const uint32_t* hint = nullptr,
                                                      uint64_t hint_epoch = 0);
  // After a fused update: stamps the rows' version, enforces a tier budget.
  void finish_update(std::shared_lock<std::shared_mutex>& lk, const uint32_t* ids, int64_t n);
  // One optimizer step: lock_for_update, the fused update of every row with
  // the next step's scalars, finish_update (ids: n of scratch, filled here).
  void fused_step(const int64_t* keys, int64_t n, uint32_t* ids, const GradSource& g, const OptimSpec& o,
                  const uint32_t* hint = nullptr, uint64_t hint_epoch = 0);
  // Checks a pooled backward's arguments (optimizer, argmax for max mode,
  // finite grad_out) and builds its per-occurrence gradient source in
  // per-thread scratch, valid until this thread's next such call.
  GradSource pooled_grad_source(const int64_t* offsets, int64_t n_offsets, int64_t n_bags, int64_t n, PoolMode mode,
                                const float* weights, const int64_t* argmax, const float* grad_out,
                                int64_t grad_stride, const OptimSpec& o) const;
  std::atomic<uint64_t> layout_epoch_{0};
  // ---- end of the torch-backend block

 private:
  int threads() const;
  void resolve(const int64_t* keys, int64_t n, uint32_t* ids) const;
  // Caller holds the lock exclusively. Inserts keys whose ids[i] == kNoRow.
  void insert_missing(const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows);
  uint32_t allocate_row(int64_t key);
  void bind_state(const OptimSpec& o);  // caller holds exclusive lock
  void init_state_row(uint32_t id);

  TableOptions opt_;
  mutable std::shared_mutex mu_;
  KeyIndex index_;
  RowArena rows_;
  std::unique_ptr<RowArena> state_;
  std::atomic<OptimKind> state_kind_{OptimKind::kNone};
  float state_init_ = 0.0f;
  std::vector<int64_t> row_keys_;   // row id -> key (for export / erase / relayout)
  std::vector<uint32_t> free_rows_;
  uint32_t next_row_ = 0;
  RowSeqlock seq_;
  std::vector<float> zero_row_;
  std::atomic<int64_t> step_{0};

  // ---- storage (issue 4) ----
  void stamp(uint32_t id, uint64_t v) { __atomic_store_n(&row_version_[id], v, __ATOMIC_RELAXED); }
  uint64_t stamped(uint32_t id) const { return __atomic_load_n(&row_version_[id], __ATOMIC_RELAXED); }
  // For ids[i] == kNoRow whose key the tier holds: moves the row into memory
  // (caller holds mu_ exclusively). Returns rows promoted.
  int64_t promote_locked(const int64_t* keys, int64_t n, uint32_t* ids);
  void enforce_budget_locked();
  int64_t fetch_missing(const int64_t* keys, int64_t n, const uint32_t* ids, int64_t& got) const;
  // Shared-lock read-through: fills the rows of missing positions from the
  // tier. Returns how many positions are still missing.
  int64_t serve_gather(const int64_t* keys, int64_t n, const uint32_t* ids, float* out, uint8_t* found);
  int64_t serve_pool(const int64_t* values, int64_t n, const uint32_t* ids, const int64_t* offsets,
                     int64_t n_offsets, int64_t n_bags, PoolMode mode, const float* weights, float* out);
  void read_row_locked(uint32_t id, float* row, float* state) const;
  std::atomic<uint64_t> version_{0};
  uint64_t lineage_ = 0;
  std::vector<uint64_t> row_version_;  // row id -> version of its last change (8 bytes/row)
  std::unordered_map<int64_t, uint64_t> tombstones_;  // erased key -> version of the erase
  std::shared_ptr<StorageTier> tier_;
  int64_t memory_rows_ = 0;
  bool promote_ = true;
  std::deque<int64_t> arrival_;  // keys in order of entering memory: demotion order without a policy
  mutable std::atomic<int64_t> memory_hits_{0}, tier_hits_{0}, promotions_{0}, demotions_{0};
  // ---- end storage ----
};

}  // namespace embedlookup
