// Pooled lookup over rows stored in a compressed storage type (fp16, bf16,
// int8 / int4 row-wise with scale and bias; fp32 too), read as raw bytes and
// decoded in registers: no fp32 copy of a row is ever written.
//
// One warp per bag (warp_pool.cuh): rows accumulated in bag order, the CPU
// engine's order, and every decode is
// exact or a separately rounded multiply then add (__fmul_rn / __fadd_rn: no
// contraction into an FMA), so results equal the CPU engine pooling the
// dequantized rows, bit for bit (weighted sums: to an FMA's rounding).
#include <cuda_fp16.h>

#include "kernels_cuda.h"
#include "launch.cuh"
#include "warp_pool.cuh"

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
  warp_pool_bag<kRawColsPerLane>(
      b, lane, j0, a.off, a.n_off, a.n, dim, a.mode, a.weights, a.out,
      [&](int64_t p) -> const void* {
        const int64_t id = a.ids[p];  // negative or out of range: missing (the host maps absent keys to -1)
        return id >= 0 && id < a.r.n_rows ? a.r.rows + id * a.r.row_bytes : nullptr;
      },
      [&](const void* row, int64_t j) { return decode<K>(static_cast<const uint8_t*>(row), j, dim); });
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
