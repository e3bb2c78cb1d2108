// The bag loop shared by the embedding_bag tops (fp32 rows and int8 rows):
// included by their .cpp files only, not part of the host interface.
//
// Schedule: for each bag, for each key: resolve the key to a row id (bounded
// hash probe or direct index), let the row reader fill an on-chip buffer of
// dim floats (a burst read of the row, decoded on the fly for compressed
// rows; zeros for a missing key, so no read depends on a condition), then
// fold it into the accumulator (accumulate, II=1). Inside accumulate every
// iteration touches a different column, so the float adder's latency never
// stalls the pipeline; acc[d] is carried only from one key to the next,
// exactly the per-column order the CPU engine uses, so results match it bit
// for bit.
//
// HLS pragmas go through EL_PRAGMA, which expands to _Pragma only under
// __SYNTHESIS__ (defined by Vitis HLS for csynth, not for csim or g++).
#pragma once
#include <cstdint>

#include "embedding_bag.h"

#ifdef __SYNTHESIS__
#define EL_PRAGMA(x) _Pragma(#x)
#else
#define EL_PRAGMA(x)
// Loop labels name loops in HLS reports and pragmas; nothing jumps to them.
#pragma GCC diagnostic ignored "-Wunused-label"
#endif

// The AXI ports of both tops (same argument names). Separate bundles let the
// table's row bursts own a memory channel (an HBM pseudo-channel / DDR bank)
// while keys, index and output use others.
#define EL_BAG_INTERFACE() \
  EL_PRAGMA(HLS INTERFACE m_axi port=keys offset=slave bundle=gmem_keys depth=4096) \
  EL_PRAGMA(HLS INTERFACE m_axi port=offsets offset=slave bundle=gmem_keys depth=4096) \
  EL_PRAGMA(HLS INTERFACE m_axi port=weights offset=slave bundle=gmem_keys depth=4096) \
  EL_PRAGMA(HLS INTERFACE m_axi port=rows offset=slave bundle=gmem_rows depth=65536 max_read_burst_length=64) \
  EL_PRAGMA(HLS INTERFACE m_axi port=slot_keys offset=slave bundle=gmem_index depth=4096) \
  EL_PRAGMA(HLS INTERFACE m_axi port=slot_rows offset=slave bundle=gmem_index depth=4096) \
  EL_PRAGMA(HLS INTERFACE m_axi port=out offset=slave bundle=gmem_out depth=65536 max_write_burst_length=64) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=n) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=n_offsets) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=n_bags) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=n_rows) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=dim) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=mode) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=use_weights) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=use_hash) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=mask) \
  EL_PRAGMA(HLS INTERFACE s_axilite port=return)

namespace el_hls {

// RowReader: a value type with `void load(int32_t id, int32_t dim, float* row) const`
// that writes row id's dim values (id != kNoRow) as floats.
template <class RowReader>
void pool_bags(const RowReader& reader, const int64_t* keys, const int64_t* offsets, const float* weights,
               const int64_t* slot_keys, const int32_t* slot_rows, float* out, int64_t n, int64_t n_offsets,
               int64_t n_bags, int64_t n_rows, int32_t dim, int32_t mode, int32_t use_weights, int32_t use_hash,
               uint64_t mask) {
  float acc[kMaxDim];
  float row[kMaxDim];
  // Two ports each (one read, one write per iteration) suffice for II=1.
  EL_PRAGMA(HLS BIND_STORAGE variable=acc type=ram_2p impl=bram)
  EL_PRAGMA(HLS BIND_STORAGE variable=row type=ram_2p impl=bram)

  const float init = (mode == kMax) ? -__builtin_huge_valf() : 0.0f;
bags:
  for (int64_t b = 0; b < n_bags; ++b) {
    EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=1024)
    const int64_t s = offsets[b];
    const int64_t e = (b + 1 < n_offsets) ? offsets[b + 1] : n;
  init_acc:
    for (int32_t d = 0; d < dim; ++d) {
      EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=256)
      EL_PRAGMA(HLS PIPELINE II=1)
      acc[d] = init;
    }
  bag_keys:
    for (int64_t p = s; p < e; ++p) {
      EL_PRAGMA(HLS LOOP_TRIPCOUNT min=0 max=64)
      const int64_t key = keys[p];
      int32_t id;
      if (use_hash) {
        id = probe(key, slot_keys, slot_rows, mask);
      } else {
        id = (key >= 0 && key < n_rows) ? static_cast<int32_t>(key) : kNoRow;
      }
      const float w = use_weights ? weights[p] : 1.0f;
      if (id != kNoRow) {
        reader.load(id, dim, row);
      } else {
      zero_row:  // a missing key pools as a zero row (it still counts for mean and max)
        for (int32_t d = 0; d < dim; ++d) {
          EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=256)
          EL_PRAGMA(HLS PIPELINE II=1)
          row[d] = 0.0f;
        }
      }
    accumulate:
      for (int32_t d = 0; d < dim; ++d) {
        EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=256)
        EL_PRAGMA(HLS PIPELINE II=1)
        EL_PRAGMA(HLS DEPENDENCE variable=acc type=inter false)
        const float x = row[d];
        const float a = acc[d];
        float r;
        if (mode == kMax) {
          r = x > a ? x : a;  // the CPU engine's comparison (a NaN row element is skipped)
        } else if (use_weights) {
          r = a + w * x;
        } else {
          r = a + x;
        }
        acc[d] = r;
      }
    }
    const int64_t count = e - s;
    const float scale = (mode == kMean && count > 0) ? 1.0f / static_cast<float>(count) : 1.0f;
  write_out:
    for (int32_t d = 0; d < dim; ++d) {
      EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=256)
      EL_PRAGMA(HLS PIPELINE II=1)
      float r = acc[d];
      if (count <= 0) {
        r = 0.0f;
      } else if (mode == kMean) {
        r = acc[d] * scale;
      }
      out[b * dim + d] = r;
    }
  }
}

}  // namespace el_hls
