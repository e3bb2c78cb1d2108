// Machine probes for the benchmark suite (embedlookup.bench.machine): the
// limits a measured figure is compared with. Built as its own extension module,
// embedlookup._probes, so nothing of it is linked into the product's _core.
#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <omp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <thread>
#include <chrono>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../structures/huge_alloc.h"
#include "embedlookup/hash.h"

namespace py = pybind11;

namespace embedlookup {
namespace probes {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

// Bytes/s of a streaming copy of `bytes` (STREAM convention: read + write).
double copy_bandwidth(int64_t bytes, int repeats, int nt) {
  const int64_t n = bytes / 8;
  auto* a = static_cast<double*>(huge_alloc(n * 8));
  auto* b = static_cast<double*>(huge_alloc(n * 8));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = static_cast<double>(i);
  std::vector<double> t;
  for (int r = 0; r < repeats + 1; ++r) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; ++i) b[i] = a[i];
    if (r) t.push_back(seconds_since(t0));  // first pass warms up
  }
  volatile double sink = b[n / 2];
  (void)sink;
  huge_free(a, n * 8);
  huge_free(b, n * 8);
  // STREAM convention: a copy moves 2 x bytes (read + write); the fastest
  // pass, since a limit is a ceiling that other processes only hide.
  return 2.0 * static_cast<double>(n * 8) / *std::min_element(t.begin(), t.end());
}

// Bytes/s of a random gather of n_read rows of row_bytes from a table of table_bytes.
double gather_bandwidth(int64_t table_bytes, int64_t row_bytes, int64_t n_read, int repeats, int nt) {
  const int64_t rf = std::max<int64_t>(1, row_bytes / 4);
  const int64_t rows = std::max<int64_t>(1, table_bytes / (rf * 4));
  auto* tab = static_cast<float*>(huge_alloc(rows * rf * 4));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < rows * rf; ++i) tab[i] = 1.0f;
  std::vector<uint32_t> idx(n_read);
  uint64_t x = 12345;
  for (auto& i : idx) i = static_cast<uint32_t>((x = mix64(x)) % rows);
  std::vector<double> t;
  float total = 0.0f;
  for (int r = 0; r < repeats + 1; ++r) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
      // A fixed-size local accumulator stays in vector registers, so the
      // probe is limited by memory and not by the adds (a heap-allocated
      // one may alias the rows and made it compute-bound at ~2.5 GB/s/thread).
      float acc[16] = {0.0f};
      // Dynamic chunks: on a shared machine a descheduled thread must not
      // leave the others waiting at the end of a static share.
      // Rows prefetched on two levels, as the pooled kernels do (into L2 80
      // rows ahead, into L1 16 ahead, the best pair measured for 256 B rows):
      // L1 prefetches alone stall on the core's few L1 miss buffers and
      // reached about half this rate (experiments/gather_prefetch.cpp).
#pragma omp for schedule(dynamic, 2048)
      for (int64_t i = 0; i < n_read; ++i) {
        if (i + 80 < n_read) {
          const char* p = reinterpret_cast<const char*>(tab + idx[i + 80] * rf);
          for (int64_t b = 0; b < rf * 4; b += 64) __builtin_prefetch(p + b, 0, 2);
          __builtin_prefetch(p + rf * 4 - 1, 0, 2);
        }
        if (i + 16 < n_read) {
          const char* p = reinterpret_cast<const char*>(tab + idx[i + 16] * rf);
          for (int64_t b = 0; b < rf * 4; b += 64) __builtin_prefetch(p + b, 0, 3);
          __builtin_prefetch(p + rf * 4 - 1, 0, 3);
        }
        const float* __restrict row = tab + idx[i] * rf;
        int64_t j = 0;
        for (; j + 16 <= rf; j += 16)
          for (int k = 0; k < 16; ++k) acc[k] += row[j + k];
        for (; j < rf; ++j) acc[j & 15] += row[j];
      }
      for (float a : acc) total += a;
    }
    if (r) t.push_back(seconds_since(t0));
  }
  volatile float sink = total;
  (void)sink;
  huge_free(tab, rows * rf * 4);
  // A limit is a ceiling: the fastest pass is the best estimate of what the
  // hardware allows (other processes can only slow a pass down).
  return static_cast<double>(n_read * rf * 4) / *std::min_element(t.begin(), t.end());
}

// Bytes/s of a random read-modify-write of n distinct rows of row_bytes from a
// table of table_bytes (read + write counted, as the training step's bytes
// model counts a distinct row): the ceiling of a sparse optimizer's update,
// whose dirty lines must also go back to memory, which a read-only gather
// never pays. Rows are distinct (a partial shuffle), prefetched ahead with
// write intent, and each element gets one multiply-add.
double update_bandwidth(int64_t table_bytes, int64_t row_bytes, int64_t n_rows, int repeats, int nt) {
  const int64_t rf = std::max<int64_t>(1, row_bytes / 4);
  const int64_t rows = std::max<int64_t>(1, table_bytes / (rf * 4));
  const int64_t n = std::min(n_rows, rows);
  auto* tab = static_cast<float*>(huge_alloc(rows * rf * 4));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < rows * rf; ++i) tab[i] = 1.0f;
  std::vector<uint32_t> perm(rows);
  for (int64_t i = 0; i < rows; ++i) perm[i] = static_cast<uint32_t>(i);
  uint64_t x = 54321;
  for (int64_t i = 0; i < n; ++i) std::swap(perm[i], perm[i + static_cast<int64_t>((x = mix64(x)) % (rows - i))]);
  std::vector<double> t;
  for (int r = 0; r < repeats + 1; ++r) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 2048)
    for (int64_t i = 0; i < n; ++i) {
      if (i + 80 < n) {  // two levels, as in gather_bandwidth
        const char* p = reinterpret_cast<const char*>(tab + perm[i + 80] * rf);
        for (int64_t b = 0; b < rf * 4; b += 64) __builtin_prefetch(p + b, 0, 2);
      }
      if (i + 16 < n) {
        const char* p = reinterpret_cast<const char*>(tab + perm[i + 16] * rf);
        for (int64_t b = 0; b < rf * 4; b += 64) __builtin_prefetch(p + b, 1, 3);
      }
      float* __restrict row = tab + perm[i] * rf;
      for (int64_t j = 0; j < rf; ++j) row[j] = row[j] * 0.999f + 1e-3f;
    }
    if (r) t.push_back(seconds_since(t0));
  }
  volatile float sink = tab[perm[0] * rf];
  (void)sink;
  huge_free(tab, rows * rf * 4);
  return 2.0 * static_cast<double>(n * rf * 4) / *std::min_element(t.begin(), t.end());
}

}  // namespace probes
}  // namespace embedlookup

// The device's own read limit: O_DIRECT reads of `block` bytes from the file
// at `path` (which must be large, and not cached: O_DIRECT bypasses the cache
// anyway), by `queue_depth` threads each with one blocking pread in flight,
// at random aligned offsets or sequentially (each thread its own stretch of
// the file), until `reads` reads or `max_seconds`. Returns {reads, seconds}.
std::pair<int64_t, double> device_reads(const std::string& path, int64_t block, int queue_depth, int64_t reads,
                                        bool sequential, double max_seconds) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (fd < 0) throw std::runtime_error("cannot open " + path + " with O_DIRECT: " + std::strerror(errno));
  struct stat st;
  ::fstat(fd, &st);
  const int64_t blocks = st.st_size / block;
  if (blocks < 1) {
    ::close(fd);
    throw std::runtime_error(path + " is smaller than one block");
  }
  std::atomic<int64_t> left{reads}, done{0};
  std::atomic<bool> failed{false};
  const auto t0 = std::chrono::steady_clock::now();
  auto worker = [&](int tid) {
    void* buf = std::aligned_alloc(4096, static_cast<size_t>(block));
    std::mt19937_64 rng(0x5EED + tid);
    int64_t pos = blocks / queue_depth * tid;
    while (left.fetch_sub(1) > 0) {
      const int64_t b = sequential ? (pos++ % blocks) : static_cast<int64_t>(rng() % blocks);
      if (::pread(fd, buf, static_cast<size_t>(block), static_cast<off_t>(b * block)) != block) {
        failed = true;
        break;
      }
      done.fetch_add(1, std::memory_order_relaxed);
      if ((done.load(std::memory_order_relaxed) & 63) == 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > max_seconds) break;
    }
    std::free(buf);
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < queue_depth; ++t) ts.emplace_back(worker, t);
  for (auto& t : ts) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ::close(fd);
  if (failed) throw std::runtime_error("device probe: a read of " + path + " failed");
  return {done.load(), s};
}

PYBIND11_MODULE(_probes, m) {
  using namespace embedlookup::probes;
  m.doc() = "machine limits for embedlookup's benchmark suite (use embedlookup.bench, not this module)";
  m.def(
      "copy_bandwidth",
      [](int64_t bytes, int repeats, int nthreads) {
        py::gil_scoped_release nogil;
        return copy_bandwidth(bytes, repeats, nthreads > 0 ? nthreads : omp_get_max_threads());
      },
      py::arg("bytes"), py::arg("repeats"), py::arg("nthreads") = 0);
  m.def(
      "gather_bandwidth",
      [](int64_t table_bytes, int64_t row_bytes, int64_t n_rows_read, int repeats, int nthreads) {
        py::gil_scoped_release nogil;
        return gather_bandwidth(table_bytes, row_bytes, n_rows_read, repeats,
                                nthreads > 0 ? nthreads : omp_get_max_threads());
      },
      py::arg("table_bytes"), py::arg("row_bytes"), py::arg("n_rows_read"), py::arg("repeats"),
      py::arg("nthreads") = 0);
  m.def(
      "update_bandwidth",
      [](int64_t table_bytes, int64_t row_bytes, int64_t n_rows, int repeats, int nthreads) {
        py::gil_scoped_release nogil;
        return update_bandwidth(table_bytes, row_bytes, n_rows, repeats,
                                nthreads > 0 ? nthreads : omp_get_max_threads());
      },
      py::arg("table_bytes"), py::arg("row_bytes"), py::arg("n_rows"), py::arg("repeats"),
      py::arg("nthreads") = 0);
  // ns per random slot read of an existing file through a shared read-only
  // mapping (mmap=True) or pread.
  m.def("device_reads",
        [](const std::string& path, int64_t block, int queue_depth, int64_t reads, bool sequential, double max_seconds) {
          py::gil_scoped_release nogil;
          return device_reads(path, block, queue_depth, reads, sequential, max_seconds);
        },
        py::arg("path"), py::arg("block"), py::arg("queue_depth"), py::arg("reads"), py::arg("sequential"),
        py::arg("max_seconds"));
  m.def("slot_read_ns", [](const std::string& path, int64_t slot_bytes, int64_t reads, bool use_mmap) {
    py::gil_scoped_release nogil;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path);
    struct stat st;
    ::fstat(fd, &st);
    const int64_t slots = st.st_size / slot_bytes;
    void* map = ::mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    std::vector<uint8_t> buf(slot_bytes);
    std::mt19937_64 rng(1);
    std::vector<int64_t> idx(reads);
    for (auto& i : idx) i = static_cast<int64_t>(rng() % slots) * slot_bytes;
    double ns = 0;
    uint64_t sink = 0;
    for (int pass = 0; pass < 2; ++pass) {  // the second pass runs with the file cached
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t o : idx) {
        if (use_mmap) std::memcpy(buf.data(), static_cast<const uint8_t*>(map) + o, slot_bytes);
        else if (::pread(fd, buf.data(), slot_bytes, o) != slot_bytes) throw std::runtime_error("short read");
        sink += buf[0];
      }
      ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / reads;
    }
    ::munmap(map, st.st_size);
    ::close(fd);
    return ns + static_cast<double>(sink & 0);
  });
}
