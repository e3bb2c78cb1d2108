// Striped per-row sequence locks: readers never see a half-written row.
//
// A writer takes a row's stripe by moving its counter from even to odd (CAS),
// writes the row and its optimizer state, then publishes counter + 2. A
// reader records the counter, reads the row, and retries when the counter was
// odd or changed. Stripes (not one lock per row) keep the counters in a 16 KiB
// array that stays in L1/L2; a false retry costs one re-read and is rare.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>

namespace embedlookup {

class RowSeqlock {
 public:
  static constexpr uint32_t kStripes = 4096;
  RowSeqlock() : seq_(new std::atomic<uint32_t>[kStripes]) {
    for (uint32_t i = 0; i < kStripes; ++i) seq_[i].store(0, std::memory_order_relaxed);
  }
  std::atomic<uint32_t>& stripe(uint32_t row) const { return seq_[row & (kStripes - 1)]; }

  // Reader side.
  uint32_t read_begin(uint32_t row) const { return stripe(row).load(std::memory_order_acquire); }
  bool read_valid(uint32_t row, uint32_t begin) const {
    std::atomic_thread_fence(std::memory_order_acquire);
    return (begin & 1u) == 0 && stripe(row).load(std::memory_order_relaxed) == begin;
  }

  // Writer side.
  void write_lock(uint32_t row) const {
    auto& s = stripe(row);
    for (;;) {
      uint32_t v = s.load(std::memory_order_relaxed);
      if ((v & 1u) == 0 && s.compare_exchange_weak(v, v + 1, std::memory_order_acquire)) break;
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    std::atomic_thread_fence(std::memory_order_release);
  }
  void write_unlock(uint32_t row) const { stripe(row).fetch_add(1, std::memory_order_release); }

 private:
  std::unique_ptr<std::atomic<uint32_t>[]> seq_;
};

}  // namespace embedlookup
