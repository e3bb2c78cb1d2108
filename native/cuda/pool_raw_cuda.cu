// Pooled lookup over rows stored in a compressed storage type (fp16, bf16,
// int8 / int4 row-wise with scale and bias; fp32 too), read as raw bytes and
// decoded in registers: no fp32 copy of a row is ever written.
//
// One warp per bag; lane l owns columns l, l + 32, ... of the output. The
// bag's row ids are read 32 at a time (one per lane) and broadcast; rows are
// accumulated in bag order, the CPU engine's order, and every decode is
// exact or a separately rounded multiply then add (__fmul_rn / __fadd_rn: no
// contraction into an FMA), so results equal the CPU engine pooling the
// dequantized rows, bit for bit (weighted sums: to an FMA's rounding).
#include <cuda_fp16.h>

#include "kernels_cuda.h"
#include "launch.cuh"

namespace embedlookup {
namespace cuda {

namespace {

struct RawPoolArgs {
  RawRowsView r;
  const int64_t* ids;
  int64_t n;
  const int64_t* off;
  int64_t n_off, n_bags;
  PoolMode mode;
  const float* weights;
  float* out;
};

// Element j of a row (row points at its first byte; rows are 4-byte aligned).
template <RowKind K>
__device__ __forceinline__ float decode(const uint8_t* row, int64_t j, int64_t dim) {
  if (K == RowKind::kFp32) {
    return __ldg(reinterpret_cast<const float*>(row) + j);
  } else if (K == RowKind::kFp16) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(row) + j)));
  } else if (K == RowKind::kBf16) {
    return __uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(row) + j)) << 16);
  } else {
    const int64_t tail = K == RowKind::kInt8 ? (dim + 3) / 4 * 4 : (dim / 2 + 3) / 4 * 4;
    const float scale = __ldg(reinterpret_cast<const float*>(row + tail));
    const float bias = __ldg(reinterpret_cast<const float*>(row + tail) + 1);
    uint32_t code;
    if (K == RowKind::kInt8) {
      code = __ldg(row + j);
    } else {
      code = (static_cast<uint32_t>(__ldg(row + (j >> 1))) >> ((j & 1) * 4)) & 15u;
    }
    return __fadd_rn(__fmul_rn(static_cast<float>(code), scale), bias);
  }
}

template <RowKind K>
__global__ void __launch_bounds__(kThreads) pool_raw_kernel(RawPoolArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  if (b >= a.n_bags) return;  // whole warps leave together
  const int64_t dim = a.r.dim;
  const int64_t j0 = int64_t(blockIdx.y) * 32 * kRawColsPerLane + lane;  // this lane's first column
  const int64_t s = clamp64(a.off[b], 0, a.n);
  const int64_t e = clamp64(b + 1 < a.n_off ? a.off[b + 1] : a.n, s, a.n);
  const bool is_max = a.mode == PoolMode::kMax;
  float acc[kRawColsPerLane];
#pragma unroll
  for (int c = 0; c < kRawColsPerLane; ++c) acc[c] = is_max ? -INFINITY : 0.0f;
  for (int64_t p0 = s; p0 < e; p0 += 32) {
    const int cnt = static_cast<int>(e - p0 < 32 ? e - p0 : 32);
    int64_t my_id = -1;
    float my_w = 1.0f;
    if (lane < cnt) {
      my_id = a.ids[p0 + lane];
      if (my_id >= a.r.n_rows) my_id = -1;  // out of range: missing (the host maps absent keys to -1)
      if (a.weights) my_w = a.weights[p0 + lane];
    }
    for (int k = 0; k < cnt; ++k) {
      const int64_t id = __shfl_sync(kFullMask, my_id, k);
      const float w = __shfl_sync(kFullMask, my_w, k);
      const uint8_t* row = a.r.rows + id * a.r.row_bytes;
#pragma unroll
      for (int c = 0; c < kRawColsPerLane; ++c) {
        const int64_t j = j0 + 32 * c;
        const float x = (id >= 0 && j < dim) ? decode<K>(row, j, dim) : 0.0f;  // missing: a zero row
        if (is_max) acc[c] = x > acc[c] ? x : acc[c];
        else if (a.weights) acc[c] += w * x;
        else acc[c] += x;
      }
    }
  }
  const float scale = (a.mode == PoolMode::kMean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
#pragma unroll
  for (int c = 0; c < kRawColsPerLane; ++c) {
    const int64_t j = j0 + 32 * c;
    if (j >= dim) continue;
    float v = acc[c];
    if (e == s) v = 0.0f;
    else if (a.mode == PoolMode::kMean) v = v * scale;
    a.out[b * dim + j] = v;
  }
}

template <RowKind K>
void launch_raw(const RawPoolArgs& a, Stream s) {
  const int64_t cols_per_block = 32 * kRawColsPerLane;
  const dim3 grid(static_cast<unsigned>((a.n_bags + kWarpsPerBlock - 1) / kWarpsPerBlock),
                  static_cast<unsigned>((a.r.dim + cols_per_block - 1) / cols_per_block));
  pool_raw_kernel<K><<<grid, kThreads, 0, s>>>(a);
}

}  // namespace

void pool_raw_rows(const RawRowsView& r, const int64_t* ids, int64_t n, const int64_t* offsets, int64_t n_offsets,
                   int64_t n_bags, PoolMode mode, const float* weights, float* out, Stream s) {
  if (n_bags == 0) return;
  const RawPoolArgs a{r, ids, n, offsets, n_offsets, n_bags, mode, mode == PoolMode::kSum ? weights : nullptr, out};
  switch (r.kind) {
    case RowKind::kFp32: launch_raw<RowKind::kFp32>(a, s); break;
    case RowKind::kFp16: launch_raw<RowKind::kFp16>(a, s); break;
    case RowKind::kBf16: launch_raw<RowKind::kBf16>(a, s); break;
    case RowKind::kInt8: launch_raw<RowKind::kInt8>(a, s); break;
    case RowKind::kInt4: launch_raw<RowKind::kInt4>(a, s); break;
    default: throw std::invalid_argument("pool_raw_rows: unknown row kind");
  }
  check_launch("pool_raw_rows");
}

}  // namespace cuda
}  // namespace embedlookup
