// Splits a batch of keys (flat, or jagged bags) by the shard that owns each
// key, in one pass over the batch: what a parameter-server client sends each
// shard. Order within a shard is the batch's order, so a shard's table call on
// its part equals the whole-batch call restricted to its keys.
#pragma once
#include <cstdint>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace embedlookup {

// std::allocator that leaves new elements uninitialised (resize writes no
// zeros): every slot of a part is written by the split itself.
template <class T>
struct NoInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInitAllocator<U>;
  };
  NoInitAllocator() = default;
  template <class U>
  NoInitAllocator(const NoInitAllocator<U>&) noexcept {}
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0)
      ::new (static_cast<void*>(p)) U;
    else
      ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using Buffer = std::vector<T, NoInitAllocator<T>>;

struct ShardPart {
  Buffer<int64_t> values;     // the shard's keys, in batch order
  Buffer<int64_t> offsets;    // bags: one offset per bag of the batch (an empty
                              // bag where the shard holds none of its keys)
  Buffer<float> weights;      // per key; empty unless weights or mean_weights
  Buffer<int64_t> positions;  // each key's index in the batch; empty unless asked
};

struct PartitionInput {
  const int64_t* values = nullptr;
  int64_t n = 0;
  const int64_t* offsets = nullptr;  // nullptr: flat keys, no bags
  int64_t n_offsets = 0;             // n_bags, or n_bags + 1 (include_last_offset)
  int64_t n_bags = 0;
  const float* weights = nullptr;    // per key, or nullptr
  bool mean_weights = false;         // weights = 1.0f / (the key's bag length), as a
                                     // "mean" bag's fused backward scales it
  bool positions = false;
};

// The parts of num_shards shards (num_shards >= 1). Offsets must start at 0
// and not decrease (the caller has checked them); bag b holds keys
// [offsets[b], offsets[b + 1]) and the last bag runs to n.
std::vector<ShardPart> partition_by_shard(const PartitionInput& in, uint32_t num_shards);

// The distinct keys of a batch in order of first occurrence, each key's index
// among them and each distinct key's count: one pass through a hash set sized
// for the batch (what np.unique does with a sort). The parameter-server
// client's trainer-side cache scores and serves a batch's distinct keys.
struct DistinctKeys {
  Buffer<int64_t> keys;
  Buffer<int64_t> inverse;  // n entries
  Buffer<int64_t> counts;
};
DistinctKeys distinct_keys(const int64_t* keys, int64_t n);

// Shard of each key (out[i] = shard_of(keys[i], num_shards)).
void shard_ids(const int64_t* keys, int64_t n, uint32_t num_shards, int64_t* out);

}  // namespace embedlookup
