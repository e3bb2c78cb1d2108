// EmbeddingTable: the global shared table. int64 key -> row of `dim` floats
// (+ optimizer state), collision-free. docs/architecture.md places it among the
// parts; docs/engine.md states the concurrency contract:
//  * reads (lookup/find/pooled/export) and gradient updates run under a shared
//    lock and may overlap; each row a reader returns is wholly from before or
//    wholly from after any concurrent update (per-row seqlock stripes);
//  * structural changes (insert of missing keys, promotion from the tier,
//    assign, erase, growth) take the lock exclusively, briefly;
//  * every operation validates first and mutates after, so a failed call
//    leaves the table exactly as it was.
//
// Every lookup entry point goes through one read path (read_path.h): probe and
// pool under the shared lock; on a miss, take the lock exclusively, read rows
// through from the tier, create rows for the rest (insertion here, admission in
// FrequencyTable: the fill_missing_locked hook), pool again, then hold the
// memory budget.
#pragma once
#include <atomic>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../structures/flat_key_map.h"
#include "../structures/key_index.h"
#include "../structures/row_arena.h"
#include "../structures/row_seqlock.h"
#include "embedlookup/errors.h"
#include "embedlookup/optimizer.h"
#include "embedlookup/options.h"
#include "embedlookup/row_id.h"
#include "row_batch.h"
#include "tier.h"

namespace embedlookup {

struct MemoryStats {
  size_t index_bytes, row_bytes, state_bytes, metadata_bytes, rows;
};

// What one read call did (FrequencyTable adds these to per-feature stats).
struct ReadStats {
  int64_t hits = 0, misses = 0, admitted = 0, rejected = 0, evicted = 0, hot_hits = 0;
  int64_t promoted = 0;  // rows read through from the tier into memory
};

struct RowView;

class EmbeddingTable {
 public:
  explicit EmbeddingTable(const TableOptions& o);
  virtual ~EmbeddingTable();  // waits for prefetches in flight

  int64_t dim() const { return opt_.dim; }
  int64_t stride() const { return rows_.stride(); }
  size_t size() const;
  int64_t step() const { return step_.load(); }
  OptimKind state_kind() const { return state_kind_.load(); }
  const TableOptions& options() const { return opt_; }
  // Storage type of the rows (row_codec.h); lookups always return fp32.
  RowType row_type() const { return opt_.row_type; }
  // Bytes one row occupies in the arena (fp32: padded to 8 floats).
  int64_t stored_row_bytes() const { return rows_.stride() * static_cast<int64_t>(sizeof(float)); }

  // ---- reads
  // out: n x dim. insert=false writes zeros for missing keys; found (n bytes)
  // may be null.
  void lookup(const int64_t* keys, int64_t n, float* out, bool insert, uint8_t* found);
  // out: b.n_bags x dim.
  void pooled_lookup(const Bags& b, float* out, bool insert);
  // pooled_lookup that also returns the resolved row ids (ids_out, b.n) and
  // the layout epoch they belong to (for apply_pooled_gradients).
  uint64_t pooled_lookup_ids(const Bags& b, float* out, bool insert, uint32_t* ids_out);
  // Resolution ahead of the lookup (a pipeline resolves batch t+1 while batch
  // t computes): the row ids of keys (kNoRow for those without a row when
  // insert is false) and the layout epoch they belong to. Inserts like a lookup.
  uint64_t resolve_ids(const int64_t* keys, int64_t n, bool insert, uint32_t* ids_out);
  // pooled_lookup over ids from resolve_ids / pooled_lookup_ids: reads only
  // the rows, no index line per key. When the ids are stale (another epoch),
  // name a missing key or lie outside the table, it resolves b.values as
  // pooled_lookup does instead, writing the ids it used to fresh_ids when
  // given (pooled_lookup_ids). Returns whether the given ids were used, and
  // the epoch of the ids used.
  std::pair<bool, uint64_t> pooled_lookup_resolved(const Bags& b, const uint32_t* ids, uint64_t ids_epoch, float* out,
                                                   bool insert, uint32_t* fresh_ids);
  // Max pooling that also returns the winning position per (bag, column)
  // (b.mode is ignored), and the row ids / epoch as pooled_lookup_ids.
  uint64_t pooled_max_argmax(const Bags& b, float* out, int64_t* argmax, bool insert, uint32_t* ids_out);
  // Sorted by key, memory and tier rows together.
  void export_rows(std::vector<int64_t>& keys, std::vector<float>& rows) const;
  // The keys export_rows would return (sorted; memory and tier), without their rows.
  void export_keys(std::vector<int64_t>& keys) const;
  MemoryStats memory() const;
  // Sorted by key: each row in the table's storage type, row_bytes(row_type,
  // dim) bytes (tier rows, kept in fp32 below, are encoded on the way out).
  void export_raw(std::vector<int64_t>& keys, std::vector<uint8_t>& raw) const;

  // ---- writes
  // Last occurrence of a duplicated key wins. Existing keys keep their optimizer state.
  // (Virtual, like erase and apply_gradients: FrequencyTable keeps its scores
  // and budget, and one binding serves both classes.)
  virtual void assign(const int64_t* keys, int64_t n, const float* rows);
  virtual int64_t erase(const int64_t* keys, int64_t n);
  // erase() with mu_ held exclusively; appends the freed row ids to `freed`
  // (may be null). Also erases keys held by an attached tier.
  int64_t erase_locked(const int64_t* keys, int64_t n, std::vector<uint32_t>* freed);

  // ---- training
  // Merges duplicate keys, then one optimizer step per distinct row. All keys
  // must exist (KeyMissingError otherwise, before any change); rows in the
  // tier are promoted first.
  virtual void apply_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o);
  // Backward of pooled_lookup fused with one optimizer step: occurrence p of
  // bag b gets grad_out[b] (row stride grad_stride) times b.weights[p] (sum)
  // or 1/len(b) (mean); max mode routes each column to the position in argmax
  // (from pooled_max_argmax). Keys must exist; nothing changes on error.
  // ids/ids_epoch: what a forward returned (may be null); used instead of
  // resolving the keys again when no row was freed or moved since.
  void apply_pooled_gradients(const Bags& b, const int64_t* argmax, const float* grad_out, int64_t grad_stride,
                              const OptimSpec& o, const uint32_t* ids = nullptr, uint64_t ids_epoch = 0);
  // Bumped whenever a row id may stop meaning the same key (erase, demotion,
  // relayout, eviction).
  uint64_t layout_epoch() const { return layout_epoch_.load(); }
  // Optimizer state per row (0 when no state is bound yet).
  int64_t state_stride() const;
  // Optimizer-state rows of `keys` (n x state_stride()); all keys must exist.
  void export_state(const int64_t* keys, int64_t n, float* out) const;
  // Writes optimizer-state rows for existing keys, binding state of o.kind
  // first when none is bound (rows not listed start at o's initial value).
  void import_state(const int64_t* keys, int64_t n, const float* state, const OptimSpec& o);
  void set_step(int64_t step) { step_.store(step); }

  // ---- versions, deltas, checkpoints (table_versions.cpp)
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
  // as_type: the rows' type in the batch (-1: the table's own type; rows of
  // the table's type are copied as stored, others are converted, rounding to
  // nearest even).
  void collect(uint64_t since, bool full, bool with_versions, RowBatch& out, int as_type = -1) const;
  // Validates the whole batch first (dim, optimizer state, lineage, order,
  // capacity), then applies it under the exclusive lock: a concurrent reader
  // sees all of it or none. A full batch loads into an empty table only.
  // Rows of another row type than the table's are refused (std::invalid_argument)
  // unless convert is set: then they are decoded and stored in the table's type.
  void apply_batch(const RowBatchView& b, bool convert = false);

  // ---- the lower tier (table_tier.cpp)
  // Rows missing from memory are read through from `tier`; TierOptions says
  // whether they move into memory and how many rows memory keeps.
  void attach_tier(std::shared_ptr<StorageTier> tier, const TierOptions& o);
  const std::shared_ptr<StorageTier>& tier() const { return tier_; }
  // The tier stores rows in this table's compressed row type: rows move to
  // and from it as stored bytes (otherwise they convert through fp32).
  bool raw_tier() const { return tier_ && opt_.row_type != RowType::kF32 && tier_->row_type() == opt_.row_type; }
  // Moves these keys' rows (those in memory) to the tier; returns how many.
  int64_t demote(const int64_t* keys, int64_t n);
  // Eviction hook: writes rows `ids` (with state and version) to the tier and
  // frees them. The caller holds mu_ exclusively. TierFullError before any change.
  int64_t write_back_locked(const uint32_t* ids, int64_t n);
  struct TierCounters {
    int64_t memory_hits, tier_hits, promotions, demotions, memory_rows;
    // Time in the tier's reads and writes made by lookups and updates (the
    // callers' own time: waits for the tier included; prefetches not).
    int64_t read_ns, write_ns;
  };
  TierCounters tier_counters() const;

  // ---- prefetch (table_tier.cpp): the tier rows of a future batch, read
  // while the current one computes (docs/storage.md, "Prefetch").
  // Starts reading, on a background thread, the tier rows of those `keys` that
  // have no row in memory now into a staging area; the read path and updates
  // take staged rows instead of reading the tier (promotion consumes them,
  // serving in place copies them). Staged rows are never stale: a write-back,
  // erase or applied delta of a key drops its staged copy, including one a
  // prefetch in flight is about to stage. At most max_staged_rows rows are
  // staged (the oldest prefetch's leftovers go first; keys past the bound are
  // left to the lookup). Returns a ticket for wait_prefetch. A prefetch never
  // changes the table: its failure only means the lookup reads those rows
  // itself (and meets the error then).
  uint64_t prefetch(const int64_t* keys, int64_t n);
  // Waits for the prefetch `ticket` (returns at once for one already waited
  // for) and rethrows its error, if any.
  void wait_prefetch(uint64_t ticket);
  void wait_all_prefetches();
  void set_max_staged_rows(int64_t rows);
  struct PrefetchCounters {
    int64_t staged_rows, staged_bytes, max_staged_rows, prefetched, used, dropped, in_flight;
    int64_t read_ns;  // time the prefetch threads spent reading the tier
  };
  PrefetchCounters prefetch_counters() const;

 protected:
  // ---- the read path (read_path.h), shared by every lookup entry point
  struct ReadCall {
    const int64_t* keys;
    int64_t n;
    bool insert;          // give rows to missing keys (insertion here, admission in FrequencyTable)
    uint32_t now;         // FrequencyTable's clock step of a training call; 0 otherwise
    const float* score_weights;  // FrequencyTable: score weight per key occurrence (may be null)
    ReadStats stats;
  };
  // kernel(view, ids) resolves and reads/pools every key, returning how many
  // have no row in memory. serve(ids) (may be a null function pointer-like
  // nullptr_t) fills those from the tier in place when the table does not
  // promote, returning how many are still missing. Returns the layout epoch
  // of the ids left in `ids`.
  template <class Kernel, class Serve>
  uint64_t read_path(ReadCall& c, uint32_t* ids, const float* default_row, Kernel&& kernel, Serve&& serve);
  // Hooks of the read path. All run with mu_ held as named.
  // Does this call read tier rows in place (no promotion into memory)?
  virtual bool serves_in_place(const ReadCall& c) const;
  // Shared lock, after a pass: must the call take the exclusive lock?
  virtual bool miss_needs_exclusive(const ReadCall& c, int64_t missing) const;
  // Shared lock, the call is done without the exclusive lock.
  virtual void read_done_shared(ReadCall& c, const uint32_t* ids, int64_t missing);
  // Exclusive lock, tier rows already promoted: gives rows to the keys still
  // missing (ids[i] == kNoRow).
  virtual void fill_missing_locked(ReadCall& c, uint32_t* ids);
  // Exclusive lock: rows just promoted from the tier (FrequencyTable scores them).
  virtual void rows_promoted_locked(const uint32_t* ids, int64_t n);

  // ---- helpers for FrequencyTable and the read path
  int threads() const;
  void resolve(const int64_t* keys, int64_t n, uint32_t* ids) const;
  // Caller holds the lock exclusively. Inserts keys whose ids[i] == kNoRow.
  void insert_missing(const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows);
  uint32_t allocate_row(int64_t key);
  void bind_state(const OptimSpec& o);  // caller holds exclusive lock
  void init_state_row(uint32_t id);
  // One optimizer step on the rows of keys (promoting tier rows first):
  // resolve (or take hint while hint_epoch is current), bind optimizer state
  // on first use, the fused update with the next step's scalars, new versions,
  // the memory budget. ids: n of scratch, filled here.
  void fused_step(const int64_t* keys, int64_t n, uint32_t* ids, const GradSource& g, const OptimSpec& o,
                  const uint32_t* hint = nullptr, uint64_t hint_epoch = 0);
  // Refuses (std::invalid_argument, before any change) an update whose step
  // could overflow float32 from finite inputs: the merged gradient is bounded
  // by max|grad| x sum|scale|, and the step by the optimizer's bound on it
  // (docs/engine.md, "Optimizers"); both must stay below kMaxStep.
  // apply_gradients' checks: an optimizer, finite gradients, the overflow bound.
  void check_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o) const;
  // grad_max: the largest |element| of the gradient rows g reads.
  void check_update_bound(const GradSource& g, int64_t n, const OptimSpec& o, double grad_max) const;
  // Checks a pooled backward's arguments (optimizer, argmax for max mode,
  // finite grad_out) and builds its per-occurrence gradient source in
  // per-thread scratch, valid until this thread's next such call.
  GradSource pooled_grad_source(const Bags& b, const int64_t* argmax, const float* grad_out, int64_t grad_stride,
                                const OptimSpec& o) const;
  // Row codecs at the table's row type (caller holds mu_; store_row needs it
  // exclusively or the row's seqlock write).
  void load_row(uint32_t id, float* row) const;
  void store_row(uint32_t id, const float* row);
  // The initializer's row for row id's key, stored in the table's type.
  void init_row_at(uint32_t id);
  // std::invalid_argument (before any change) when a finite row of `rows`
  // (n x dim) has a value out of the row type's range.
  void check_representable(const float* rows, int64_t n, const char* what) const;
  // gather_rows / pool_bags at the table's row type.
  int64_t gather(const RowView& v, const int64_t* keys, uint32_t* ids, int64_t n, float* out, uint8_t* found) const;
  int64_t pool(const RowView& v, const Bags& b, uint32_t* ids, float* out) const;
  // Refuses training on int8 / int4 rows (std::invalid_argument).
  void check_trainable() const;
  // Max pooling with argmax (the torch backend's max mode) runs on fp32 rows only.
  void check_max_argmax() const;
  void stamp(uint32_t id, uint64_t v) { __atomic_store_n(&row_version_[id], v, __ATOMIC_RELAXED); }
  uint64_t stamped(uint32_t id) const { return __atomic_load_n(&row_version_[id], __ATOMIC_RELAXED); }
  // For ids[i] == kNoRow whose key the tier holds: copies the row into memory
  // (caller holds mu_ exclusively). Returns rows promoted.
  // require_all: every missing key must be in the tier, else KeyMissingError
  // before anything is promoted (an update's all-or-nothing check).
  int64_t promote_locked(const int64_t* keys, int64_t n, uint32_t* ids, bool require_all = false);
  // Demotes the oldest rows while memory holds more than memory_rows.
  void enforce_budget_locked();
  // Shared-lock read-through without promotion: fills the rows of missing
  // positions from the tier (the kernel read default_row for them). Return
  // how many positions are still missing.
  int64_t serve_gather(const int64_t* keys, int64_t n, const uint32_t* ids, float* out, uint8_t* found);
  int64_t serve_pool(const Bags& b, const uint32_t* ids, float* out, const float* default_row);
  int64_t fetch_missing(const int64_t* keys, int64_t n, const uint32_t* ids, int64_t& got) const;
  // tier_->get through the staging area: staged rows first (consumed when
  // `consume`), the tier for the rest. Same contract as StorageTier::get.
  int64_t tier_get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions, uint8_t* found,
                   bool consume) const;
  // Drops staged copies of keys whose tier copy changes (and marks them for
  // prefetches in flight). Call after the tier write.
  void unstage(const int64_t* keys, int64_t n) const;

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
  std::atomic<uint64_t> layout_epoch_{0};
  std::atomic<uint64_t> version_{0};
  uint64_t lineage_ = 0;
  std::vector<uint64_t> row_version_;  // row id -> version of its last change (8 bytes/row)
  // row id -> 1 while the tier also holds a copy of the row's key (written at
  // or before the row's version). A promotion copies a row into memory and
  // leaves the tier's copy in place, so a read never makes a durable row less
  // durable; the memory copy always wins, and a write-back overwrites the copy.
  std::vector<uint8_t> row_in_tier_;
  int64_t rows_in_both_ = 0;  // rows with row_in_tier_ set: keys counted once by size()
  FlatKeyMap<uint64_t> tombstones_;  // erased key -> version of the erase
  std::shared_ptr<StorageTier> tier_;
  TierOptions tier_opt_;

 private:
  // (key, row id or kNoRow for a tier-only key) of every key, sorted; mu_ held (shared is enough).
  std::vector<std::pair<int64_t, uint32_t>> sorted_keys_locked() const;
  void read_row_locked(uint32_t id, float* row, float* state) const;
  // The row's stored bytes (row_bytes of the table's type) and its state.
  void read_raw_locked(uint32_t id, uint8_t* raw, float* state) const;
  void finish_update(const uint32_t* ids, int64_t n);  // new versions of updated rows
  std::deque<int64_t> arrival_;  // keys in order of entering memory: demotion order without a policy
  // ---- prefetch staging (guarded by stage_mu_; never held while taking mu_)
  struct StagedBatch {
    std::vector<int64_t> keys;
    std::vector<float> rows, state;
    std::vector<uint64_t> versions;
    int64_t live = 0;  // entries of staged_ still pointing here
  };
  struct StageRef {
    std::shared_ptr<StagedBatch> batch;
    uint32_t i;
  };
  void run_prefetch(const std::vector<int64_t>& keys);
  void drop_staged_locked(int64_t key) const;  // stage_mu_ held
  mutable std::mutex stage_mu_;
  mutable std::unordered_map<int64_t, StageRef> staged_;
  mutable std::deque<std::shared_ptr<StagedBatch>> stage_order_;  // oldest first
  mutable std::unordered_set<int64_t> stage_dirty_;  // keys changed while a prefetch was in flight
  mutable int stage_in_flight_ = 0;
  int64_t max_staged_rows_ = int64_t{1} << 20;
  mutable int64_t pf_prefetched_ = 0, pf_used_ = 0, pf_dropped_ = 0;
  std::mutex pf_mu_;  // the futures
  std::unordered_map<uint64_t, std::future<void>> prefetches_;
  uint64_t next_ticket_ = 0;
  mutable std::atomic<int64_t> memory_hits_{0}, tier_hits_{0}, promotions_{0}, demotions_{0};
  mutable std::atomic<int64_t> tier_read_ns_{0}, tier_write_ns_{0}, pf_read_ns_{0};
};

}  // namespace embedlookup
