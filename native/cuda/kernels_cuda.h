// Launchers for the CUDA kernels (one .cu file per operation). Plain C++
// types only, so the host-side table (cuda_table.cpp) builds with g++.
// Every launcher enqueues on `stream` and returns without synchronising.
#pragma once
#include <cstddef>
#include <cstdint>

#include "embedlookup/initializer.h"
#include "embedlookup/optimizer.h"
#include "embedlookup/pooling.h"

struct CUstream_st;

namespace embedlookup {
namespace cuda {

using Stream = CUstream_st*;
struct Slot;

// Where a table's device arrays are; passed to kernels by value.
struct TableView {
  Slot* slots;          // index: mask + 2 slots
  uint64_t mask;
  float* rows;          // row_cap x stride
  float* state;         // row_cap x state_stride, or null
  int64_t* row_keys;    // row id -> key
  uint32_t* count;      // rows allocated so far (next row id), device word
  int64_t dim, stride, state_stride;
  float state_init;
  InitSpec init;
};

// --- index_cuda.cu
void fill_empty_slots(Slot* slots, uint64_t n_slots, Stream s);
// Re-inserts every key of `from` into `to` (both sized by their masks).
void rehash(const Slot* from, uint64_t from_mask, Slot* to, uint64_t to_mask, Stream s);
// Finds or inserts keys[0..n); ids[i] receives the row id, or kNoRow where
// another thread was still writing that key's id (read it again afterwards
// with find). New rows are filled by the initializer when init_rows, their
// optimizer state with state_init.
void insert_keys(const TableView& t, const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows, Stream s);
// Frees every slot whose row id is >= first_new and resets the count to
// first_new: exactly undoes the inserts since the count was first_new.
void rollback_inserts(const TableView& t, uint32_t first_new, Stream s);
// Writes the (key, id) of every occupied slot to keys/ids (any order) and the
// number written to *n_out.
void collect_slots(const TableView& t, int64_t* keys, uint32_t* ids, uint32_t* n_out, Stream s);
// out[i] = row ids[i] (first `dim` floats).
void gather_ids(const TableView& t, const uint32_t* ids, int64_t n, float* out, Stream s);
// rows[i] -> row of keys[i]; where a key repeats the last occurrence wins.
// winner: row_cap int32 scratch.
void assign_rows(const TableView& t, const uint32_t* ids, int64_t n, const float* rows, int32_t* winner,
                 int64_t row_cap, Stream s);
void fill_floats(float* p, int64_t n, float v, Stream s);

// --- pool_cuda.cu
// Bag b = [offsets[b], b + 1 < n_offsets ? offsets[b + 1] : n). ids may be
// null (keys are probed) or the output of insert_keys. Missing keys read as
// zero rows. Offsets are clamped to [0, n], so bad offsets never read out of
// bounds (check_offsets reports them).
void pool_bags(const TableView& t, const int64_t* keys, const uint32_t* ids, int64_t n, const int64_t* offsets,
               int64_t n_offsets, int64_t n_bags, PoolMode mode, const float* weights, float* out, Stream s);
// out: n x dim; found (n bytes) may be null.
void gather_rows(const TableView& t, const int64_t* keys, const uint32_t* ids, int64_t n, float* out,
                 uint8_t* found, Stream s);

// --- pool_raw_cuda.cu
// Storage types of raw rows (the ids of embedlookup/_row_layout.py).
enum class RowKind : int32_t { kFp32 = 0, kFp16 = 1, kBf16 = 2, kInt8 = 3, kInt4 = 4 };
// Read-only rows in a storage type: n_rows rows of row_bytes bytes (a
// multiple of 4), each `dim` elements in the layout of `kind`.
struct RawRowsView {
  const uint8_t* rows;
  int64_t n_rows, row_bytes, dim;
  RowKind kind;
};
// Output columns per lane per block (grid.y covers wider rows).
constexpr int kRawColsPerLane = 4;
// Pools rows ids[p] (row numbers; negative or >= n_rows: missing, a zero
// row) into bags as pool_bags does, decoding each element where it is read.
void pool_raw_rows(const RawRowsView& r, const int64_t* ids, int64_t n, const int64_t* offsets, int64_t n_offsets,
                   int64_t n_bags, PoolMode mode, const float* weights, float* out, Stream s);

// Result of a device-side argument check, read back by the host.
struct CheckResult {
  int64_t first_bad;  // offsets: first bad index; grads: first non-finite row; INT64_MAX if none
  int64_t first_missing;  // apply_gradients: first position whose key is absent; INT64_MAX if none
  int32_t code;       // offsets: bitmask of kOffsets* below
  int32_t unused;
};
constexpr int32_t kOffsetsFirstNotZero = 1, kOffsetsDecreasing = 2, kOffsetsPastEnd = 4, kOffsetsLastNotEnd = 8;
void reset_check(CheckResult* r, Stream s);
// Resets *r, then checks offsets as the CPU path does.
void check_offsets(const int64_t* offsets, int64_t n_offsets, int64_t n, bool include_last_offset, CheckResult* r,
                   Stream s);

// --- update_cuda.cu
// Resets *r, resolves ids[i] for keys and checks grads (n x dim) for NaN/inf.
void check_gradients(const TableView& t, const int64_t* keys, int64_t n, const float* grads, uint32_t* ids,
                     CheckResult* r, Stream s);
// Scratch bytes update_rows needs for n positions.
size_t update_scratch_bytes(int64_t n);
// Merges duplicate ids (gradients summed in position order, as the CPU engine
// does) and applies one optimizer step per distinct row. row_bits: bits
// needed for the largest row id.
void update_rows(const TableView& t, const uint32_t* ids, int64_t n, const float* grads, const OptimSpec& o,
                 const StepScalars& c, void* scratch, size_t scratch_bytes, int row_bits, Stream s);

// --- cache_cuda.cu: rows in mapped host memory, hot rows in HBM slots
// (docs/gpu-cache.md). A position's row: HBM slot slot_of[i] when >= 0, else
// host row host_row[i] when >= 0, else none (a zero row).
struct CachedView {
  float* hbm;         // slots x stride, device memory
  float* hbm_state;   // slots x state_stride, or null
  float* host;        // host rows x stride: the device address of mapped pinned memory
  float* host_state;  // host rows x state_stride, or null
  int64_t dim, stride, state_stride;
};
void cached_pool(const CachedView& v, const int32_t* slot_of, const int64_t* host_row, int64_t n,
                 const int64_t* offsets, int64_t n_offsets, int64_t n_bags, PoolMode mode, const float* weights,
                 float* out, Stream s);
void cached_gather(const CachedView& v, const int32_t* slot_of, const int64_t* host_row, int64_t n, float* out,
                   Stream s);
// Copies rows and their optimizer state: to_host, slot -> host row (write-back); else host row -> slot (fill).
void cached_move(const CachedView& v, const int32_t* slots, const int64_t* host_rows, int64_t n, bool to_host,
                 Stream s);
// Fused backward: distinct row u (loc_slot[u] / loc_host[u]) sums the gradients
// of positions perm[seg[u] .. seg[u + 1]) in that order and takes one optimizer step where it lives.
void cached_update(const CachedView& v, const int32_t* loc_slot, const int64_t* loc_host, int64_t n_loc,
                   const int64_t* seg, const int64_t* perm, const float* grads, const OptimSpec& o,
                   const StepScalars& c, Stream s);

}  // namespace cuda
}  // namespace embedlookup
