// Embedding-bag kernel over int8 rows (see embedding_bag.h for the contract;
// the bag loop is embedding_bag_pool.h's, shared with the fp32 top).
//
// The row reader bursts one row's int8_row_words(dim) words into an on-chip
// buffer (read_row, II=1, consecutive addresses), takes scale and bias from
// its last two words, then decodes one column per cycle (decode, II=1):
// code = byte d of the buffer, value = scale * code + bias, computed as a
// multiply then an add, the rounding of the host's dequantizer (so pooled
// results equal the CPU engine's over the dequantized rows, bit for bit).
#include <cstring>

#include "embedding_bag.h"
#include "embedding_bag_pool.h"

namespace el_hls {
namespace {

float float_of_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

struct Int8Rows {
  const uint32_t* rows;
  void load(int32_t id, int32_t dim, float* row) const {
    const int32_t words = int8_row_words(dim);
    const uint32_t* src = rows + static_cast<int64_t>(id) * words;
    uint32_t buf[int8_row_words(kMaxDim)];
  read_row:  // unconditional, consecutive reads: one AXI burst per row
    for (int32_t w = 0; w < words; ++w) {
      EL_PRAGMA(HLS LOOP_TRIPCOUNT min=3 max=66)
      EL_PRAGMA(HLS PIPELINE II=1)
      buf[w] = src[w];
    }
    const float scale = float_of_bits(buf[words - 2]);
    const float bias = float_of_bits(buf[words - 1]);
  decode:
    for (int32_t d = 0; d < dim; ++d) {
      EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=256)
      EL_PRAGMA(HLS PIPELINE II=1)
      const uint32_t code = (buf[d >> 2] >> (8 * (d & 3))) & 0xFFu;
      const float scaled = scale * static_cast<float>(code);
      row[d] = scaled + bias;
    }
  }
};

}  // namespace
}  // namespace el_hls

using namespace el_hls;

void embedding_bag_int8(const int64_t* keys, const int64_t* offsets, const float* weights, const uint32_t* rows,
                        const int64_t* slot_keys, const int32_t* slot_rows, float* out, int64_t n,
                        int64_t n_offsets, int64_t n_bags, int64_t n_rows, int32_t dim, int32_t mode,
                        int32_t use_weights, int32_t use_hash, uint64_t mask) {
  EL_BAG_INTERFACE();
  if (dim < 1 || dim > kMaxDim) return;  // the on-chip buffers hold kMaxDim columns
  pool_bags(Int8Rows{rows}, keys, offsets, weights, slot_keys, slot_rows, out, n, n_offsets, n_bags, n_rows, dim,
            mode, use_weights, use_hash, mask);
}
