// Large zeroed allocations aligned to 2 MiB and advised for transparent huge
// pages: random row and bucket accesses then miss the TLB far less often.
#pragma once
#include <cstddef>

namespace embedlookup {
void* huge_alloc(size_t bytes);          // zero-filled; throws std::bad_alloc
void huge_free(void* p, size_t bytes);   // bytes as passed to huge_alloc
}  // namespace embedlookup
