// Fixed-offset field access in on-disk headers (memcpy: no alignment or
// aliasing assumptions). Shared by the snapshot and file-tier formats.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace embedlookup {
namespace fmt {
template <class T>
void put(uint8_t* h, size_t off, T v) { std::memcpy(h + off, &v, sizeof(T)); }
template <class T>
T load_as(const uint8_t* h, size_t off) {
  T v;
  std::memcpy(&v, h + off, sizeof(T));
  return v;
}
}  // namespace fmt
}  // namespace embedlookup
