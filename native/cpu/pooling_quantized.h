// CPU kernels over compressed rows (fp16, bf16, int8, int4: row_codec.h).
// Like the fp32 kernels, the bodies (pooling_quantized.inl) are compiled for
// AVX2+FMA+F16C and for baseline x86-64 and chosen at run time. Rows are
// dequantized in registers, 8 elements at a time; no fp32 copy of a row is
// ever written. Training on fp16 / bf16 rows (fused_update_quantized) rounds
// stochastically, deterministically per (key, step, seed, element).
#pragma once
#include <cstdint>

#include "embedlookup/row_codec.h"
#include "kernels_cpu.h"

namespace embedlookup {

class KeyIndex;

namespace cpu {

bool has_avx2_f16c();
// "avx2" or "generic": the build the compressed-row kernels dispatch to.
const char* quantized_isa_name();

// pool_bags / gather_rows of kernels_cpu.h for a table of row type t != fp32
// (the arena's rows are row_bytes(t, dim) bytes; the zero row is all-zero
// bytes). Same contract: ids[] receives the row ids, missing keys read zero
// rows, returns the number of missing keys.
int64_t pool_bags_quantized(const RowView& v, RowType t, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                            int64_t n, const int64_t* offsets, int64_t n_offsets, int64_t n_bags, int64_t dim,
                            PoolMode mode, const float* weights, float* out, int nthreads);
int64_t gather_rows_quantized(const RowView& v, RowType t, const KeyIndex& index, const int64_t* keys, uint32_t* ids,
                              int64_t n, int64_t dim, float* out, uint8_t* found, int nthreads);

// The fused sparse update of update_cpu.h for fp16 / bf16 rows: duplicates
// summed in ascending position order, each distinct row decoded to fp32, one
// optimizer step (state in fp32, in `state`), and stored back with stochastic
// rounding whose bits come from sr_row_hash(row_keys[id], step, seed) and the
// element index. Deterministic for any thread count.
void fused_update_quantized(const RowView& v, RowType t, RowArena* state, const int64_t* row_keys,
                            const uint32_t* ids, int64_t n, const GradSource& g, int64_t dim, const OptimSpec& o,
                            const StepScalars& c, int64_t step, uint64_t seed, int nthreads);

}  // namespace cpu
}  // namespace embedlookup
