// CRC-32C (Castagnoli): the checksum of every on-disk section and tier slot.
// Uses the SSE4.2 crc32 instruction when the CPU has it (~8 bytes/cycle), else
// a table-driven fallback; both give the same values.
#pragma once
#include <cstddef>
#include <cstdint>

namespace embedlookup {
// crc of `n` bytes, continuing from a previous crc (0 to start).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
}  // namespace embedlookup
