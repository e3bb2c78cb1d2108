#include "partition.h"

#include <cstddef>

#include "embedlookup/hash.h"

namespace embedlookup {

void shard_ids(const int64_t* keys, int64_t n, uint32_t num_shards, int64_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = shard_of(keys[i], num_shards);
}

std::vector<ShardPart> partition_by_shard(const PartitionInput& in, uint32_t num_shards) {
  const int64_t n = in.n;
  // Pass 1: every key's shard (hashed once) and each shard's count.
  std::vector<uint32_t> sid(static_cast<size_t>(n));
  std::vector<int64_t> count(num_shards, 0);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t s = shard_of(in.values[i], num_shards);
    sid[i] = s;
    ++count[s];
  }
  const bool with_w = in.weights != nullptr || in.mean_weights;
  std::vector<ShardPart> parts(num_shards);
  for (uint32_t s = 0; s < num_shards; ++s) {
    parts[s].values.resize(count[s]);
    if (in.offsets) parts[s].offsets.resize(in.n_bags);
    if (with_w) parts[s].weights.resize(count[s]);
    if (in.positions) parts[s].positions.resize(count[s]);
  }
  // Pass 2: bag by bag, each key to its shard's next slot.
  std::vector<int64_t> cur(num_shards, 0);
  const int64_t runs = in.offsets ? in.n_bags : 1;
  for (int64_t b = 0; b < runs; ++b) {
    int64_t lo = in.offsets ? in.offsets[b] : 0;
    int64_t hi = !in.offsets ? n : (b + 1 < in.n_offsets ? in.offsets[b + 1] : n);
    if (in.offsets)
      for (uint32_t s = 0; s < num_shards; ++s) parts[s].offsets[b] = cur[s];
    const float inv_len = hi > lo ? 1.0f / static_cast<float>(hi - lo) : 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      ShardPart& p = parts[sid[i]];
      int64_t j = cur[sid[i]]++;
      p.values[j] = in.values[i];
      if (with_w) p.weights[j] = in.mean_weights ? inv_len : in.weights[i];
      if (in.positions) p.positions[j] = i;
    }
  }
  return parts;
}

}  // namespace embedlookup
