// RowArena: fixed-stride float rows addressed by a dense uint32 id, stored in
// huge-page chunks. Growing adds a chunk and never moves existing rows, so a
// row pointer stays valid for the life of its id (until relayout moves it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace embedlookup {

// A copy of the arena's addressing, for kernels: held in registers across a
// loop, it is not reloaded after each seqlock fence (a compiler barrier).
struct ArenaView {
  float* const* chunks;
  int shift;
  uint32_t mask;
  int64_t stride;
  float* row(uint32_t id) const { return chunks[id >> shift] + static_cast<size_t>(id & mask) * stride; }
};

class RowArena {
 public:
  explicit RowArena(int64_t stride_floats);
  ~RowArena();
  RowArena(const RowArena&) = delete;
  RowArena& operator=(const RowArena&) = delete;

  float* row(uint32_t id) const { return chunks_[id >> shift_] + static_cast<size_t>(id & mask_) * stride_; }
  // Makes ids [0, n) addressable.
  void ensure(size_t n);
  size_t capacity_rows() const { return chunks_.size() << shift_; }
  size_t bytes() const { return chunks_.size() * chunk_bytes(); }
  int64_t stride() const { return stride_; }
  // Valid until the next ensure() (callers hold the table lock, shared at least).
  ArenaView view() const { return ArenaView{chunks_.data(), shift_, mask_, stride_}; }

 private:
  size_t chunk_bytes() const { return (size_t(1) << shift_) * stride_ * sizeof(float); }
  int64_t stride_;
  int shift_;
  uint32_t mask_;
  std::vector<float*> chunks_;
};

}  // namespace embedlookup
