#include "row_arena.h"

#include "huge_alloc.h"

namespace embedlookup {

RowArena::RowArena(int64_t stride_floats) : stride_(stride_floats < 1 ? 1 : stride_floats) {
  // ~8 MiB chunks: whole huge pages, few enough that growth is cheap.
  const size_t target = size_t(8) << 20;
  shift_ = 0;
  while ((size_t(1) << (shift_ + 1)) * stride_ * sizeof(float) <= target && shift_ < 24) ++shift_;
  mask_ = (1u << shift_) - 1;
}

RowArena::~RowArena() {
  for (float* c : chunks_) huge_free(c, chunk_bytes());
}

void RowArena::ensure(size_t n) {
  while (capacity_rows() < n) chunks_.push_back(static_cast<float*>(huge_alloc(chunk_bytes())));
}

}  // namespace embedlookup
