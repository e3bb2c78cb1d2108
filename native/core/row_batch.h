// RowBatch: a table's rows in transit — a full checkpoint or a delta (the rows
// changed after `from_version`, plus tombstones of erased keys). The table
// fills and applies it (table.h); native/storage/snapshot.h encodes it.
#pragma once
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

#include "../structures/huge_alloc.h"  // batch_alloc

#include "embedlookup/initializer.h"
#include "embedlookup/optimizer.h"
#include "embedlookup/row_codec.h"

namespace embedlookup {

// Read-only view of a contiguous array (a std::span stand-in for C++17).
template <class T>
struct Span {
  const T* p = nullptr;
  size_t n = 0;
  const T* data() const { return p; }
  size_t size() const { return n; }
  bool empty() const { return n == 0; }
  const T& operator[](size_t i) const { return p[i]; }
  const T* begin() const { return p; }
  const T* end() const { return p + n; }
};

struct RowBatchMeta {
  bool full = false;           // full checkpoint (load into an empty table) vs delta
  uint64_t lineage = 0;        // id of the table history the rows belong to
  uint64_t from_version = 0;   // rows changed after this version (0 for full)
  uint64_t to_version = 0;     // table version when the batch was taken
  // configuration of the source table
  int64_t dim = 0;
  InitSpec init;
  int64_t capacity = 0;
  OptimKind state_kind = OptimKind::kNone;
  float state_init = 0.0f;     // initial optimizer-state value (Adagrad accumulator)
  int64_t state_floats = 0;    // per row; = state_floats(state_kind, dim)
  int64_t step = 0;
  bool has_versions = false;   // per-row versions carried (else rows take to_version)
  uint64_t n_rows = 0;         // rows carried (a decoded header states it before any payload is read)
  uint64_t n_dead = 0;         // tombstones carried
  // Type of the rows carried: each row is row_bytes(row_type, dim) bytes
  // (dim floats for fp32), held in the float arrays below as row_floats()
  // floats (every row type's bytes are a multiple of 4).
  RowType row_type = RowType::kF32;
  int64_t row_floats() const { return row_type == RowType::kF32 ? dim : row_bytes(row_type, dim) / 4; }
};

// Borrowed payload: a decoded file mapping or caller's buffer, no copy.
struct RowBatchView : RowBatchMeta {
  Span<int64_t> keys;
  Span<uint64_t> versions;  // n or empty
  Span<float> rows;         // n x row_floats() (the rows' bytes, of row_type)
  Span<float> state;        // n x state_floats
  Span<int64_t> dead_keys;  // tombstones
  Span<uint64_t> dead_versions;
};

// Allocator of RowBatch's payload (for a checkpoint, a copy of the whole
// table): resize() leaves elements uninitialised, since collect() writes every
// one, and blocks of 4 MiB and more are mapped with their pages populated in
// one call (batch_alloc). On a 1 M x 64 table the zero-fill and the 4 KiB page
// faults were ~35% of save()'s CPU time; save() went from 0.75 s to 0.67 s
// (medians of 16, alternated processes; the rest is the sort, the gather and
// the file I/O). Huge pages were faster from the second save on but 2x slower
// on a process's first (memory compaction).
template <class T>
struct BatchAllocator {
  using value_type = T;
  static constexpr size_t kHugeFrom = size_t(4) << 20;
  BatchAllocator() = default;
  template <class U>
  BatchAllocator(const BatchAllocator<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    return static_cast<T*>(bytes >= kHugeFrom ? batch_alloc(bytes) : ::operator new(bytes));
  }
  void deallocate(T* p, size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes >= kHugeFrom) batch_free(p, bytes);
    else ::operator delete(p);
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    if constexpr (sizeof...(A) == 0) ::new (static_cast<void*>(p)) U;  // default-init: no zeroing
    else ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  template <class U>
  bool operator==(const BatchAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const BatchAllocator<U>&) const { return false; }
};
template <class T>
using BatchVector = std::vector<T, BatchAllocator<T>>;

// Owned payload (what collect() fills).
struct RowBatch : RowBatchMeta {
  BatchVector<int64_t> keys;
  BatchVector<uint64_t> versions;
  BatchVector<float> rows;
  BatchVector<float> state;
  std::vector<int64_t> dead_keys;
  std::vector<uint64_t> dead_versions;
  RowBatchView view() const {
    RowBatchView v;
    static_cast<RowBatchMeta&>(v) = *this;
    v.keys = {keys.data(), keys.size()};
    v.versions = {versions.data(), versions.size()};
    v.rows = {rows.data(), rows.size()};
    v.state = {state.data(), state.size()};
    v.dead_keys = {dead_keys.data(), dead_keys.size()};
    v.dead_versions = {dead_versions.data(), dead_versions.size()};
    return v;
  }
};

}  // namespace embedlookup
