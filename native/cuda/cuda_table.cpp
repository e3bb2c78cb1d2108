#include "cuda_table.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>
#include <vector>

#include "embedlookup/errors.h"
#include "device_index.cuh"

namespace embedlookup {
namespace cuda {

namespace {

constexpr double kMaxLoad = 0.5;  // index load limit: short linear probes

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so later calls can go on
    throw CudaError(std::string(what) + ": " + cudaGetErrorString(e));
  }
}

cudaStream_t cs(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

// Makes `device` current for the scope of a call.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev), "cudaGetDevice");
    if (prev != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev) cudaSetDevice(prev);
  }
};

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

uint64_t slots_for(int64_t rows) {
  uint64_t n = 1024;
  while (static_cast<double>(n) * kMaxLoad < static_cast<double>(rows)) n <<= 1;
  return n;
}

struct HostReadback {
  uint32_t count;
  uint32_t pad;
  CheckResult check;
};

}  // namespace

CudaTable::CudaTable(const CudaTableOptions& o)
    : device_(o.device), dim_(o.dim), stride_(padded_stride(o.dim)), capacity_(o.capacity), init_(o.init) {
  if (o.dim <= 0) throw std::invalid_argument("dim must be > 0");
  if (o.capacity < 0) throw std::invalid_argument("capacity must be >= 0");
  int n_dev = 0;
  const cudaError_t e = cudaGetDeviceCount(&n_dev);
  if (e != cudaSuccess || n_dev == 0) {
    cudaGetLastError();
    throw CudaError(std::string("no CUDA GPU is usable: ") +
                    (e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports 0 devices"));
  }
  if (o.device < 0 || o.device >= n_dev)
    throw std::invalid_argument("device must be in [0, " + std::to_string(n_dev) + "), got " + std::to_string(o.device));
  DeviceGuard g(device_);
  int64_t rows = std::max<int64_t>(o.expected_rows, 1024);
  if (capacity_ > 0) rows = std::min<int64_t>(rows, std::max<int64_t>(capacity_, 1024));
  if (rows > static_cast<int64_t>(kMaxRows)) throw TableFullError("expected_rows exceeds the maximum of 2^32 - 3 rows");
  // Refuse up front what cannot fit, with the sizes in the message.
  const uint64_t slots = slots_for(rows);
  const double need = static_cast<double>(rows) * (stride_ * 4 + 8) + static_cast<double>(slots + 1) * sizeof(Slot);
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  if (need > static_cast<double>(free_b))
    throw DeviceMemoryError("CudaTable: " + std::to_string(rows) + " rows of dim " + std::to_string(dim_) + " need " +
                            gib(need) + " of device memory, but GPU " + std::to_string(device_) + " has " +
                            gib(static_cast<double>(free_b)) + " free of " + gib(static_cast<double>(total_b)));
  cudaEvent_t ev;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  event_ = ev;
  check(cudaHostAlloc(&host_, sizeof(HostReadback), cudaHostAllocDefault), "cudaHostAlloc");
  Stream s = nullptr;  // construction runs on the legacy default stream, then syncs
  try {
    d_count_ = static_cast<uint32_t*>(alloc(sizeof(uint32_t), s, "row count"));
    d_check_ = static_cast<CheckResult*>(alloc(sizeof(CheckResult), s, "check result"));
    check(cudaMemsetAsync(d_count_, 0, sizeof(uint32_t), cs(s)), "cudaMemsetAsync");
    grow_rows(rows, s);
    grow_index(slots, s);
    check(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize");
  } catch (...) {
    free_all();
    throw;
  }
}

CudaTable::~CudaTable() { free_all(); }

void CudaTable::free_all() {
  int prev = -1;
  cudaGetDevice(&prev);
  cudaSetDevice(device_);
  // After all work on the last stream used.
  if (event_) cudaStreamSynchronize(cs(last_stream_));
  for (void* p : {static_cast<void*>(slots_), static_cast<void*>(rows_), static_cast<void*>(state_),
                  static_cast<void*>(row_keys_), static_cast<void*>(d_count_), static_cast<void*>(d_check_), scratch_})
    if (p) cudaFree(p);
  slots_ = nullptr;
  rows_ = state_ = nullptr;
  row_keys_ = nullptr;
  d_count_ = nullptr;
  d_check_ = nullptr;
  scratch_ = nullptr;
  if (host_) cudaFreeHost(host_);
  host_ = nullptr;
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
  event_ = nullptr;
  if (prev >= 0) cudaSetDevice(prev);
  cudaGetLastError();
}

TableView CudaTable::view() const {
  TableView t;
  t.slots = slots_;
  t.mask = mask_;
  t.rows = rows_;
  t.state = state_;
  t.row_keys = row_keys_;
  t.count = d_count_;
  t.dim = dim_;
  t.stride = stride_;
  t.state_stride = state_stride_;
  t.state_init = state_init_;
  t.init = init_;
  return t;
}

void CudaTable::begin(Stream s) {
  if (any_call_ && s != last_stream_)
    check(cudaStreamWaitEvent(cs(s), static_cast<cudaEvent_t>(event_), 0), "cudaStreamWaitEvent");
}

void CudaTable::end(Stream s) {
  check(cudaEventRecord(static_cast<cudaEvent_t>(event_), cs(s)), "cudaEventRecord");
  last_stream_ = s;
  any_call_ = true;
}

void* CudaTable::alloc(size_t bytes, Stream s, const char* what) {
  void* p = nullptr;
  const cudaError_t e = cudaMallocAsync(&p, std::max<size_t>(bytes, 256), cs(s));
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw DeviceMemoryError(std::string("CudaTable: out of device memory allocating ") + gib(static_cast<double>(bytes)) +
                            " for " + what + " (GPU " + std::to_string(device_) + ": " +
                            gib(static_cast<double>(free_b)) + " free of " + gib(static_cast<double>(total_b)) +
                            "; the table holds " + gib(static_cast<double>(row_cap_) * stride_ * 4) + " of rows)");
  }
  check(e, "cudaMallocAsync");
  return p;
}

void CudaTable::release(void* p, Stream s) {
  if (p) cudaFreeAsync(p, cs(s));
}

void* CudaTable::scratch(size_t bytes, Stream s) {
  if (bytes > scratch_bytes_) {
    const size_t want = std::max(bytes, scratch_bytes_ + scratch_bytes_ / 2);
    void* p = alloc(want, s, "scratch");
    release(scratch_, s);
    scratch_ = p;
    scratch_bytes_ = want;
  }
  return scratch_;
}

uint32_t CudaTable::read_count(Stream s) {
  auto* h = static_cast<HostReadback*>(host_);
  check(cudaMemcpyAsync(&h->count, d_count_, sizeof(uint32_t), cudaMemcpyDeviceToHost, cs(s)), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize");
  count_bound_ = h->count;
  return h->count;
}

CheckResult CudaTable::read_check(Stream s) {
  auto* h = static_cast<HostReadback*>(host_);
  check(cudaMemcpyAsync(&h->check, d_check_, sizeof(CheckResult), cudaMemcpyDeviceToHost, cs(s)), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize");
  return h->check;
}

void CudaTable::grow_rows(int64_t rows, Stream s) {
  // Allocate everything first, so a failure changes nothing.
  auto* r = static_cast<float*>(alloc(sizeof(float) * rows * stride_, s, "rows"));
  int64_t* k = nullptr;
  float* st = nullptr;
  try {
    k = static_cast<int64_t*>(alloc(sizeof(int64_t) * rows, s, "row keys"));
    if (state_stride_) st = static_cast<float*>(alloc(sizeof(float) * rows * state_stride_, s, "optimizer state"));
  } catch (...) {
    release(r, s);
    release(k, s);
    throw;
  }
  if (row_cap_) {
    check(cudaMemcpyAsync(r, rows_, sizeof(float) * row_cap_ * stride_, cudaMemcpyDeviceToDevice, cs(s)), "copy rows");
    check(cudaMemcpyAsync(k, row_keys_, sizeof(int64_t) * row_cap_, cudaMemcpyDeviceToDevice, cs(s)), "copy keys");
    if (st)
      check(cudaMemcpyAsync(st, state_, sizeof(float) * row_cap_ * state_stride_, cudaMemcpyDeviceToDevice, cs(s)),
            "copy state");
  }
  release(rows_, s);
  release(row_keys_, s);
  release(state_, s);
  rows_ = r;
  row_keys_ = k;
  state_ = st;
  row_cap_ = rows;
}

void CudaTable::grow_index(uint64_t slots, Stream s) {
  auto* ns = static_cast<Slot*>(alloc(sizeof(Slot) * (slots + 1), s, "key index"));
  fill_empty_slots(ns, slots + 1, s);
  if (slots_) rehash(slots_, mask_, ns, slots - 1, s);
  release(slots_, s);
  slots_ = ns;
  mask_ = slots - 1;
}

void CudaTable::ensure_room(int64_t n_new, Stream s) {
  auto fits = [&](int64_t need) {
    return need <= row_cap_ && static_cast<double>(need) <= kMaxLoad * static_cast<double>(mask_ + 1) &&
           (capacity_ == 0 || need <= capacity_);
  };
  if (fits(count_bound_ + n_new)) return;
  const int64_t need = static_cast<int64_t>(read_count(s)) + n_new;
  if (need > row_cap_) grow_rows(std::max<int64_t>(need, row_cap_ + row_cap_ / 2), s);
  if (static_cast<double>(need) > kMaxLoad * static_cast<double>(mask_ + 1)) grow_index(slots_for(need), s);
}

void CudaTable::insert(const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows, Stream s) {
  ensure_room(n, s);
  // With a capacity that this call might pass, know the count before and after
  // (two waits) and undo the inserts if it did.
  const bool may_overflow = capacity_ > 0 && count_bound_ + n > capacity_;
  const int64_t before = may_overflow ? read_count(s) : count_bound_;
  insert_keys(view(), keys, n, ids, init_rows, s);
  count_bound_ += n;
  if (!may_overflow) return;
  const int64_t after = read_count(s);
  if (after > capacity_) {
    rollback_inserts(view(), static_cast<uint32_t>(before), s);
    count_bound_ = before;
    throw TableFullError("table is full: " + std::to_string(before) + " rows + " + std::to_string(after - before) +
                         " new keys > capacity " + std::to_string(capacity_));
  }
}

int64_t CudaTable::size(Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  DeviceGuard g(device_);
  begin(s);
  const int64_t n = read_count(s);
  end(s);
  return n;
}

void CudaTable::lookup(const int64_t* keys, int64_t n, float* out, bool insert_missing, uint8_t* found, Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  DeviceGuard g(device_);
  begin(s);
  if (n > 0) {
    uint32_t* ids = nullptr;
    if (insert_missing) {
      ids = static_cast<uint32_t*>(scratch(sizeof(uint32_t) * n, s));
      insert(keys, n, ids, true, s);
    }
    gather_rows(view(), keys, ids, n, out, found, s);
  }
  end(s);
}

ArgProblem CudaTable::pooled_lookup(const int64_t* values, int64_t n, const int64_t* offsets, int64_t n_offsets,
                                    int64_t n_bags, bool include_last_offset, PoolMode mode, const float* weights,
                                    float* out, bool insert_missing, bool check_args, Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  DeviceGuard g(device_);
  begin(s);
  ArgProblem p;
  if (check_args) {
    check_offsets(offsets, n_offsets, n, include_last_offset, d_check_, s);
    const CheckResult r = read_check(s);
    if (r.code) {
      p.code = r.code;
      p.index = r.first_bad == INT64_MAX ? -1 : r.first_bad;
      end(s);
      return p;
    }
  }
  uint32_t* ids = nullptr;
  if (insert_missing && n > 0) {
    ids = static_cast<uint32_t*>(scratch(sizeof(uint32_t) * n, s));
    insert(values, n, ids, true, s);
  }
  pool_bags(view(), values, ids, n, offsets, n_offsets, n_bags, mode, weights, out, s);
  end(s);
  return p;
}

void CudaTable::assign(const int64_t* keys, int64_t n, const float* rows, Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  if (n > INT32_MAX) throw std::invalid_argument("keys: at most 2^31 - 1 keys per assign on the GPU");
  DeviceGuard g(device_);
  begin(s);
  if (n > 0) {
    ensure_room(n, s);  // before carving scratch: growth changes row_cap_
    const size_t ids_bytes = (sizeof(uint32_t) * n + 255) / 256 * 256;
    char* sc = static_cast<char*>(scratch(ids_bytes + sizeof(int32_t) * (row_cap_ + n), s));
    auto* ids = reinterpret_cast<uint32_t*>(sc);
    insert(keys, n, ids, false, s);
    assign_rows(view(), ids, n, rows, reinterpret_cast<int32_t*>(sc + ids_bytes), row_cap_, s);
  }
  end(s);
}

void CudaTable::export_rows(int64_t* keys, float* rows, int64_t n, Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  DeviceGuard g(device_);
  begin(s);
  const int64_t count = read_count(s);
  if (count != n)
    throw std::invalid_argument("export: the table holds " + std::to_string(count) + " rows, not " + std::to_string(n));
  if (n > 0) {
    // Collect (key, id) on the device, sort on the host (export is not a hot
    // path), then gather the rows in key order on the device.
    const size_t kb = (sizeof(int64_t) * n + 255) / 256 * 256, ib = (sizeof(uint32_t) * n + 255) / 256 * 256;
    char* sc = static_cast<char*>(scratch(kb + 2 * ib + 256, s));
    auto* d_keys = reinterpret_cast<int64_t*>(sc);
    auto* d_ids = reinterpret_cast<uint32_t*>(sc + kb);
    auto* d_n = reinterpret_cast<uint32_t*>(sc + kb + ib);
    auto* d_sorted = reinterpret_cast<uint32_t*>(sc + kb + ib + 256);
    collect_slots(view(), d_keys, d_ids, d_n, s);
    std::vector<int64_t> hk(n);
    std::vector<uint32_t> hi(n);
    check(cudaMemcpyAsync(hk.data(), d_keys, sizeof(int64_t) * n, cudaMemcpyDeviceToHost, cs(s)), "copy keys");
    check(cudaMemcpyAsync(hi.data(), d_ids, sizeof(uint32_t) * n, cudaMemcpyDeviceToHost, cs(s)), "copy ids");
    check(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize");
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return hk[a] < hk[b]; });
    std::vector<int64_t> sk(n);
    std::vector<uint32_t> si(n);
    for (int64_t i = 0; i < n; ++i) {
      sk[i] = hk[order[i]];
      si[i] = hi[order[i]];
    }
    check(cudaMemcpyAsync(keys, sk.data(), sizeof(int64_t) * n, cudaMemcpyHostToDevice, cs(s)), "copy sorted keys");
    check(cudaMemcpyAsync(d_sorted, si.data(), sizeof(uint32_t) * n, cudaMemcpyHostToDevice, cs(s)), "copy ids");
    gather_ids(view(), d_sorted, n, rows, s);
    // The host vectors are sources of async copies: wait before they go.
    check(cudaStreamSynchronize(cs(s)), "cudaStreamSynchronize");
  }
  end(s);
}

void CudaTable::apply_gradients(const int64_t* keys, int64_t n, const float* grads, const OptimSpec& o, Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  if (o.kind == OptimKind::kNone) throw std::invalid_argument("optimizer kind is none");
  if (n > INT32_MAX) throw std::invalid_argument("keys: at most 2^31 - 1 keys per update on the GPU");
  DeviceGuard g(device_);
  begin(s);
  // Validate everything before the first change, in the CPU engine's order:
  // finite gradients, known keys, matching optimizer state.
  const size_t ids_bytes = (sizeof(uint32_t) * n + 255) / 256 * 256;
  const size_t upd_bytes = update_scratch_bytes(n);
  char* sc = static_cast<char*>(scratch(ids_bytes + upd_bytes, s));
  auto* ids = reinterpret_cast<uint32_t*>(sc);
  const TableView t0 = view();
  check_gradients(t0, keys, n, grads, ids, d_check_, s);
  const CheckResult r = read_check(s);
  if (r.first_bad != INT64_MAX) {
    end(s);
    throw std::invalid_argument("grads: row " + std::to_string(r.first_bad) +
                                " holds NaN or inf; non-finite gradients are rejected and nothing was updated");
  }
  if (r.first_missing != INT64_MAX) {
    int64_t key = 0;
    check(cudaMemcpy(&key, keys + r.first_missing, sizeof(int64_t), cudaMemcpyDeviceToHost), "copy key");
    end(s);
    throw KeyMissingError("keys: key " + std::to_string(key) + " (position " + std::to_string(r.first_missing) +
                          ") is not in the table; look keys up (which inserts them) before applying gradients");
  }
  if (state_kind_ != OptimKind::kNone && state_kind_ != o.kind) {
    end(s);
    throw std::invalid_argument(std::string("optimizer: this table's optimizer state belongs to ") +
                                optim_name(state_kind_) + ", cannot apply " + optim_name(o.kind));
  }
  if (state_kind_ == OptimKind::kNone) {
    const int64_t nf = state_floats(o.kind, dim_);
    if (nf) {
      auto* st = static_cast<float*>(alloc(sizeof(float) * row_cap_ * nf, s, "optimizer state"));
      fill_floats(st, row_cap_ * nf, initial_state_value(o), s);
      state_ = st;
    }
    state_stride_ = nf;
    state_init_ = initial_state_value(o);
    state_kind_ = o.kind;
  }
  ++step_;
  const StepScalars c = step_scalars(o, step_);
  int bits = 1;
  while (bits < 32 && (int64_t(1) << bits) < row_cap_) ++bits;
  update_rows(view(), ids, n, grads, o, c, sc + ids_bytes, upd_bytes, bits, s);
  end(s);
}

CudaMemory CudaTable::memory(Stream s) {
  std::lock_guard<std::mutex> lk(mu_);
  DeviceGuard g(device_);
  begin(s);
  read_count(s);
  end(s);
  CudaMemory m;
  m.index_bytes = sizeof(Slot) * (mask_ + 2);
  m.row_bytes = sizeof(float) * row_cap_ * stride_;
  m.state_bytes = sizeof(float) * row_cap_ * state_stride_;
  m.metadata_bytes = sizeof(int64_t) * row_cap_;
  m.rows = static_cast<size_t>(count_bound_);
  m.row_capacity = static_cast<size_t>(row_cap_);
  return m;
}

}  // namespace cuda
}  // namespace embedlookup
