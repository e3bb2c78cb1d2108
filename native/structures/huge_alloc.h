// Large zeroed allocations aligned to 2 MiB and advised for transparent huge
// pages: random row and bucket accesses then miss the TLB far less often.
#pragma once
#include <cstddef>

namespace embedlookup {
void* huge_alloc(size_t bytes);          // zero-filled; throws std::bad_alloc
void huge_free(void* p, size_t bytes);   // bytes as passed to huge_alloc
// Large short-lived buffers (a checkpoint's copy of the table): mapped with
// their pages populated in one call, not faulted in one by one; no huge-page
// advice, whose first use in a process can stall on memory compaction.
void* batch_alloc(size_t bytes);         // zero-filled; throws std::bad_alloc
void batch_free(void* p, size_t bytes);
}  // namespace embedlookup
