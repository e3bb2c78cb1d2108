// The read path of every lookup entry point (EmbeddingTable's lookup, pooled
// lookups, the torch backend's pooled_lookup_ids / pooled_max_argmax, and the
// same calls of FrequencyTable), written once:
//
//   1. shared lock: the kernel resolves and reads every key; keys without a row
//      in memory read the default row. With a tier that does not promote, the
//      kernel's misses are filled from the tier in place (when the kernel can).
//   2. if a hook says the misses need it: exclusive lock, resolve again, read
//      rows through from the tier into memory, let the table give rows to the
//      rest (insertion or admission), run the kernel again, hold the budget.
//
// Included by the table's and FrequencyTable's sources only.
#pragma once
#include <mutex>
#include <type_traits>

#include "../cpu/kernels_cpu.h"
#include "table.h"

namespace embedlookup {

template <class Kernel, class Serve>
uint64_t EmbeddingTable::read_path(ReadCall& c, uint32_t* ids, const float* default_row, Kernel&& kernel,
                                   Serve&& serve) {
  constexpr bool can_serve = !std::is_same<std::decay_t<Serve>, std::nullptr_t>::value;
  const RowView view{&rows_, &seq_, default_row};
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    int64_t missing = kernel(view, ids);
    if (tier_) {
      memory_hits_.fetch_add(c.n - missing, std::memory_order_relaxed);
      if constexpr (can_serve) {
        if (missing && serves_in_place(c)) missing = serve(ids);
      }
    }
    // A kernel that cannot take tier rows in place promotes them even when the
    // table does not (its caller needs row ids: the training path).
    const bool must_promote = tier_ && missing && (!serves_in_place(c) || !can_serve);
    if (!must_promote && !miss_needs_exclusive(c, missing)) {
      read_done_shared(c, ids, missing);
      return layout_epoch_.load();
    }
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  resolve(c.keys, c.n, ids);
  if (tier_) c.stats.promoted += promote_locked(c.keys, c.n, ids);
  fill_missing_locked(c, ids);
  // Always again: besides this call's promotions and insertions, another call
  // may have given rows to these keys between the two locks.
  kernel(view, ids);
  // The epoch of the ids the kernel used: a demotion by the budget below bumps
  // it, so a backward handed these ids resolves its keys again.
  const uint64_t epoch = layout_epoch_.load();
  if (tier_) enforce_budget_locked();
  return epoch;
}

}  // namespace embedlookup
