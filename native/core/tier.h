// StorageTier: where rows live below the table's memory tier.
//
// One interface for every lower tier, owned by the table that consumes it
// (FBGEMM's layering): the file tier (NVM/SSD, native/storage/file_tier.h)
// implements it now, the parameter-server client later. Rows travel with their
// optimizer state and metadata (the version of their last change), by key, in
// batches. A table with a tier reads keys it lacks through from it (promotion)
// and writes rows it sheds back to it (demotion); see table.h.
//
// Contract for implementations:
//  * thread-safe: get/scan may run concurrently with each other; set/erase/
//    flush are serialised by the implementation;
//  * set is all-or-nothing with respect to capacity: TierFullError before any
//    row is written;
//  * rows and state are dense: row i at rows + i * dim, state at
//    state + i * state_floats (state may be null: zeros are stored / nothing read).
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include <stdexcept>

#include "embedlookup/errors.h"  // TierFullError
#include "embedlookup/row_codec.h"

namespace embedlookup {

// Adds the nanoseconds from its construction to its destruction to `sum`
// (time counters of the tier's I/O and of the waits for it).
class ElapsedNs {
 public:
  explicit ElapsedNs(std::atomic<int64_t>& sum) : sum_(sum), t0_(std::chrono::steady_clock::now()) {}
  ~ElapsedNs() {
    sum_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count(),
                   std::memory_order_relaxed);
  }
  ElapsedNs(const ElapsedNs&) = delete;
  ElapsedNs& operator=(const ElapsedNs&) = delete;

 private:
  std::atomic<int64_t>& sum_;
  std::chrono::steady_clock::time_point t0_;
};

struct TierStats {
  int64_t reads = 0;          // rows read (found)
  int64_t writes = 0;         // rows written
  int64_t erases = 0;         // rows erased
  int64_t bytes_read = 0;
  int64_t bytes_written = 0;
  int64_t flushes = 0;
};

class StorageTier {
 public:
  virtual ~StorageTier() = default;
  virtual int64_t dim() const = 0;
  virtual int64_t state_floats() const = 0;  // optimizer-state floats stored per row
  virtual int64_t capacity() const = 0;      // max rows (0: unbounded)
  virtual int64_t size() const = 0;          // rows held
  // found[i] = 1 and row/state/version filled for keys held; others untouched
  // (found[i] = 0). Returns the number found.
  virtual int64_t get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                      uint8_t* found) = 0;
  // get() on behalf of a prefetch: the same result; an implementation may
  // give these reads a lower priority than its other callers' (FileTier does).
  virtual int64_t get_background(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                                 uint8_t* found) {
    return get(keys, n, rows, state, versions, found);
  }
  // Inserts or overwrites; the last of duplicated keys wins.
  virtual void set(const int64_t* keys, int64_t n, const float* rows, const float* state,
                   const uint64_t* versions) = 0;
  // found[i] = 1 for keys held, else 0, from the tier's index alone (no row
  // is read: no I/O). Returns the number held.
  virtual int64_t contains(const int64_t* keys, int64_t n, uint8_t* found) const = 0;
  // Returns how many of `keys` were held.
  virtual int64_t erase(const int64_t* keys, int64_t n) = 0;
  // Makes every write so far durable.
  virtual void flush() = 0;
  // Keys whose version is > since (all keys: since = 0).
  virtual void scan(uint64_t since, std::vector<int64_t>& keys) const = 0;
  virtual TierStats stats() const = 0;
  // Highest row version held (a table attached to a reopened tier continues
  // its versions above it).
  virtual uint64_t max_version() const = 0;

  // The storage type of the rows held (row_codec.h). get/set above always
  // take fp32 rows (a compressed tier decodes / encodes them); get_raw /
  // set_raw move the stored bytes as they are, row i at
  // rows + i * row_bytes(row_type(), dim()): a table of the same row type
  // moves its rows bit for bit.
  virtual RowType row_type() const { return RowType::kF32; }
  virtual int64_t get_raw(const int64_t*, int64_t, uint8_t*, float*, uint64_t*, uint8_t*) {
    throw std::logic_error("this tier has no raw row access");
  }
  virtual void set_raw(const int64_t*, int64_t, const uint8_t*, const float*, const uint64_t*) {
    throw std::logic_error("this tier has no raw row access");
  }
};

}  // namespace embedlookup
