// Pooled lookup (EmbeddingBag) and plain row gather.
//
// One warp per bag. The warp's lanes resolve up to 32 of the bag's keys at
// once (32 independent index probes in flight), then walk the resolved rows in
// bag order, each lane owning NC float2 columns of a 64*NC-float segment of
// the row; U rows are loaded before the first is accumulated, so every warp
// keeps U*NC*256 bytes of row reads in flight. Rows are accumulated in bag
// order, as the CPU kernel does, so sums round the same way.
#include "device_index.cuh"
#include "kernels_cuda.h"
#include "launch.cuh"

namespace embedlookup {
namespace cuda {

namespace {

struct PoolArgs {
  TableView t;
  const int64_t* keys;
  const uint32_t* ids;
  int64_t n;
  const int64_t* off;
  int64_t n_off, n_bags;
  PoolMode mode;
  const float* weights;
  float* out;
};

// Row id of position p (lane-local), resolving through the index when needed.
__device__ __forceinline__ uint32_t resolve(const TableView& t, const int64_t* keys, const uint32_t* ids, int64_t p) {
  const uint32_t id = ids ? ids[p] : kNoRow;
  return id != kNoRow ? id : find_row(IndexView{t.slots, t.mask}, keys[p]);
}

template <int NC>
__global__ void __launch_bounds__(kThreads) pool_kernel(PoolArgs a) {
  constexpr int U = NC >= 8 ? 1 : 8 / NC;
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  if (b >= a.n_bags) return;  // whole warps leave together
  const TableView& t = a.t;
  const int64_t col0 = int64_t(blockIdx.y) * 64 * NC;  // first float of this warp's segment
  const int64_t s = clamp64(a.off[b], 0, a.n);
  const int64_t e = clamp64(b + 1 < a.n_off ? a.off[b + 1] : a.n, s, a.n);
  const bool is_max = a.mode == PoolMode::kMax;
  const float init = is_max ? -INFINITY : 0.0f;
  float2 acc[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) acc[c] = make_float2(init, init);
  bool in_row[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) in_row[c] = col0 + 2 * (lane + 32 * c) < t.stride;

  for (int64_t p0 = s; p0 < e; p0 += 32) {
    const int cnt = static_cast<int>(e - p0 < 32 ? e - p0 : 32);
    uint32_t my_id = kNoRow;
    float my_w = 1.0f;
    if (lane < cnt) {
      my_id = resolve(t, a.keys, a.ids, p0 + lane);
      if (a.weights) my_w = a.weights[p0 + lane];
    }
    for (int k0 = 0; k0 < cnt; k0 += U) {
      float2 r[U][NC];
      float w[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int k = k0 + u;
        const uint32_t id = __shfl_sync(kFullMask, my_id, k & 31);
        w[u] = __shfl_sync(kFullMask, my_w, k & 31);
        const bool real = k < cnt && id != kNoRow;  // missing keys read as zero rows
        const float2* row = reinterpret_cast<const float2*>(t.rows + int64_t(id) * t.stride + col0);
#pragma unroll
        for (int c = 0; c < NC; ++c) r[u][c] = (real && in_row[c]) ? __ldg(row + lane + 32 * c) : make_float2(0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (k0 + u >= cnt) break;
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          if (is_max) {
            acc[c].x = r[u][c].x > acc[c].x ? r[u][c].x : acc[c].x;
            acc[c].y = r[u][c].y > acc[c].y ? r[u][c].y : acc[c].y;
          } else if (a.weights) {
            acc[c].x += w[u] * r[u][c].x;
            acc[c].y += w[u] * r[u][c].y;
          } else {
            acc[c].x += r[u][c].x;
            acc[c].y += r[u][c].y;
          }
        }
      }
    }
  }
  const float scale = (a.mode == PoolMode::kMean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
  float* o = a.out + b * t.dim;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int64_t j = col0 + 2 * (lane + 32 * c);
    float2 v = acc[c];
    if (e == s) v = make_float2(0.f, 0.f);
    else if (a.mode == PoolMode::kMean) v = make_float2(v.x * scale, v.y * scale);
    if (j < t.dim) o[j] = v.x;
    if (j + 1 < t.dim) o[j + 1] = v.y;
  }
}

// One warp per 32 consecutive keys: probes in parallel, then copies the rows
// (8 in flight) to out.
__global__ void __launch_bounds__(kThreads) gather_kernel(TableView t, const int64_t* keys, const uint32_t* ids,
                                                          int64_t n, float* out, uint8_t* found) {
  constexpr int U = 8;
  const int lane = threadIdx.x & 31;
  const int64_t p0 = (blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5)) * 32;
  if (p0 >= n) return;
  const int cnt = static_cast<int>(n - p0 < 32 ? n - p0 : 32);
  const uint32_t my_id = lane < cnt ? resolve(t, keys, ids, p0 + lane) : kNoRow;
  if (found && lane < cnt) found[p0 + lane] = my_id != kNoRow;
  for (int k0 = 0; k0 < cnt; k0 += U) {
    uint32_t id[U];
#pragma unroll
    for (int u = 0; u < U; ++u) id[u] = __shfl_sync(kFullMask, my_id, (k0 + u) & 31);
    for (int64_t j = lane; j < t.dim; j += 32) {
      float v[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        v[u] = (k0 + u < cnt && id[u] != kNoRow) ? __ldg(t.rows + int64_t(id[u]) * t.stride + j) : 0.0f;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (k0 + u < cnt) out[(p0 + k0 + u) * t.dim + j] = v[u];
    }
  }
}

__global__ void reset_check_kernel(CheckResult* r) {
  r->first_bad = INT64_MAX;
  r->first_missing = INT64_MAX;
  r->code = 0;
  r->unused = 0;
}

__global__ void check_offsets_kernel(const int64_t* off, int64_t n_off, int64_t n, bool include_last, CheckResult* r) {
  EL_GRID_STRIDE(i, n_off) {
    int32_t code = 0;
    if (i == 0 && off[0] != 0) code |= kOffsetsFirstNotZero;
    if (i > 0 && off[i] < off[i - 1]) {
      code |= kOffsetsDecreasing;
      atomicMin(reinterpret_cast<long long*>(&r->first_bad), static_cast<long long>(i));
    }
    if (i == n_off - 1) {
      if (off[i] > n) code |= kOffsetsPastEnd;
      if (include_last && off[i] != n) code |= kOffsetsLastNotEnd;
    }
    if (code) atomicOr(&r->code, code);
  }
}

template <int NC>
void launch_pool(const PoolArgs& a, Stream s) {
  const dim3 grid(static_cast<unsigned>((a.n_bags + kWarpsPerBlock - 1) / kWarpsPerBlock),
                  static_cast<unsigned>((a.t.stride + 64 * NC - 1) / (64 * NC)));
  pool_kernel<NC><<<grid, kThreads, 0, s>>>(a);
}

}  // namespace

void pool_bags(const TableView& t, const int64_t* keys, const uint32_t* ids, int64_t n, const int64_t* offsets,
               int64_t n_offsets, int64_t n_bags, PoolMode mode, const float* weights, float* out, Stream s) {
  if (n_bags == 0) return;
  const PoolArgs a{t, keys, ids, n, offsets, n_offsets, n_bags, mode, mode == PoolMode::kSum ? weights : nullptr, out};
  // Chunks per lane: the smallest of 1/2/4/8 covering the row, longer rows in
  // 512-float segments (grid.y).
  if (t.stride <= 64) launch_pool<1>(a, s);
  else if (t.stride <= 128) launch_pool<2>(a, s);
  else if (t.stride <= 256) launch_pool<4>(a, s);
  else launch_pool<8>(a, s);
  check_launch("pool_bags");
}

void gather_rows(const TableView& t, const int64_t* keys, const uint32_t* ids, int64_t n, float* out,
                 uint8_t* found, Stream s) {
  if (n == 0) return;
  const int64_t warps = (n + 31) / 32;
  gather_kernel<<<static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, s>>>(
      t, keys, ids, n, out, found);
  check_launch("gather_rows");
}

void reset_check(CheckResult* r, Stream s) {
  reset_check_kernel<<<1, 1, 0, s>>>(r);
  check_launch("reset_check");
}

void check_offsets(const int64_t* offsets, int64_t n_offsets, int64_t n, bool include_last_offset, CheckResult* r,
                   Stream s) {
  reset_check(r, s);
  if (n_offsets > 0) check_offsets_kernel<<<grid_for(n_offsets), kThreads, 0, s>>>(offsets, n_offsets, n,
                                                                                 include_last_offset, r);
  check_launch("check_offsets");
}

}  // namespace cuda
}  // namespace embedlookup
