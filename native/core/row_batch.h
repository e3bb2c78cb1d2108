// RowBatch: a table's rows in transit — a full checkpoint or a delta (the rows
// changed after `from_version`, plus tombstones of erased keys). The table
// fills and applies it (table.h); native/storage/snapshot.h encodes it.
#pragma once
#include <cstdint>
#include <vector>

#include "embedlookup/initializer.h"
#include "embedlookup/optimizer.h"

namespace embedlookup {

struct RowBatch {
  bool full = false;           // full checkpoint (load into an empty table) vs delta
  uint64_t lineage = 0;        // id of the table history the rows belong to
  uint64_t from_version = 0;   // rows changed after this version (0 for full)
  uint64_t to_version = 0;     // table version when the batch was taken
  // configuration of the source table
  int64_t dim = 0;
  InitSpec init;
  int64_t capacity = 0;
  OptimKind state_kind = OptimKind::kNone;
  float state_init = 0.0f;     // initial optimizer-state value (Adagrad accumulator)
  int64_t state_floats = 0;    // per row; = state_floats(state_kind, dim)
  int64_t step = 0;
  bool has_versions = false;   // per-row versions carried (else rows take to_version)
  // payload (dense)
  std::vector<int64_t> keys;
  std::vector<uint64_t> versions;  // n or empty
  std::vector<float> rows;         // n x dim
  std::vector<float> state;        // n x state_floats
  std::vector<int64_t> dead_keys;  // tombstones
  std::vector<uint64_t> dead_versions;
};

}  // namespace embedlookup
