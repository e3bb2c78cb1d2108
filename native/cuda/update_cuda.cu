// Backward: argument checks, duplicate merging and the fused optimizer step.
//
// Positions are sorted by row id with a stable radix sort, so each distinct
// row's occurrences stay in position order; one warp per distinct row sums its
// gradients in that order (the CPU engine's order) and applies the per-element
// steps of optimizer.h across its lanes.
#include <cub/device/device_radix_sort.cuh>

#include "device_index.cuh"
#include "kernels_cuda.h"
#include "launch.cuh"

namespace embedlookup {
namespace cuda {

namespace {

__global__ void check_gradients_kernel(TableView t, const int64_t* keys, int64_t n, const float* grads, uint32_t* ids,
                                       CheckResult* r) {
  const IndexView ix{t.slots, t.mask};
  EL_GRID_STRIDE(i, n) {
    const uint32_t id = find_row(ix, keys[i]);
    ids[i] = id;
    if (id == kNoRow) atomicMin(reinterpret_cast<long long*>(&r->first_missing), static_cast<long long>(i));
  }
  EL_GRID_STRIDE(e, n * t.dim) {
    if (!isfinite(grads[e])) atomicMin(reinterpret_cast<long long*>(&r->first_bad), static_cast<long long>(e / t.dim));
  }
}

__global__ void iota_kernel(uint32_t* p, int64_t n) {
  EL_GRID_STRIDE(i, n) p[i] = static_cast<uint32_t>(i);
}

__global__ void __launch_bounds__(kThreads) update_kernel(TableView t, const uint32_t* sorted_ids,
                                                          const uint32_t* pos, int64_t n, const float* grads,
                                                          OptimSpec o, StepScalars c) {
  const int lane = threadIdx.x & 31;
  const int64_t i = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  if (i >= n) return;
  const uint32_t id = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == id) return;  // not the first occurrence: its group's head handles it
  int64_t end = i + 1;
  while (end < n && sorted_ids[end] == id) ++end;
  const int64_t dim = t.dim;
  float* w = t.rows + int64_t(id) * t.stride;
  float* st = t.state ? t.state + int64_t(id) * t.state_stride : nullptr;
  // Merged (and weight-decayed) gradient of element j.
  auto grad = [&](int64_t j) {
    float g = 0.0f;
    for (int64_t k = i; k < end; ++k) g += grads[int64_t(pos[k]) * dim + j];
    return o.weight_decay != 0.0f ? decayed_grad(o, g, w[j]) : g;
  };
  switch (o.kind) {
    case OptimKind::kSGD:
      for (int64_t j = lane; j < dim; j += 32) sgd_elem(c, w[j], grad(j));
      break;
    case OptimKind::kAdagrad:
      for (int64_t j = lane; j < dim; j += 32) adagrad_elem(o, c, w[j], st[j], grad(j));
      break;
    case OptimKind::kAdam:
      for (int64_t j = lane; j < dim; j += 32) adam_elem(o, c, w[j], st[j], st[dim + j], grad(j));
      break;
    case OptimKind::kRowWiseAdagrad: {
      // The step size needs the whole row's sum of squares first; the merged
      // gradient is recomputed in the second pass (same order, same value).
      float sq = 0.0f;
      for (int64_t j = lane; j < dim; j += 32) {
        const float g = grad(j);
        sq += g * g;
      }
      for (int off = 16; off > 0; off >>= 1) sq += __shfl_xor_sync(kFullMask, sq, off);
      float scale = 0.0f;
      if (lane == 0) scale = rowwise_adagrad_scale(o, c, st[0], sq, dim);
      scale = __shfl_sync(kFullMask, scale, 0);
      for (int64_t j = lane; j < dim; j += 32) w[j] -= scale * grad(j);
      break;
    }
    default:
      break;
  }
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

size_t sort_temp_bytes(int n) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr), n, 0, 32);
  return bytes;
}

}  // namespace

void check_gradients(const TableView& t, const int64_t* keys, int64_t n, const float* grads, uint32_t* ids,
                     CheckResult* r, Stream s) {
  reset_check(r, s);
  if (n == 0) return;
  check_gradients_kernel<<<grid_for(n * t.dim), kThreads, 0, s>>>(t, keys, n, grads, ids, r);
  check_launch("check_gradients");
}

size_t update_scratch_bytes(int64_t n) {
  return 3 * align256(sizeof(uint32_t) * n) + align256(sort_temp_bytes(static_cast<int>(n)));
}

void update_rows(const TableView& t, const uint32_t* ids, int64_t n, const float* grads, const OptimSpec& o,
                 const StepScalars& c, void* scratch, size_t scratch_bytes, int row_bits, Stream s) {
  if (n == 0) return;
  char* p = static_cast<char*>(scratch);
  const size_t a = align256(sizeof(uint32_t) * n);
  auto* sorted_ids = reinterpret_cast<uint32_t*>(p);
  auto* pos_in = reinterpret_cast<uint32_t*>(p + a);
  auto* pos = reinterpret_cast<uint32_t*>(p + 2 * a);
  void* temp = p + 3 * a;
  size_t temp_bytes = scratch_bytes - 3 * a;
  iota_kernel<<<grid_for(n), kThreads, 0, s>>>(pos_in, n);
  const cudaError_t e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids, sorted_ids, pos_in, pos,
                                                        static_cast<int>(n), 0, row_bits, s);
  if (e != cudaSuccess) throw std::runtime_error(std::string("update_rows: radix sort: ") + cudaGetErrorString(e));
  update_kernel<<<static_cast<unsigned>((n + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, s>>>(
      t, sorted_ids, pos, n, grads, o, c);
  check_launch("update_rows");
}

}  // namespace cuda
}  // namespace embedlookup
