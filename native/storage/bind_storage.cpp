// pybind11 bindings of the storage part: the file tier, checkpoint/delta
// methods of Table, snapshot headers. Conversions only; the Python layer
// (embedlookup/storage.py, table.py) checks arguments first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <random>

#include "../core/table.h"
#include "file_tier.h"
#include "snapshot.h"

namespace py = pybind11;
using namespace embedlookup;

namespace {

template <class T>
py::array_t<T> owned_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

py::dict header_dict(const RowBatch& b, size_t n_rows, size_t n_dead) {
  py::dict d;
  d["kind"] = b.full ? "checkpoint" : "delta";
  d["dim"] = b.dim;
  d["dtype"] = "float32";
  d["lineage"] = b.lineage;
  d["from_version"] = b.from_version;
  d["to_version"] = b.to_version;
  d["rows"] = n_rows;
  d["tombstones"] = n_dead;
  d["optimizer_kind"] = static_cast<int>(b.state_kind);
  d["state_init"] = b.state_init;
  d["state_floats"] = b.state_floats;
  d["step"] = b.step;
  d["init_kind"] = static_cast<int>(b.init.kind);
  d["init_a"] = b.init.a;
  d["init_b"] = b.init.b;
  d["init_seed"] = b.init.seed;
  d["capacity"] = b.capacity;
  d["has_versions"] = b.has_versions;
  return d;
}

// Header fields n_rows / n_dead of an encoded snapshot (offsets 56 / 64).
std::pair<size_t, size_t> counts(const uint8_t* p) {
  int64_t n, nd;
  std::memcpy(&n, p + 56, 8);
  std::memcpy(&nd, p + 64, 8);
  return {static_cast<size_t>(n), static_cast<size_t>(nd)};
}

py::buffer_info bytes_of(const py::buffer& b) {
  py::buffer_info info = b.request();
  if (info.ndim > 1 && !(info.strides.back() == info.itemsize))
    throw std::invalid_argument("delta: expected a contiguous bytes-like object");
  return info;
}

}  // namespace

void bind_storage(py::module_& m) {
  py::register_exception<TierFullError>(m, "TierFullError", PyExc_RuntimeError);
  py::register_exception<SnapshotFormatError>(m, "SnapshotFormatError", PyExc_ValueError);
  py::register_exception<TierFormatError>(m, "TierFormatError", PyExc_ValueError);

  py::class_<StorageTier, std::shared_ptr<StorageTier>>(m, "StorageTier");
  py::class_<FileTier, StorageTier, std::shared_ptr<FileTier>>(m, "FileTier")
      .def(py::init([](const std::string& path, int64_t dim, int64_t state_floats, int64_t capacity) {
             py::gil_scoped_release nogil;
             return std::make_shared<FileTier>(path, dim, state_floats, capacity);
           }),
           py::arg("path"), py::arg("dim"), py::arg("state_floats"), py::arg("capacity"))
      .def_property_readonly("dim", &FileTier::dim)
      .def_property_readonly("state_floats", &FileTier::state_floats)
      .def_property_readonly("capacity", &FileTier::capacity)
      .def_property_readonly("path", &FileTier::path)
      .def_property_readonly("recovered", &FileTier::recovered)
      .def_property_readonly("slot_bytes", &FileTier::slot_bytes)
      .def("__len__", &FileTier::size)
      .def("get",
           [](FileTier& t, py::array_t<int64_t, py::array::c_style | py::array::forcecast> keys) {
             const int64_t n = keys.size(), d = t.dim(), sf = t.state_floats();
             py::array_t<float> rows({n, d});
             py::array_t<float> state({n, sf});
             py::array_t<uint64_t> ver(n);
             py::array_t<bool> found(n);
             const int64_t* k = keys.data();
             float* r = rows.mutable_data();
             float* s = state.mutable_data();
             uint64_t* v = ver.mutable_data();
             uint8_t* f = reinterpret_cast<uint8_t*>(found.mutable_data());
             {
               py::gil_scoped_release nogil;
               std::fill(r, r + n * d, 0.0f);
               std::fill(s, s + n * sf, 0.0f);
               std::fill(v, v + n, 0);
               t.get(k, n, r, sf ? s : nullptr, v, f);
             }
             return py::make_tuple(rows, state, ver, found);
           })
      .def("set",
           [](FileTier& t, py::array keys, py::array rows, py::object state, py::object versions) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const float* r = static_cast<const float*>(rows.data());
             const float* s = state.is_none() ? nullptr : static_cast<const float*>(state.cast<py::array>().data());
             const uint64_t* v =
                 versions.is_none() ? nullptr : static_cast<const uint64_t*>(versions.cast<py::array>().data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.set(k, n, r, s, v);
           })
      .def("erase",
           [](FileTier& t, py::array keys) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             return t.erase(k, n);
           })
      .def("flush", [](FileTier& t) {
        py::gil_scoped_release nogil;
        t.flush();
      })
      .def("close", [](FileTier& t) {
        py::gil_scoped_release nogil;
        t.close();
      })
      .def("keys",
           [](const FileTier& t, uint64_t since) {
             std::vector<int64_t> k;
             {
               py::gil_scoped_release nogil;
               t.scan(since, k);
             }
             std::sort(k.begin(), k.end());
             const py::ssize_t n = static_cast<py::ssize_t>(k.size());
             return owned_array(std::move(k), {n});
           },
           py::arg("since") = 0)
      .def("stats", [](const FileTier& t) {
        const TierStats s = t.stats();
        py::dict d;
        d["reads"] = s.reads;
        d["writes"] = s.writes;
        d["erases"] = s.erases;
        d["bytes_read"] = s.bytes_read;
        d["bytes_written"] = s.bytes_written;
        d["flushes"] = s.flushes;
        return d;
      });

  auto table = py::reinterpret_borrow<py::class_<EmbeddingTable>>(m.attr("Table"));
  table.def_property_readonly("version", &EmbeddingTable::version)
      .def_property_readonly("lineage", &EmbeddingTable::lineage)
      .def("export_delta",
           [](const EmbeddingTable& t, uint64_t since, bool full, bool with_versions) {
             std::vector<uint8_t> bytes;
             {
               py::gil_scoped_release nogil;
               RowBatch b;
               t.collect(since, full, with_versions, b);
               encode_snapshot(b, bytes);
             }
             const py::ssize_t n = static_cast<py::ssize_t>(bytes.size());
             return owned_array(std::move(bytes), {n});
           },
           py::arg("since"), py::arg("full"), py::arg("with_versions"))
      .def("apply_delta",
           [](EmbeddingTable& t, py::buffer buf) {
             py::buffer_info info = bytes_of(buf);
             const auto* p = static_cast<const uint8_t*>(info.ptr);
             const size_t n = static_cast<size_t>(info.size * info.itemsize);
             py::gil_scoped_release nogil;
             t.apply_batch(decode_snapshot(p, n));  // validates all before any change
           })
      .def("save",
           [](const EmbeddingTable& t, const std::string& path, uint64_t since, bool full) {
             py::gil_scoped_release nogil;
             RowBatch b;
             t.collect(since, full, true, b);
             write_snapshot_file(b, path);
             return b.to_version;
           },
           py::arg("path"), py::arg("since"), py::arg("full"))
      .def("apply_file",
           [](EmbeddingTable& t, const std::string& path) {
             py::gil_scoped_release nogil;
             MappedSnapshot snap(path);  // validated, mapped, no copy
             t.apply_batch(snap.view());
           })
      .def("attach_tier", &EmbeddingTable::attach_tier, py::arg("tier"), py::arg("memory_rows"), py::arg("promote"),
           py::call_guard<py::gil_scoped_release>())
      .def("demote",
           [](EmbeddingTable& t, py::array keys) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             return t.demote(k, n);
           })
      .def("tier_counters", [](const EmbeddingTable& t) {
        const auto c = t.tier_counters();
        py::dict d;
        d["memory_hits"] = c.memory_hits;
        d["tier_hits"] = c.tier_hits;
        d["promotions"] = c.promotions;
        d["demotions"] = c.demotions;
        d["memory_rows"] = c.memory_rows;
        return d;
      });

  m.def("snapshot_info", [](py::buffer buf) {
    py::buffer_info info = bytes_of(buf);
    const auto* p = static_cast<const uint8_t*>(info.ptr);
    const size_t n = static_cast<size_t>(info.size * info.itemsize);
    RowBatch b = decode_snapshot_header(p, n);
    auto c = counts(p);
    py::dict d = header_dict(b, c.first, c.second);
    d["bytes"] = n;
    return d;
  });
  m.def("snapshot_file_info", [](const std::string& path) {
    RowBatch b = read_snapshot_file_header(path);
    // counts are re-derived from the header through a second small read
    std::vector<uint8_t> h(kSnapshotHeaderBytes);
    FILE* f = std::fopen(path.c_str(), "rb");
    size_t got = f ? std::fread(h.data(), 1, h.size(), f) : 0;
    if (f) std::fclose(f);
    if (got != h.size()) throw SnapshotFormatError("truncated");
    auto c = counts(h.data());
    return header_dict(b, c.first, c.second);
  });
  // Benchmark helper (bench/bench_storage.py): ns per random slot read of an
  // existing file through a shared read-only mapping (mmap=True) or pread.
  m.def("_slot_read_ns", [](const std::string& path, int64_t slot_bytes, int64_t reads, bool use_mmap) {
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
    return ns + static_cast<double>(sink & 0) ;
  });
  m.def("snapshot_header_bytes", [] { return kSnapshotHeaderBytes; });
}
