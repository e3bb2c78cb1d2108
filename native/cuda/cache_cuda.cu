// Kernels of the cached table: rows live in host memory (pinned, mapped into
// the device's address space, read and written over the bus: zero-copy) and
// hot rows in HBM slots. The host-side policy decides which rows have a slot
// and hands each batch position its location: slot_of[i] >= 0 reads HBM slot
// slot_of[i]; otherwise host_row[i] >= 0 reads that host row; otherwise the
// key has no row (a zero row, as the CPU engine's missing keys read).
//
// Pooling: one warp per bag (warp_pool.cuh), rows accumulated in bag order. The update merges a row's gradients in position
// order (the host sorted them into segments) and applies one optimizer step
// where the row is (HBM slot or host row), so no atomics touch host memory.
#include "kernels_cuda.h"
#include "launch.cuh"
#include "warp_pool.cuh"

namespace embedlookup {
namespace cuda {

namespace {

__device__ __forceinline__ const float* row_at(const CachedView& v, int32_t slot, int64_t host_row) {
  if (slot >= 0) return v.hbm + int64_t(slot) * v.stride;
  if (host_row >= 0) return v.host + host_row * v.stride;
  return nullptr;
}

struct CachedPoolArgs {
  CachedView v;
  const int32_t* slot_of;
  const int64_t* host_row;
  int64_t n;
  const int64_t* off;
  int64_t n_off, n_bags;
  PoolMode mode;
  const float* weights;
  float* out;
};

__global__ void __launch_bounds__(kThreads) cached_pool_kernel(CachedPoolArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  if (b >= a.n_bags) return;
  const int64_t j0 = int64_t(blockIdx.y) * 32 * kRawColsPerLane + lane;
  warp_pool_bag<kRawColsPerLane>(
      b, lane, j0, a.off, a.n_off, a.n, a.v.dim, a.mode, a.weights, a.out,
      [&](int64_t p) -> const void* { return row_at(a.v, a.slot_of[p], a.host_row[p]); },
      // plain loads, not __ldg: host rows and slots are written by updates between calls
      [](const void* row, int64_t j) { return static_cast<const float*>(row)[j]; });
}

__global__ void cached_gather_kernel(CachedView v, const int32_t* slot_of, const int64_t* host_row, int64_t n,
                                     float* out) {
  EL_GRID_STRIDE(t, n * v.dim) {
    const int64_t i = t / v.dim, j = t - i * v.dim;
    const float* row = row_at(v, slot_of[i], host_row[i]);
    out[t] = row ? row[j] : 0.0f;
  }
}

// One thread per (row, float) of rows and state: slot <-> host row.
__global__ void cached_move_kernel(CachedView v, const int32_t* slots, const int64_t* host_rows, int64_t n,
                                   bool to_host) {
  const int64_t per = v.stride + v.state_stride;
  EL_GRID_STRIDE(t, n * per) {
    const int64_t i = t / per, j = t - i * per;
    const int64_t s = slots[i], h = host_rows[i];
    if (j < v.stride) {
      float* hbm = v.hbm + s * v.stride + j;
      float* host = v.host + h * v.stride + j;
      if (to_host) *host = *hbm;
      else *hbm = *host;
    } else {
      const int64_t k = j - v.stride;
      float* hbm = v.hbm_state + s * v.state_stride + k;
      float* host = v.host_state + h * v.state_stride + k;
      if (to_host) *host = *hbm;
      else *hbm = *host;
    }
  }
}

struct CachedUpdateArgs {
  CachedView v;
  const int32_t* loc_slot;
  const int64_t* loc_host;
  int64_t n_loc;
  const int64_t* seg;   // n_loc + 1 bounds into perm
  const int64_t* perm;  // positions, ascending within a segment
  const float* grads;   // positions x dim
  OptimSpec o;
  StepScalars c;
};

// One warp per distinct row; lane l owns columns l, l + 32, ...
__global__ void __launch_bounds__(kThreads) cached_update_kernel(CachedUpdateArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t u = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  if (u >= a.n_loc) return;
  const CachedView& v = a.v;
  const int32_t slot = a.loc_slot[u];
  const int64_t hr = a.loc_host[u];
  if (slot < 0 && hr < 0) return;  // no row: nothing to update
  float* w = slot >= 0 ? v.hbm + int64_t(slot) * v.stride : v.host + hr * v.stride;
  float* st = nullptr;
  if (v.state_stride > 0) st = slot >= 0 ? v.hbm_state + int64_t(slot) * v.state_stride : v.host_state + hr * v.state_stride;
  const int64_t dim = v.dim;
  float sq = 0.0f;
  for (int64_t j0 = 0; j0 < dim; j0 += 32) {
    const int64_t j = j0 + lane;
    if (j >= dim) continue;
    float g = 0.0f;
    for (int64_t p = a.seg[u]; p < a.seg[u + 1]; ++p) g += a.grads[a.perm[p] * dim + j];
    if (a.o.weight_decay != 0.0f) g = decayed_grad(a.o, g, w[j]);
    switch (a.o.kind) {
      case OptimKind::kSGD: sgd_elem(a.c, w[j], g); break;
      case OptimKind::kAdagrad: adagrad_elem(a.o, a.c, w[j], st[j], g); break;
      case OptimKind::kAdam: adam_elem(a.o, a.c, w[j], st[j], st[dim + j], g); break;
      default: sq += g * g; break;  // row-wise Adagrad: second pass below
    }
  }
  if (a.o.kind != OptimKind::kRowWiseAdagrad) return;
  for (int off = 16; off > 0; off >>= 1) sq += __shfl_xor_sync(kFullMask, sq, off);
  // Every lane computes the scale from the same sum; lane 0 stores the state.
  float acc = st[0];
  const float scale = rowwise_adagrad_scale(a.o, a.c, acc, sq, dim);
  __syncwarp();
  if (lane == 0) st[0] = acc;
  for (int64_t j = lane; j < dim; j += 32) {
    float g = 0.0f;
    for (int64_t p = a.seg[u]; p < a.seg[u + 1]; ++p) g += a.grads[a.perm[p] * dim + j];
    if (a.o.weight_decay != 0.0f) g = decayed_grad(a.o, g, w[j]);
    w[j] -= scale * g;
  }
}

}  // namespace

void cached_pool(const CachedView& v, const int32_t* slot_of, const int64_t* host_row, int64_t n,
                 const int64_t* offsets, int64_t n_offsets, int64_t n_bags, PoolMode mode, const float* weights,
                 float* out, Stream s) {
  if (n_bags == 0) return;
  const CachedPoolArgs a{v, slot_of, host_row, n, offsets, n_offsets, n_bags, mode,
                         mode == PoolMode::kSum ? weights : nullptr, out};
  const int64_t cols_per_block = 32 * kRawColsPerLane;
  const dim3 grid(static_cast<unsigned>((n_bags + kWarpsPerBlock - 1) / kWarpsPerBlock),
                  static_cast<unsigned>((v.dim + cols_per_block - 1) / cols_per_block));
  cached_pool_kernel<<<grid, kThreads, 0, s>>>(a);
  check_launch("cached_pool");
}

void cached_gather(const CachedView& v, const int32_t* slot_of, const int64_t* host_row, int64_t n, float* out,
                   Stream s) {
  if (n == 0) return;
  cached_gather_kernel<<<grid_for(n * v.dim), kThreads, 0, s>>>(v, slot_of, host_row, n, out);
  check_launch("cached_gather");
}

void cached_move(const CachedView& v, const int32_t* slots, const int64_t* host_rows, int64_t n, bool to_host,
                 Stream s) {
  if (n == 0) return;
  cached_move_kernel<<<grid_for(n * (v.stride + v.state_stride)), kThreads, 0, s>>>(v, slots, host_rows, n, to_host);
  check_launch("cached_move");
}

void cached_update(const CachedView& v, const int32_t* loc_slot, const int64_t* loc_host, int64_t n_loc,
                   const int64_t* seg, const int64_t* perm, const float* grads, const OptimSpec& o,
                   const StepScalars& c, Stream s) {
  if (n_loc == 0) return;
  const CachedUpdateArgs a{v, loc_slot, loc_host, n_loc, seg, perm, grads, o, c};
  cached_update_kernel<<<static_cast<unsigned>((n_loc + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, s>>>(a);
  check_launch("cached_update");
}

}  // namespace cuda
}  // namespace embedlookup
