#include "table.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>  // lineage ids
#include <string>

#include "../cpu/kernels_cpu.h"
#include "../cpu/pooling_quantized.h"
#include "../cpu/update_cpu.h"
#include "read_path.h"

namespace embedlookup {

namespace {
// Per-thread scratch for resolved row ids: reused across calls so the hot path
// neither allocates nor page-faults.
uint32_t* scratch_ids(int64_t n) {
  thread_local std::vector<uint32_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n) + n / 4 + 64);
  return buf.data();
}
}  // namespace

void TableOptions::validate() const {
  if (dim <= 0 || dim > kMaxDim)
    throw std::invalid_argument("dim must be in [1, " + std::to_string(kMaxDim) + "], got " + std::to_string(dim));
  if (capacity < 0) throw std::invalid_argument("capacity must be >= 0 (0 = unbounded), got " + std::to_string(capacity));
  const int rt = static_cast<int>(row_type);
  if (rt < 0 || rt >= kRowTypes)
    throw std::invalid_argument("row_type must be one of fp32, fp16, bf16, int8, int4 (0 .. 4), got " +
                                std::to_string(rt));
  if (row_type == RowType::kI4 && dim % 2 != 0)
    throw std::invalid_argument("row_type int4 packs two elements per byte: dim must be even, got " +
                                std::to_string(dim));
  if (num_threads < 0 || num_threads > kMaxThreads)
    throw std::invalid_argument("num_threads must be in [0, " + std::to_string(kMaxThreads) +
                                "] (0 = OpenMP's default), got " + std::to_string(num_threads));
}

namespace {
const TableOptions& validated(const TableOptions& o) {
  o.validate();
  return o;
}
}  // namespace

EmbeddingTable::EmbeddingTable(const TableOptions& o)
    : opt_(validated(o)),
      index_(0),
      // Compressed rows are row_bytes (a multiple of 4) apart; all-zero bytes
      // are a zero row in every type, so the zero row serves them all.
      rows_(o.row_type == RowType::kF32 ? padded_stride(o.dim) : row_bytes(o.row_type, o.dim) / 4),
      zero_row_(padded_stride(o.dim), 0.0f) {
  // A random id for this table's history, so a delta is never applied to an
  // unrelated table.
  std::random_device rd;
  lineage_ = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ 1;
}

int EmbeddingTable::threads() const { return opt_.num_threads > 0 ? opt_.num_threads : omp_get_max_threads(); }

size_t EmbeddingTable::size() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return index_.size() + (tier_ ? static_cast<size_t>(tier_->size() - rows_in_both_) : 0);
}

void EmbeddingTable::resolve(const int64_t* keys, int64_t n, uint32_t* ids) const {
  cpu::resolve_keys(index_, keys, ids, n, threads());  // the kernels' index pass
}

uint32_t EmbeddingTable::allocate_row(int64_t key) {
  uint32_t id;
  if (!free_rows_.empty()) {
    id = free_rows_.back();
    free_rows_.pop_back();
  } else {
    if (next_row_ > kMaxRowId) throw TableFullError("table holds the maximum of 2^32 - 3 rows");
    id = next_row_++;
    rows_.ensure(next_row_);
    if (state_) state_->ensure(next_row_);
    if (row_keys_.size() < next_row_) row_keys_.resize(std::max<size_t>(next_row_, row_keys_.size() * 2));
    if (row_version_.size() < next_row_) row_version_.resize(row_keys_.size());
    if (row_in_tier_.size() < next_row_) row_in_tier_.resize(row_keys_.size());
  }
  row_keys_[id] = key;
  row_in_tier_[id] = 0;
  // A re-inserted key's tombstone is superseded by its row.
  if (!tombstones_.empty()) tombstones_.erase(key);
  if (tier_ && tier_opt_.memory_rows > 0) arrival_.push_back(key);
  index_.insert(key, id);
  return id;
}

void EmbeddingTable::init_state_row(uint32_t id) {
  if (!state_) return;
  float* s = state_->row(id);
  for (int64_t j = 0; j < state_->stride(); ++j) s[j] = state_init_;
}

void EmbeddingTable::insert_missing(const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows) {
  // Validate capacity for the distinct new keys before inserting any.
  std::vector<int64_t> fresh;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) fresh.push_back(keys[i]);
  if (fresh.empty()) return;
  std::sort(fresh.begin(), fresh.end());
  const size_t n_fresh = static_cast<size_t>(std::unique(fresh.begin(), fresh.end()) - fresh.begin());
  const size_t after = index_.size() + n_fresh;
  if (opt_.capacity > 0 && after > static_cast<size_t>(opt_.capacity))
    throw TableFullError("table is full: " + std::to_string(index_.size()) + " rows + " + std::to_string(n_fresh) +
                         " new keys > capacity " + std::to_string(opt_.capacity));
  if (after > static_cast<size_t>(kMaxRowId)) throw TableFullError("table would exceed 2^32 - 3 rows");
  index_.reserve(after);
  std::vector<uint32_t> created;
  created.reserve(n_fresh);
  // Each new key's bucket is a random line of an index far larger than the
  // caches: prefetched ahead, the probes overlap (a fresh 1 M-key assign ran
  // ~2x faster with it).
  constexpr int64_t kAhead = 16;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n && ids[i + kAhead] == kNoRow) index_.prefetch(keys[i + kAhead]);
    if (ids[i] != kNoRow) continue;
    uint32_t id = index_.find(keys[i]);  // inserted earlier in this loop?
    if (id == kNoRow) {
      id = allocate_row(keys[i]);
      created.push_back(id);
    }
    ids[i] = id;
  }
  const int64_t nc = static_cast<int64_t>(created.size());
  const uint64_t v = ++version_;  // new rows carry the version of their insert
  for (uint32_t id : created) stamp(id, v);
#pragma omp parallel for num_threads(threads()) schedule(static) if (nc > 256)
  for (int64_t k = 0; k < nc; ++k) {
    const uint32_t id = created[k];
    if (init_rows) init_row_at(id);
    init_state_row(id);
  }
}

// ---- the read path's hooks (read_path.h): plain insertion
bool EmbeddingTable::serves_in_place(const ReadCall&) const { return !tier_opt_.promote; }
bool EmbeddingTable::miss_needs_exclusive(const ReadCall& c, int64_t missing) const { return missing > 0 && c.insert; }
void EmbeddingTable::read_done_shared(ReadCall&, const uint32_t*, int64_t) {}
void EmbeddingTable::fill_missing_locked(ReadCall& c, uint32_t* ids) {
  if (c.insert) insert_missing(c.keys, c.n, ids, true);
}
void EmbeddingTable::rows_promoted_locked(const uint32_t*, int64_t) {}

void EmbeddingTable::lookup(const int64_t* keys, int64_t n, float* out, bool insert, uint8_t* found) {
  ReadCall c{keys, n, insert, 0, nullptr, {}};
  read_path(
      c, scratch_ids(n), zero_row_.data(),
      [&](const RowView& v, uint32_t* ids) {
        return gather(v, keys, ids, n, out, found);
      },
      [&](uint32_t* ids) { return serve_gather(keys, n, ids, out, found); });
}

void EmbeddingTable::pooled_lookup(const Bags& b, float* out, bool insert) {
  ReadCall c{b.values, b.n, insert, 0, nullptr, {}};
  read_path(
      c, scratch_ids(b.n), zero_row_.data(),
      [&](const RowView& v, uint32_t* ids) {
        return pool(v, b, ids, out);
      },
      [&](uint32_t* ids) { return serve_pool(b, ids, out, zero_row_.data()); });
}

void EmbeddingTable::assign(const int64_t* keys, int64_t n, const float* rows) {
  check_representable(rows, n, "rows");
  std::unique_lock<std::shared_mutex> lk(mu_);
  uint32_t* ids = scratch_ids(n);
  resolve(keys, n, ids);
  if (tier_) promote_locked(keys, n, ids);  // keeps tier rows' optimizer state
  insert_missing(keys, n, ids, false);
  // Sequential so that the last occurrence of a duplicated key wins.
  const int64_t dim = opt_.dim;
  const uint64_t v = ++version_;
  for (int64_t i = 0; i < n; ++i) {
    store_row(ids[i], rows + i * dim);
    stamp(ids[i], v);
  }
  if (tier_) enforce_budget_locked();
}

int64_t EmbeddingTable::erase(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  return erase_locked(keys, n, nullptr);
}

int64_t EmbeddingTable::erase_locked(const int64_t* keys, int64_t n, std::vector<uint32_t>* freed) {
  int64_t erased = 0;
  const uint64_t v = version_.load() + 1;  // the erase's version (taken only if something is erased)
  int64_t erased_in_both = 0;  // keys erased from memory and from the tier: counted once
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t id = index_.erase(keys[i]);
    if (id == kNoRow) continue;
    free_rows_.push_back(id);
    if (freed) freed->push_back(id);
    tombstones_.assign(keys[i], v);
    if (row_in_tier_[id]) {
      row_in_tier_[id] = 0;
      --rows_in_both_;
      ++erased_in_both;
    }
    ++erased;
  }
  // Keys held by the tier are erased there too.
  if (tier_) {
    std::vector<uint8_t> in_tier(n);
    tier_->contains(keys, n, in_tier.data());  // the index only: no row is read
    for (int64_t i = 0; i < n; ++i)
      if (in_tier[i]) tombstones_.assign(keys[i], v);
    erased += tier_->erase(keys, n) - erased_in_both;
    unstage(keys, n);  // a prefetched copy of an erased key must not come back
  }
  if (erased) version_.store(v);
  if (erased) layout_epoch_.fetch_add(1);  // row ids cached by callers may now be stale
  return erased;
}

std::vector<std::pair<int64_t, uint32_t>> EmbeddingTable::sorted_keys_locked() const {
  std::vector<std::pair<int64_t, uint32_t>> kv;
  kv.reserve(index_.size());
  index_.for_each([&](int64_t k, uint32_t r) { kv.emplace_back(k, r); });
  // Rows in the tier are part of the table.
  std::vector<int64_t> tier_keys;
  if (tier_) tier_->scan(0, tier_keys);
  for (int64_t k : tier_keys)
    if (index_.find(k) == kNoRow) kv.emplace_back(k, kNoRow);  // else memory holds the current row
  std::sort(kv.begin(), kv.end());
  return kv;
}

void EmbeddingTable::export_keys(std::vector<int64_t>& keys) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  const std::vector<std::pair<int64_t, uint32_t>> kv = sorted_keys_locked();
  keys.resize(kv.size());
  for (size_t i = 0; i < kv.size(); ++i) keys[i] = kv[i].first;
}

void EmbeddingTable::export_rows(std::vector<int64_t>& keys, std::vector<float>& rows) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  const std::vector<std::pair<int64_t, uint32_t>> kv = sorted_keys_locked();
  const int64_t n = static_cast<int64_t>(kv.size());
  keys.resize(n);
  std::vector<uint32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = kv[i].first;
    ids[i] = kv[i].second;
  }
  rows.resize(static_cast<size_t>(n) * opt_.dim);
  const RowView view{&rows_, &seq_, zero_row_.data()};
  std::vector<uint32_t> scratch(n);
  const int64_t missing = gather(view, keys.data(), scratch.data(), n, rows.data(), nullptr);
  if (missing) {  // the tier's rows
    std::vector<int64_t> tk;
    std::vector<int64_t> pos;
    for (int64_t i = 0; i < n; ++i)
      if (scratch[i] == kNoRow) {
        tk.push_back(keys[i]);
        pos.push_back(i);
      }
    std::vector<float> tr(tk.size() * opt_.dim);
    std::vector<uint8_t> f(tk.size());
    tier_->get(tk.data(), static_cast<int64_t>(tk.size()), tr.data(), nullptr, nullptr, f.data());
    for (size_t j = 0; j < tk.size(); ++j)
      std::memcpy(rows.data() + pos[j] * opt_.dim, tr.data() + j * opt_.dim, sizeof(float) * opt_.dim);
  }
}

void EmbeddingTable::bind_state(const OptimSpec& o) {
  const int64_t nf = state_floats(o.kind, opt_.dim);
  state_kind_.store(o.kind);
  state_init_ = initial_state_value(o);
  if (nf == 0) return;
  state_.reset(new RowArena(nf));
  state_->ensure(next_row_);
  for (uint32_t id = 0; id < next_row_; ++id) init_state_row(id);
}

void EmbeddingTable::check_trainable() const {
  if (opt_.row_type == RowType::kI8 || opt_.row_type == RowType::kI4)
    throw std::invalid_argument(std::string("row_type ") + row_type_name(opt_.row_type) +
                                " tables are for serving and replicas and cannot be trained: train an fp32, fp16 or "
                                "bf16 table and quantize on export (export_delta / save with row_type=...)");
}

void EmbeddingTable::check_max_argmax() const {
  if (opt_.row_type != RowType::kF32)
    throw std::invalid_argument(std::string("mode='max' with gradients (pooled_max_argmax) needs row_type fp32; this "
                                            "table stores ") + row_type_name(opt_.row_type) +
                                " (pooled_lookup's max mode works on every type)");
}

void EmbeddingTable::check_gradients(const int64_t*, int64_t n, const GradSource& g, const OptimSpec& o) const {
  check_trainable();
  if (o.kind == OptimKind::kNone) throw std::invalid_argument("optimizer kind is none");
  const cpu::GradScan scan = cpu::scan_grads(g.grad, g.n_grad_rows, opt_.dim, g.grad_stride, threads());
  if (scan.first_non_finite >= 0)
    throw std::invalid_argument("grads: row " + std::to_string(scan.first_non_finite) +
                                " holds NaN or inf; non-finite gradients are rejected and nothing was updated");
  check_update_bound(g, n, o, scan.max_abs);
}

void EmbeddingTable::apply_gradients(const int64_t* keys, int64_t n, const GradSource& g, const OptimSpec& o) {
  // Validate everything before the first change: finite gradients, their
  // bound, then (in fused_step) known keys and matching optimizer state.
  check_gradients(keys, n, g, o);
  uint32_t* ids = scratch_ids(n);
  fused_step(keys, n, ids, g, o);
}

void EmbeddingTable::fused_step(const int64_t* keys, int64_t n, uint32_t* ids, const GradSource& g,
                                const OptimSpec& o, const uint32_t* hint, uint64_t hint_epoch) {
  check_trainable();  // before anything: an int8 / int4 table is never touched by a step
  const RowView view{&rows_, &seq_, zero_row_.data()};
  auto check_kind = [&] {
    const OptimKind have = state_kind_.load();
    if (have != OptimKind::kNone && have != o.kind)
      throw std::invalid_argument(std::string("optimizer: this table's optimizer state belongs to ") +
                                  optim_name(have) + ", cannot apply " + optim_name(o.kind));
  };
  auto missing_key = [&](int64_t i) {
    return KeyMissingError("keys: key " + std::to_string(keys[i]) + " (position " + std::to_string(i) +
                           ") is not in the table; look keys up (which inserts them) before applying gradients");
  };
  auto update = [&] {
    const int64_t step = step_.fetch_add(1) + 1;
    if (opt_.row_type == RowType::kF32) {
      // Rows get their new version in the parallel update (no serial pass).
      const cpu::VersionStamp vs{row_version_.data(), &version_};
      cpu::fused_update(view, state_.get(), ids, n, g, opt_.dim, o, step_scalars(o, step), threads(), &vs);
    } else {
      cpu::fused_update_quantized(view, opt_.row_type, state_.get(), row_keys_.data(), ids, n, g, opt_.dim, o,
                                  step_scalars(o, step), step, opt_.rounding_seed, threads());
      finish_update(ids, n);
    }
  };
  // Fast path, shared lock: every key has a row in memory and the optimizer
  // state is bound. Ids resolved by the forward are still right while no row
  // was freed or moved since: skip the second pass over the index.
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    // A hint naming no row (a key missing when it was resolved, maybe
    // inserted since) or a row never allocated is not trusted: resolve.
    uint32_t bad = 1;
    if (hint && hint_epoch == layout_epoch_.load()) {
      bad = 0;
      for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>(hint[i] >= next_row_);
    }
    if (!bad)
      std::copy(hint, hint + n, ids);
    else
      resolve(keys, n, ids);
    bool ready = true;
    for (int64_t i = 0; i < n && ready; ++i)
      if (ids[i] == kNoRow) {
        if (!tier_) throw missing_key(i);
        ready = false;  // maybe in the tier
      }
    if (ready) check_kind();
    ready = ready && state_kind_.load() == o.kind;
    if (ready) {
      update();
      if (!tier_ || tier_opt_.memory_rows <= 0 || static_cast<int64_t>(index_.size()) <= tier_opt_.memory_rows) return;
      lk.unlock();
      std::unique_lock<std::shared_mutex> ex(mu_);
      enforce_budget_locked();
      return;
    }
  }
  // Slow path, exclusive lock held from the promotion to the update: a row
  // read through from the tier cannot be demoted again by a concurrent call
  // before its gradient lands.
  std::unique_lock<std::shared_mutex> ex(mu_);
  resolve(keys, n, ids);
  // Every check before the promotion: a refused update moves no row.
  if (!tier_)
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] == kNoRow) throw missing_key(i);
  check_kind();
  if (tier_) promote_locked(keys, n, ids, /*require_all=*/true);
  if (state_kind_.load() == OptimKind::kNone) bind_state(o);
  update();
  if (tier_) enforce_budget_locked();
}

// Updated rows carry the step's version.
void EmbeddingTable::finish_update(const uint32_t* ids, int64_t n) {
  const uint64_t v = ++version_;
  for (int64_t i = 0; i < n; ++i) stamp(ids[i], v);
}

void EmbeddingTable::load_row(uint32_t id, float* row) const {
  decode_row(opt_.row_type, reinterpret_cast<const uint8_t*>(rows_.row(id)), opt_.dim, row);
}

void EmbeddingTable::init_row_at(uint32_t id) {
  const int64_t dim = opt_.dim;
  if (opt_.row_type == RowType::kF32) {
    float* r = rows_.row(id);
    init_row(opt_.init, row_keys_[id], r, dim);
    for (int64_t j = dim; j < rows_.stride(); ++j) r[j] = 0.0f;
    return;
  }
  thread_local std::vector<float> r;
  r.resize(dim);
  init_row(opt_.init, row_keys_[id], r.data(), dim);
  store_row(id, r.data());
}

void EmbeddingTable::store_row(uint32_t id, const float* row) {
  if (opt_.row_type == RowType::kF32) {
    std::memcpy(rows_.row(id), row, sizeof(float) * opt_.dim);  // the padding stays zero
    return;
  }
  encode_row(opt_.row_type, row, opt_.dim, reinterpret_cast<uint8_t*>(rows_.row(id)));
}

void EmbeddingTable::check_representable(const float* rows, int64_t n, const char* what) const {
  const RowType t = opt_.row_type;
  if (t == RowType::kF32) return;
  const int64_t dim = opt_.dim;
  for (int64_t i = 0; i < n; ++i)
    if (!row_representable(t, rows + i * dim, dim)) {
      const std::string why = (t == RowType::kF16)   ? "fp16 holds |x| < 65520 (65504 is its largest value)"
                              : (t == RowType::kBF16) ? "bf16 holds |x| below ~3.39e38"
                                                      : "max(row) - min(row) must be finite in float32";
      throw std::invalid_argument(std::string(what) + ": row " + std::to_string(i) + " is out of the range of row_type " +
                                  row_type_name(t) + " (" + why + "); nothing was changed");
    }
}

int64_t EmbeddingTable::gather(const RowView& v, const int64_t* keys, uint32_t* ids, int64_t n, float* out,
                               uint8_t* found) const {
  if (opt_.row_type == RowType::kF32) return cpu::gather_rows(v, index_, keys, ids, n, opt_.dim, out, found, threads());
  return cpu::gather_rows_quantized(v, opt_.row_type, index_, keys, ids, n, opt_.dim, out, found, threads());
}

int64_t EmbeddingTable::pool(const RowView& v, const Bags& b, uint32_t* ids, float* out) const {
  if (opt_.row_type == RowType::kF32)
    return cpu::pool_bags(v, index_, b.values, ids, b.n, b.offsets, b.n_offsets, b.n_bags, opt_.dim, b.mode, b.weights,
                          out, threads());
  return cpu::pool_bags_quantized(v, opt_.row_type, index_, b.values, ids, b.n, b.offsets, b.n_offsets, b.n_bags,
                                  opt_.dim, b.mode, b.weights, out, threads());
}

void EmbeddingTable::export_raw(std::vector<int64_t>& keys, std::vector<uint8_t>& raw) const {
  std::vector<float> rows;
  export_rows(keys, rows);  // fp32 values: decoded rows re-encode to the same bytes (fp16 / bf16 exactly)
  const int64_t n = static_cast<int64_t>(keys.size()), dim = opt_.dim, rb = row_bytes(opt_.row_type, dim);
  raw.assign(static_cast<size_t>(n) * rb, 0);
  if (opt_.row_type == RowType::kF32 || opt_.row_type == RowType::kF16 || opt_.row_type == RowType::kBF16) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; ++i) encode_row(opt_.row_type, rows.data() + i * dim, dim, raw.data() + i * rb);
    return;
  }
  // int8 / int4: the stored bytes themselves (re-encoding the decoded values
  // could move a scale by one ulp); tier rows too when the tier stores this
  // row type (raw_tier), else they are fp32 (or another type) and encoded.
  std::shared_lock<std::shared_mutex> lk(mu_);
  if (raw_tier()) {
    std::vector<int64_t> tk;
    std::vector<int64_t> pos;
    for (int64_t i = 0; i < n; ++i)
      if (index_.find(keys[i]) == kNoRow) {
        tk.push_back(keys[i]);
        pos.push_back(i);
      }
    std::vector<uint8_t> tr(tk.size() * rb), f(tk.size());
    tier_->get_raw(tk.data(), static_cast<int64_t>(tk.size()), tr.data(), nullptr, nullptr, f.data());
    for (size_t j = 0; j < tk.size(); ++j)
      std::memcpy(raw.data() + pos[j] * rb, tr.data() + j * rb, static_cast<size_t>(rb));
  }
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 4096)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t id = index_.find(keys[i]);
    uint8_t* o = raw.data() + i * rb;
    if (id == kNoRow) {
      if (!raw_tier()) encode_row(opt_.row_type, rows.data() + i * dim, dim, o);
      continue;
    }
    for (;;) {
      const uint32_t s0 = seq_.read_begin(id);
      std::memcpy(o, rows_.row(id), static_cast<size_t>(rb));
      if (seq_.read_valid(id, s0)) break;
    }
  }
}

MemoryStats EmbeddingTable::memory() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  MemoryStats m;
  m.index_bytes = index_.bytes();
  m.row_bytes = rows_.bytes();
  m.state_bytes = state_ ? state_->bytes() : 0;
  m.metadata_bytes = row_keys_.capacity() * sizeof(int64_t) + free_rows_.capacity() * sizeof(uint32_t);
  // row versions (8 B/row) and tombstones (~32 B per erased key in the map)
  m.metadata_bytes += row_version_.capacity() * sizeof(uint64_t) + row_in_tier_.capacity() + tombstones_.bytes();
  m.rows = index_.size();
  return m;
}

}  // namespace embedlookup
