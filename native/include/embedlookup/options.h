// The public options of the engine's tables, and the argument views its calls
// take. One struct per concern, every field with its meaning, unit and valid
// range; each options struct has a validate() that throws
// std::invalid_argument naming the bad field. (HierarchicalKV's
// HashTableOptions is the model: options by name, not long positional lists.)
#pragma once
#include <cstdint>

#include "embedlookup/initializer.h"
#include "embedlookup/pooling.h"
#include "embedlookup/row_codec.h"

namespace embedlookup {

// EmbeddingTable (native/core/table.h).
struct TableOptions {
  int64_t dim = 0;           // floats per row: 1 .. kMaxDim
  InitSpec init;             // deterministic initializer of rows created by lookups
  int64_t capacity = 0;      // max rows in memory; 0 = grow without bound
  int num_threads = 0;       // OpenMP threads per call: 0 = OpenMP's default, else 1 .. kMaxThreads
  RowType row_type = RowType::kF32;  // storage type of rows (row_codec.h); int4 needs an even dim
  uint64_t rounding_seed = 0;        // fp16/bf16 training: seed of the stochastic rounding bits
  static constexpr int64_t kMaxDim = int64_t{1} << 20;  // keeps row bytes, strides and batch sizes far from overflow
  static constexpr int kMaxThreads = 1024;               // per-thread scratch is sized by it
  void validate() const;
};

enum class EvictionPolicy : int32_t { kNone = 0, kLFU = 1, kLRU = 2, kTTL = 3 };
enum class DefaultRowKind : int32_t { kZeros = 0, kCold = 1 };

// FrequencyTable (native/frequency/frequency_table.h): admission, eviction,
// relayout. docs/frequency.md explains each policy.
struct FrequencyOptions {
  double half_life = 1000.0;       // clock steps after which a row's score halves (finite, > 0)
  int64_t budget_rows = 0;         // max live rows; 0 = unbounded (then policy must be kNone or kTTL)
  EvictionPolicy policy = EvictionPolicy::kNone;  // who leaves when the budget is passed
  double evict_fraction = 0.05;    // an eviction batch drops to budget * (1 - this); in [0, 1)
  int64_t ttl = 0;                 // kTTL: evict rows unseen for more than ttl steps (> 0)
  int64_t ttl_interval = 0;        // kTTL: expire every this many steps (0 = max(1, ttl / 4))
  int64_t admit_count = 1;         // sightings before a key gets a row (>= 1; 1 = admit at once)
  double admit_probability = 1.0;  // chance a counted-enough key is admitted, in (0, 1]
  uint64_t admit_seed = 0;         // seeds the per-(key, step) admission coin
  int64_t sketch_width = 1 << 20;  // count-min columns per row (a power of two)
  int64_t sketch_depth = 4;        // count-min rows, 1 .. 16
  DefaultRowKind default_row = DefaultRowKind::kZeros;  // what a key without a row reads
  double hot_fraction = 0.1;       // hot region = row ids [0, hot_fraction * rows); in [0, 1]
  static constexpr int64_t kMaxSketchBytes = int64_t{1} << 36;  // 64 GiB of counters
  void validate() const;
};

// A table over a lower storage tier (EmbeddingTable::attach_tier).
struct TierOptions {
  int64_t memory_rows = 0;  // rows kept in memory; 0 = no limit (rows move down only by demote / eviction)
  bool promote = true;      // rows read through from the tier move into memory (else served in place)
};

// A jagged batch of bags, torch.nn.EmbeddingBag's convention: bag b holds
// values[offsets[b] .. (b + 1 < n_offsets ? offsets[b + 1] : n)). offsets are
// ascending and within [0, n]; n_offsets may be n_bags + 1 (a trailing offset,
// include_last_offset). weights: n per-value weights, or null.
struct Bags {
  const int64_t* values = nullptr;
  int64_t n = 0;
  const int64_t* offsets = nullptr;
  int64_t n_offsets = 0;
  int64_t n_bags = 0;
  PoolMode mode = PoolMode::kSum;
  const float* weights = nullptr;
};

// Where a row occurrence's gradient comes from: grad + src[i] * grad_stride,
// times scale[i]. src / scale may be null (identity / 1).
struct GradSource {
  const float* grad;
  int64_t n_grad_rows;
  int64_t grad_stride;
  const int64_t* src;
  const float* scale;
};

}  // namespace embedlookup
