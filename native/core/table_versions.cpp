// EmbeddingTable's versions: the rows changed since a version (deltas) or all
// rows (checkpoints) collected into a RowBatch, and a RowBatch applied
// atomically. native/storage/snapshot.h encodes RowBatches as files.
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
}  // namespace

void EmbeddingTable::read_raw_locked(uint32_t id, uint8_t* raw, float* state) const {
  const int64_t sf = state_ ? state_->stride() : 0;
  const size_t rb = static_cast<size_t>(row_bytes(opt_.row_type, opt_.dim));
  for (;;) {
    const uint32_t s0 = seq_.read_begin(id);
    std::memcpy(raw, rows_.row(id), rb);
    if (state && sf) std::memcpy(state, state_->row(id), sizeof(float) * sf);
    if (seq_.read_valid(id, s0)) return;
  }
}

void EmbeddingTable::read_row_locked(uint32_t id, float* row, float* state) const {
  const int64_t sf = state_ ? state_->stride() : 0;
  for (;;) {  // row and state from the same instant (gradient steps run under the shared lock)
    const uint32_t s0 = seq_.read_begin(id);
    load_row(id, row);
    if (state && sf) std::memcpy(state, state_->row(id), sizeof(float) * sf);
    if (seq_.read_valid(id, s0)) return;
  }
}

void EmbeddingTable::collect(uint64_t since, bool full, bool with_versions, RowBatch& b, int as_type) const {
  if (as_type >= kRowTypes || (as_type == static_cast<int>(RowType::kI4) && opt_.dim % 2))
    throw std::invalid_argument("row_type: " + std::to_string(as_type) + " is not a row type for dim " +
                                std::to_string(opt_.dim));
  const RowType as = as_type < 0 ? opt_.row_type : static_cast<RowType>(as_type);
  std::shared_lock<std::shared_mutex> lk(mu_);
  b = RowBatch();
  b.row_type = as;
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
  std::vector<uint8_t> traw;  // tier rows as stored, when the tier holds the output's row type
  std::vector<uint64_t> tv;
  int64_t tsf = 0;
  const bool tier_raw = raw_tier() && as == opt_.row_type;
  const int64_t rb = row_bytes(as, dim);
  if (tier_) {
    tier_->scan(since, tk);
    const int64_t m = static_cast<int64_t>(tk.size());
    tsf = tier_->state_floats();
    ts.resize(m * tsf);
    tv.resize(m);
    std::vector<uint8_t> f(m);
    if (tier_raw) {
      traw.resize(static_cast<size_t>(m * rb));
      tier_->get_raw(tk.data(), m, traw.data(), tsf ? ts.data() : nullptr, tv.data(), f.data());
    } else {
      tr.resize(m * dim);
      tier_->get(tk.data(), m, tr.data(), tsf ? ts.data() : nullptr, tv.data(), f.data());
    }
    for (int64_t j = 0; j < m; ++j)  // tier rows < 2^32; a key in memory is read there (the current row)
      if (f[j] && index_.find(tk[j]) == kNoRow) src.push_back({tk[j], kNoRow, static_cast<uint32_t>(j)});
  }
  std::sort(src.begin(), src.end(), [](const Src& a, const Src& c) { return a.key < c.key; });
  const int64_t n = static_cast<int64_t>(src.size());
  b.keys.resize(n);
  const int64_t rf = b.row_floats();
  // Rows of the table's own compressed type are copied as stored.
  const bool raw_copy = as == opt_.row_type && as != RowType::kF32;
  b.rows.resize(static_cast<size_t>(n) * rf);
  b.state.resize(static_cast<size_t>(n) * sf);
  if (with_versions) b.versions.resize(n);
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 4096)
  for (int64_t i = 0; i < n; ++i) {
    const Src& s = src[i];
    b.keys[i] = s.key;
    float* st = sf ? b.state.data() + i * sf : nullptr;
    uint64_t v;
    thread_local std::vector<float> tmp;
    tmp.resize(dim);
    uint8_t* out_row = reinterpret_cast<uint8_t*>(b.rows.data() + i * rf);
    if (s.id != kNoRow && raw_copy) {
      read_raw_locked(s.id, out_row, st);
      v = stamped(s.id);
    } else if (s.id != kNoRow) {
      read_row_locked(s.id, tmp.data(), st);
      encode_row(as, tmp.data(), dim, out_row);
      v = stamped(s.id);
    } else {
      if (tier_raw)
        std::memcpy(out_row, traw.data() + s.tpos * rb, static_cast<size_t>(rb));
      else
        encode_row(as, tr.data() + s.tpos * dim, dim, out_row);
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
    tombstones_.for_each([&](int64_t key, uint64_t v) {
      if (v > since) dead.emplace_back(key, v);
    });
    std::sort(dead.begin(), dead.end());
    for (const auto& kv : dead) {
      b.dead_keys.push_back(kv.first);
      b.dead_versions.push_back(kv.second);
    }
  }
}

void EmbeddingTable::apply_batch(const RowBatchView& b, bool convert) {
  const char* what = b.full ? "checkpoint" : "delta";
  if (b.row_type != opt_.row_type && !convert)
    bad_batch(std::string(what) + ": its rows are " + row_type_name(b.row_type) + " but this table stores " +
              row_type_name(opt_.row_type) + "; convert explicitly (row_type= on load, convert=True on apply_delta)");
  if (b.dim != opt_.dim)
    bad_batch(std::string(what) + ": rows have dim " + std::to_string(b.dim) + " but this table has dim " +
              std::to_string(opt_.dim));
  const size_t n = b.keys.size();
  const int64_t rf = b.row_floats();
  if (b.rows.size() != n * rf || b.state.size() != n * b.state_floats ||
      (b.has_versions && b.versions.size() != n) || b.dead_keys.size() != b.dead_versions.size() ||
      b.state_floats != state_floats(b.state_kind, b.dim))
    bad_batch(std::string(what) + ": inconsistent sizes");
  // Rows converted to this table's type must fit it (checked on their values).
  if (b.row_type == RowType::kF32) {
    check_representable(b.rows.data(), static_cast<int64_t>(n), what);
  } else if (b.row_type != opt_.row_type && opt_.row_type != RowType::kF32) {
    std::vector<float> tmp(opt_.dim);
    for (size_t i = 0; i < n; ++i) {
      decode_row(b.row_type, reinterpret_cast<const uint8_t*>(b.rows.data() + i * rf), opt_.dim, tmp.data());
      check_representable(tmp.data(), 1, what);
    }
  }
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
  if (tier_) {  // the tier's copies of keys the batch erases or overwrites go below
    auto drop_copy = [&](int64_t k) {
      const uint32_t id = index_.find(k);
      if (id != kNoRow && row_in_tier_[id]) {
        row_in_tier_[id] = 0;
        --rows_in_both_;
      }
    };
    for (int64_t k : b.dead_keys) drop_copy(k);
    for (int64_t k : b.keys) drop_copy(k);
  }
  for (size_t i = 0; i < b.dead_keys.size(); ++i) {
    const int64_t k = b.dead_keys[i];
    const uint32_t id = index_.erase(k);
    if (id != kNoRow) free_rows_.push_back(id);
    tombstones_.assign(k, b.dead_versions[i]);
  }
  if (!b.dead_keys.empty()) layout_epoch_.fetch_add(1);  // freed ids: cached row ids are stale
  if (tier_) {
    if (!b.dead_keys.empty()) tier_->erase(b.dead_keys.data(), static_cast<int64_t>(b.dead_keys.size()));
    // Rows the batch overwrites leave the tier: memory holds the new value.
    tier_->erase(b.keys.data(), n64);
    unstage(b.dead_keys.data(), static_cast<int64_t>(b.dead_keys.size()));
    unstage(b.keys.data(), n64);
  }
  index_.reserve(index_.size() + incoming);
  const int64_t dim = opt_.dim, sf = state_ ? state_->stride() : 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t id = index_.find(b.keys[i]);
    const bool created = id == kNoRow;
    if (created) id = allocate_row(b.keys[i]);
    const uint8_t* src = reinterpret_cast<const uint8_t*>(b.rows.data() + i * rf);
    if (b.row_type == opt_.row_type && b.row_type != RowType::kF32) {
      std::memcpy(rows_.row(id), src, static_cast<size_t>(rf) * sizeof(float));
    } else if (b.row_type == RowType::kF32) {
      store_row(id, b.rows.data() + i * rf);
    } else {
      thread_local std::vector<float> tmp;
      tmp.resize(dim);
      decode_row(b.row_type, src, dim, tmp.data());
      store_row(id, tmp.data());
    }
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

}  // namespace embedlookup
