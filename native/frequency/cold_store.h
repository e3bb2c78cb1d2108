// ColdRowStore: where a FrequencyTable with cold rows keeps the rows it
// demotes, in memory and compressed (docs/frequency.md, "Precision that
// follows frequency").
//
// It is a StorageTier (core/tier.h), so the table's read path promotes a cold
// row back to fp32 memory on a training read and serves it in place on a
// serving read, exactly as it does with the file tier. Rows are stored in a
// compressed row type (row_codec.h, round to nearest even); the optimizer
// state of a row is stored as one int8 row of state_floats elements (its own
// scale and bias). Each row also keeps its frequency score (score, last step)
// from the moment it was demoted, so the table can give it back on promotion
// and drop the lowest-priority cold rows when the budget needs it.
//
// Thread safety (the tier contract): get / contains / scan / stats run under a
// shared lock, set / erase / set_meta under an exclusive one.
#pragma once
#include <atomic>
#include <cstdint>
#include <shared_mutex>
#include <vector>

#include "../core/tier.h"
#include "../structures/key_index.h"
#include "embedlookup/row_codec.h"

namespace embedlookup {

class ColdRowStore : public StorageTier {
 public:
  // type: the rows' storage type (not fp32); state_floats: optimizer-state
  // floats per row the table hands over (0: none).
  ColdRowStore(int64_t dim, int64_t state_floats, RowType type);

  int64_t dim() const override { return dim_; }
  int64_t state_floats() const override { return sf_; }
  int64_t capacity() const override { return 0; }
  int64_t size() const override;
  int64_t get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
              uint8_t* found) override;
  void set(const int64_t* keys, int64_t n, const float* rows, const float* state, const uint64_t* versions) override;
  int64_t contains(const int64_t* keys, int64_t n, uint8_t* found) const override;
  int64_t erase(const int64_t* keys, int64_t n) override;
  void flush() override {}
  void scan(uint64_t since, std::vector<int64_t>& keys) const override;
  TierStats stats() const override;
  uint64_t max_version() const override;

  RowType row_type() const { return type_; }
  // Bytes one cold row occupies: the row as stored, the int8 state row (when
  // state_floats > 0), its version (8) and its score metadata (8); the index
  // adds its share (index_bytes()).
  int64_t slot_bytes() const { return rb_ + sb_ + 16; }
  int64_t row_bytes() const { return rb_; }
  int64_t state_bytes_per_row() const { return sb_; }
  // Allocated bytes, exactly: slots (rows, state, version, metadata) by
  // capacity, the free list, and the index.
  struct Memory {
    int64_t rows, row_bytes, state_bytes, metadata_bytes, index_bytes;
  };
  Memory memory() const;

  // Score metadata of held keys (keys not held are skipped).
  void set_meta(const int64_t* keys, int64_t n, const float* score, const uint32_t* last);
  // found: 1 and (score, last) for held keys.
  bool meta(int64_t key, float& score, uint32_t& last) const;
  // Every held key with its metadata (for the table's eviction choice).
  void all_meta(std::vector<int64_t>& keys, std::vector<float>& score, std::vector<uint32_t>& last) const;

 private:
  uint32_t slot_of(int64_t key) const { return index_.find(key); }

  const int64_t dim_, sf_;
  const RowType type_;
  const int64_t rb_, sb_;  // bytes of a row, of a state row (0 when sf_ == 0)
  mutable std::shared_mutex mu_;
  KeyIndex index_;  // key -> slot
  std::vector<uint8_t> rows_, state_;
  std::vector<uint64_t> ver_;
  std::vector<float> score_;
  std::vector<uint32_t> last_;
  std::vector<uint32_t> free_;
  uint32_t next_ = 0;
  uint64_t max_ver_ = 0;
  TierStats st_;  // writes, erases, bytes_written (under the exclusive lock)
  mutable std::atomic<int64_t> reads_{0}, bytes_read_{0};
};

}  // namespace embedlookup
