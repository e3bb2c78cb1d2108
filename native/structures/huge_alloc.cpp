#include "huge_alloc.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace embedlookup {

namespace {
constexpr size_t kHuge = size_t(2) << 20;
size_t round_up(size_t n) { return (n + kHuge - 1) / kHuge * kHuge; }
}  // namespace

void* huge_alloc(size_t bytes) {
  const size_t len = round_up(bytes ? bytes : 1);
  // Over-map by one huge page and trim so the start is 2 MiB aligned.
  void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHuge - 1) & ~(uintptr_t)(kHuge - 1);
  if (aligned > base) munmap(raw, aligned - base);
  const uintptr_t end = base + len + kHuge;
  if (end > aligned + len) munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), len, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
}

void* batch_alloc(size_t bytes) {
  void* p = mmap(nullptr, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return p;
}

void batch_free(void* p, size_t bytes) {
  if (p) munmap(p, bytes ? bytes : 1);
}

void huge_free(void* p, size_t bytes) {
  if (p) munmap(p, round_up(bytes ? bytes : 1));
}

}  // namespace embedlookup
