// Embedding-bag kernel (see embedding_bag.h for the contract, README.md for
// the interface and the intended schedule; embedding_bag_pool.h holds the bag
// loop both tops share).
//
// fp32 rows: the row reader is one unconditional loop over consecutive
// addresses (read_row, II=1), which HLS infers as one AXI burst per row.
#include "embedding_bag.h"

#include "embedding_bag_pool.h"
#include "embedlookup/hash.h"

namespace el_hls {

int32_t probe(int64_t key, const int64_t* slot_keys, const int32_t* slot_rows, uint64_t mask) {
  uint64_t s = embedlookup::hash_key(key) & mask;
  int32_t row = kNoRow;
probe_slots:
  for (int step = 0; step < kMaxProbe; ++step) {
    EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=4)
    EL_PRAGMA(HLS PIPELINE II=1)
    const int32_t r = slot_rows[s];
    if (r == kNoRow) break;
    if (slot_keys[s] == key) {
      row = r;
      break;
    }
    s = (s + 1) & mask;
  }
  return row;
}

// fp32 rows, row-major: dim floats per row.
struct Fp32Rows {
  const float* rows;
  void load(int32_t id, int32_t dim, float* row) const {
    const float* src = rows + static_cast<int64_t>(id) * dim;
  read_row:  // unconditional, consecutive reads: one AXI burst per row
    for (int32_t d = 0; d < dim; ++d) {
      EL_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=256)
      EL_PRAGMA(HLS PIPELINE II=1)
      row[d] = src[d];
    }
  }
};

}  // namespace el_hls

using namespace el_hls;

void embedding_bag(const int64_t* keys, const int64_t* offsets, const float* weights, const float* rows,
                   const int64_t* slot_keys, const int32_t* slot_rows, float* out, int64_t n, int64_t n_offsets,
                   int64_t n_bags, int64_t n_rows, int32_t dim, int32_t mode, int32_t use_weights,
                   int32_t use_hash, uint64_t mask) {
  EL_BAG_INTERFACE();

  if (dim < 1 || dim > kMaxDim) return;  // the on-chip buffers hold kMaxDim floats
  pool_bags(Fp32Rows{rows}, keys, offsets, weights, slot_keys, slot_rows, out, n, n_offsets, n_bags, n_rows, dim,
            mode, use_weights, use_hash, mask);
}
