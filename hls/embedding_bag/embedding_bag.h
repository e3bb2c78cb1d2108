// Embedding-bag kernel for FPGAs in synthesizable C++ (Vitis HLS), also
// compiled as plain C++ by g++ for the C-simulation testbench.
//
// One call pools n_bags bags of keys into out[n_bags][dim], with
// torch.nn.EmbeddingBag's semantics (sum / mean / max, optional per-sample
// weights with sum, empty bags give zeros) and the CPU engine's handling of
// missing keys (they read as zero rows). Keys are resolved either directly
// (the key is the row number, as in a dense EmbeddingBag) or through a hash
// index built by the host with the CPU engine's hash (embedlookup/hash.h, the
// same header the CPU kernels use).
//
// Types are <cstdint> fixed-width integers and float, which Vitis HLS maps
// to exact bit widths itself, so no ap_int is needed and g++ builds the
// kernel unchanged.
#pragma once
#include <cstdint>

#include "embedlookup/row_id.h"

namespace el_hls {

// Widest row the kernel accepts (floats): sizes the on-chip accumulator and
// row buffer. Rows may be narrower; dim is a run-time argument.
constexpr int kMaxDim = 256;
// The hash probe reads at most this many slots; the host builds the index
// with every key fewer than kMaxProbe slots from its home slot.
constexpr int kMaxProbe = 128;
// Index slot with this row id is empty: the engine's sentinel
// (embedlookup/row_id.h) as a signed 32-bit row id, i.e. -1.
constexpr int32_t kNoRow = static_cast<int32_t>(EL_NO_ROW);

enum Mode : int32_t { kSum = 0, kMean = 1, kMax = 2 };

// 32-bit words per int8 row of dim columns: dim uint8 codes (code d in byte
// d % 4 of word d / 4, little-endian), zero padding to a whole word, then
// the float32 scale and bias. The engine's int8 storage type, row for row.
constexpr int32_t int8_row_words(int32_t dim) { return (dim + 3) / 4 + 2; }

// Row id of key in the hash index (kNoRow if absent). Exposed for the testbench.
int32_t probe(int64_t key, const int64_t* slot_keys, const int32_t* slot_rows, uint64_t mask);

}  // namespace el_hls

// Top function, at global scope because HLS tools want an unqualified top
// name (set_top embedding_bag). Memory ports (AXI4 masters, one bundle each; see README.md):
//   keys[n], offsets[n_offsets], weights[n]      gmem_keys  (streamed once)
//   rows[n_rows * dim]                           gmem_rows  (the table: random row bursts)
//   slot_keys[mask + 1], slot_rows[mask + 1]     gmem_index (hash index; unused when !use_hash)
//   out[n_bags * dim]                            gmem_out   (written once, in bursts)
// Bag b covers keys[offsets[b] .. end), end = offsets[b + 1] if b + 1 <
// n_offsets else n (so a trailing offset, include_last_offset, works too).
// dim must be in [1, kMaxDim]; otherwise the kernel writes nothing (the host checks).
void embedding_bag(const int64_t* keys, const int64_t* offsets, const float* weights, const float* rows,
                   const int64_t* slot_keys, const int32_t* slot_rows, float* out, int64_t n, int64_t n_offsets,
                   int64_t n_bags, int64_t n_rows, int32_t dim, int32_t mode, int32_t use_weights,
                   int32_t use_hash, uint64_t mask);

// The same lookup over int8 rows (the engine's int8 storage type, row-wise
// asymmetric): rows[n_rows * int8_row_words(dim)] words; element d of a row
// is scale * code[d] + bias, decoded on chip as the row streams in (the
// table is read as 72 bytes per row of dim 64 instead of 256). Ports,
// bundles and every other argument as embedding_bag.
void embedding_bag_int8(const int64_t* keys, const int64_t* offsets, const float* weights, const uint32_t* rows,
                        const int64_t* slot_keys, const int32_t* slot_rows, float* out, int64_t n,
                        int64_t n_offsets, int64_t n_bags, int64_t n_rows, int32_t dim, int32_t mode,
                        int32_t use_weights, int32_t use_hash, uint64_t mask);
