// CudaTable: the hashed embedding table held in one GPU's memory.
//
// Same contract as the CPU EmbeddingTable (int64 key -> row of `dim` floats,
// rows of new keys filled by the deterministic initializer, EmbeddingBag
// pooling, fused sparse optimizers), with every array on the device: keys,
// offsets, weights, gradients and outputs are device pointers, and every call
// is enqueued on the caller's stream. Calls that must read a result back
// (size, export, argument checks, growth) wait for that stream.
//
// Calls on one table are serialised by a mutex and ordered on the device: a
// call on another stream than the previous one first waits for it. A call
// that fails leaves the table as it was.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels_cuda.h"

namespace embedlookup {
namespace cuda {

// Not enough device memory for what was asked (a MemoryError in Python).
class DeviceMemoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// No usable GPU, or a CUDA call failed.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CudaTableOptions {
  int64_t dim = 0;            // floats per row (> 0)
  InitSpec init;              // initializer for rows created by lookups
  int64_t capacity = 0;       // max rows; 0 = grow while device memory lasts
  int device = 0;             // CUDA device ordinal
  int64_t expected_rows = 0;  // rows to allocate up front (avoids regrowth)
};

// A bad argument found on the device: code (kOffsets* bits) and index.
struct ArgProblem {
  int32_t code = 0;
  int64_t index = -1;
};

struct CudaMemory {
  size_t index_bytes, row_bytes, state_bytes, metadata_bytes, rows, row_capacity;
};

class CudaTable {
 public:
  explicit CudaTable(const CudaTableOptions& o);
  ~CudaTable();
  CudaTable(const CudaTable&) = delete;
  CudaTable& operator=(const CudaTable&) = delete;

  int64_t dim() const { return dim_; }
  int64_t stride() const { return stride_; }
  int device() const { return device_; }
  int64_t step() const { return step_; }
  OptimKind state_kind() const { return state_kind_; }

  int64_t size(Stream s);
  void lookup(const int64_t* keys, int64_t n, float* out, bool insert, uint8_t* found, Stream s);
  // check: validate offsets first (waits for the stream); a problem is
  // returned, nothing is changed.
  ArgProblem pooled_lookup(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                           int64_t n_bags, bool include_last_offset, PoolMode mode, const float* weights, float* out,
                           bool insert, bool check, Stream s);
  void assign(const int64_t* keys, int64_t n, const float* rows, Stream s);
  // Writes all n keys (sorted) and their rows; n must equal size().
  void export_rows(int64_t* keys, float* rows, int64_t n, Stream s);
  void apply_gradients(const int64_t* keys, int64_t n, const float* grads, const OptimSpec& o, Stream s);
  CudaMemory memory(Stream s);

 private:
  TableView view() const;
  void free_all();
  void begin(Stream s);  // orders this call after the previous one
  void end(Stream s);
  void* alloc(size_t bytes, Stream s, const char* what);
  void release(void* p, Stream s);
  void* scratch(size_t bytes, Stream s);
  uint32_t read_count(Stream s);
  void ensure_room(int64_t n_new, Stream s);
  void grow_rows(int64_t rows, Stream s);
  void grow_index(uint64_t slots, Stream s);
  // Inserts keys; ids receives their rows. Enforces the capacity.
  void insert(const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows, Stream s);
  CheckResult read_check(Stream s);

  std::mutex mu_;
  int device_;
  int64_t dim_, stride_, capacity_;
  InitSpec init_;
  Slot* slots_ = nullptr;
  uint64_t mask_ = 0;
  float* rows_ = nullptr;
  float* state_ = nullptr;
  int64_t* row_keys_ = nullptr;
  int64_t row_cap_ = 0;
  OptimKind state_kind_ = OptimKind::kNone;
  int64_t state_stride_ = 0;
  float state_init_ = 0.0f;
  int64_t step_ = 0;
  uint32_t* d_count_ = nullptr;    // device: rows allocated
  CheckResult* d_check_ = nullptr; // device: result of argument checks
  void* host_ = nullptr;           // pinned: read-back of count / check
  int64_t count_bound_ = 0;        // upper bound of the device count (exact after read_count)
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* event_ = nullptr;          // cudaEvent_t recorded at the end of each call
  Stream last_stream_ = nullptr;
  bool any_call_ = false;
};

}  // namespace cuda
}  // namespace embedlookup
