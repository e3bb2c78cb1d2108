// Pooling modes with torch.nn.EmbeddingBag's semantics.
#pragma once
#include "embedlookup/portable.h"

namespace embedlookup {

enum class PoolMode : int32_t { kSum = 0, kMean = 1, kMax = 2 };

}  // namespace embedlookup
