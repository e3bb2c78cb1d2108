// CPU kernels over the table's rows. Each kernel is compiled twice (AVX2+FMA
// and baseline x86-64) from kernels_cpu.inl; the entry points below pick the
// build the running CPU supports.
#pragma once
#include <cstdint>

#include "../structures/row_arena.h"
#include "../structures/row_seqlock.h"
#include "embedlookup/optimizer.h"
#include "embedlookup/options.h"  // GradSource
#include "embedlookup/pooling.h"

namespace embedlookup {

class KeyIndex;

// What a kernel needs to read a row consistently.
struct RowView {
  const RowArena* arena;
  const RowSeqlock* seq;
  const float* zero_row;  // stands in for missing keys (id == kNoRow)
};

namespace cpu {

// Distance (in key positions) at which rows are prefetched ahead of use.
constexpr int64_t kPrefetchAhead = 16;
// The fp32 pooled kernel, once a chunk's row ids are known, prefetches each
// row on two levels: into L2 kL2Ahead positions ahead, into L1 kL1Ahead ahead.
// One core has few L1 miss buffers and more L2 ones, so L1 prefetches alone
// stall a random gather on the first (measured 35 -> 19 ns per 256 B row;
// native/bench/experiments/gather_prefetch.cpp).
constexpr int64_t kL1Ahead = 32;
constexpr int64_t kL2Ahead = 80;
// The index pass of the same kernel: buckets into L2 this far ahead (into L1
// kPrefetchAhead ahead).
constexpr int64_t kIndexL2Ahead = 64;
// Extra distance at which index buckets are prefetched ahead of their probe.
constexpr int64_t kProbeAhead = 48;
// Key positions per unit of parallel work.
constexpr int64_t kChunkKeys = 4096;

bool has_avx2();
const char* isa_name();

// Both resolve keys through the index inside the kernel (ids[] receives the
// row ids, kNoRow for missing keys, which read as zero rows) and return the
// number of missing keys. pool_bags (and pool_bags_quantized) with keys ==
// nullptr read ids[] as already resolved instead: no index line per key, only
// the rows (EmbeddingTable::pooled_lookup_resolved; the caller vouches that
// every id is kNoRow or a live row of this layout).
int64_t pool_bags(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n,
                  const int64_t* offsets, int64_t n_offsets, int64_t n_bags, int64_t dim, PoolMode mode,
                  const float* weights, float* out, int nthreads);
int64_t gather_rows(const RowView& v, const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n,
                    int64_t dim, float* out, uint8_t* found, int nthreads);
// The kernels' index pass alone: ids[i] = the row of keys[i] (kNoRow when
// missing; returns how many), buckets prefetched on two levels.
int64_t resolve_keys(const KeyIndex& index, const int64_t* keys, uint32_t* ids, int64_t n, int nthreads);

// One pass over a gradient matrix (rows x dim, row stride `stride`): the
// first row holding NaN or inf (-1 when none) and the largest |element| of
// the rows before it (0 when empty).
struct GradScan {
  int64_t first_non_finite;
  float max_abs;
};
GradScan scan_grads(const float* a, int64_t rows, int64_t dim, int64_t stride, int nthreads);
// Sum of |x[i]| over n floats (double precision).
double sum_abs(const float* x, int64_t n, int nthreads);
// EmbeddingBag over a dense matrix: bag b pools rows[idx[j]] (row stride
// `stride`) for j in [offsets[b], offsets[b+1]) (the last bag ends at n),
// weighted by weights[j] when given; an empty bag is zeros. The caller checks
// the indices and offsets. The parameter-server client pools its cached rows
// with it.
void pool_rows(const float* rows, int64_t stride, const int64_t* idx, int64_t n, const int64_t* offsets,
               int64_t n_bags, int64_t dim, PoolMode mode, const float* weights, float* out, int nthreads);

}  // namespace cpu
}  // namespace embedlookup
