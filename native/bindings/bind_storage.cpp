// pybind11 bindings of the storage part: the file tier, checkpoint/delta
// methods of Table, snapshot headers. Conversions only; the Python layer
// (embedlookup/storage.py, table.py) checks arguments first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

#include "../core/table.h"
#include "../storage/direct_io.h"
#include "../storage/file_tier.h"
#include "../storage/snapshot.h"
#include "convert.h"

namespace py = pybind11;
using namespace pybind11::literals;
using namespace embedlookup;
using namespace embedlookup::bind;

namespace {

py::dict header_dict(const RowBatch& b) {
  py::dict d;
  d["kind"] = b.full ? "checkpoint" : "delta";
  d["dim"] = b.dim;
  d["dtype"] = "float32";  // of values as read; row_type: as stored
  d["row_type"] = row_type_name(b.row_type);
  d["lineage"] = b.lineage;
  d["from_version"] = b.from_version;
  d["to_version"] = b.to_version;
  d["rows"] = b.n_rows;
  d["tombstones"] = b.n_dead;
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
  py::register_exception<TierLockedError>(m, "TierLockedError", PyExc_RuntimeError);
  // An I/O error of the tier file: an OSError (with errno) that is also a
  // RuntimeError (what write failures raised before it existed).
  {
    py::object builtins = py::module_::import("builtins");
    py::object err = builtins.attr("type")("TierIOError",
                                           py::make_tuple(builtins.attr("OSError"), builtins.attr("RuntimeError")),
                                           py::dict("__module__"_a = "embedlookup._core"));
    m.attr("TierIOError") = err;
    static py::handle tier_io_error = err.release();
    py::register_exception_translator([](std::exception_ptr p) {
      try {
        if (p) std::rethrow_exception(p);
      } catch (const TierIOError& e) {
        py::object ex = py::reinterpret_borrow<py::object>(tier_io_error)(e.code(), e.what());
        PyErr_SetObject(tier_io_error.ptr(), ex.ptr());
      }
    });
  }
  m.def("_inject_io_fault",
        [](const std::string& op, int64_t nth, int err) {
          io_faults::Op o;
          if (op == "read") o = io_faults::kRead;
          else if (op == "write") o = io_faults::kWrite;
          else if (op == "sync") o = io_faults::kSync;
          else throw std::invalid_argument("op must be 'read', 'write' or 'sync', got '" + op + "'");
          io_faults::inject(o, nth, err);
        },
        py::arg("op"), py::arg("nth"), py::arg("errno"),
        "Test hook: the nth next read/write/sync of any tier file fails with errno (nth=0 disarms).");

  py::class_<StorageTier, std::shared_ptr<StorageTier>>(m, "StorageTier");
  py::class_<FileTier, StorageTier, std::shared_ptr<FileTier>> file_tier(m, "FileTier");
  file_tier.attr("MAX_DIM") = FileTier::kMaxDim;
  file_tier.attr("MAX_STATE_FLOATS") = FileTier::kMaxStateFloats;
  file_tier.attr("MAX_CAPACITY") = FileTier::max_capacity();
  file_tier.def(py::init([](const std::string& path, int64_t dim, int64_t state_floats, int64_t capacity,
                            int row_type) {
             py::gil_scoped_release nogil;
             return std::make_shared<FileTier>(path, dim, state_floats, capacity, static_cast<RowType>(row_type));
           }),
           py::arg("path"), py::arg("dim"), py::arg("state_floats"), py::arg("capacity"), py::arg("row_type") = 0)
      .def_property_readonly("row_type", [](const FileTier& t) { return static_cast<int>(t.row_type()); })
      .def_property_readonly("dim", &FileTier::dim)
      .def_property_readonly("state_floats", &FileTier::state_floats)
      .def_property_readonly("capacity", &FileTier::capacity)
      .def_property_readonly("path", &FileTier::path)
      .def_property_readonly("recovered", &FileTier::recovered)
      .def_property_readonly("slot_bytes", &FileTier::slot_bytes)
      .def("__len__", &FileTier::size)
      .def("set_io",
           [](FileTier& t, int mode, int threads, int64_t buffer_bytes, int64_t align) {
             py::gil_scoped_release nogil;
             t.set_io(static_cast<FileTier::IoMode>(mode), threads, buffer_bytes, align);
           })
      .def("io_info", [](const FileTier& t) {
        py::dict d;
        const char* names[] = {"mmap", "pread", "direct", "aio", "uring"};
        d["io"] = names[static_cast<int>(t.io_mode())];
        d["queue_depth"] = t.io_threads();
        d["align"] = t.io_align();
        d["io_buffer_bytes"] = t.io_buffer_bytes();
        d["device_reads"] = t.device_reads();
        d["device_bytes"] = t.device_bytes();
        d["read_seconds"] = t.read_ns() * 1e-9;
        d["write_seconds"] = t.write_ns() * 1e-9;
        d["lock_wait_seconds"] = t.lock_wait_ns() * 1e-9;
        d["stale_reads"] = t.stale_reads();
        d["io_buffers"] = t.io_buffers();
        return d;
      })
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
      .def("get_raw",
           [](FileTier& t, py::array_t<int64_t, py::array::c_style | py::array::forcecast> keys) {
             const int64_t n = keys.size(), rb = row_bytes(t.row_type(), t.dim());
             py::array_t<uint8_t> rows({n, rb});
             py::array_t<bool> found(n);
             const int64_t* k = keys.data();
             uint8_t* r = rows.mutable_data();
             uint8_t* f = reinterpret_cast<uint8_t*>(found.mutable_data());
             {
               py::gil_scoped_release nogil;
               std::fill(r, r + n * rb, uint8_t{0});
               t.get_raw(k, n, r, nullptr, nullptr, f);
             }
             return py::make_tuple(rows, found);
           })
      .def("set",
           [](FileTier& t, py::array keys, py::array rows, py::object state, py::object versions) {
             const int64_t* k = cptr<int64_t>(keys);
             const float* r = cptr<float>(rows);
             const float* s = opt_cptr<float>(state);
             const uint64_t* v = opt_cptr<uint64_t>(versions);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.set(k, n, r, s, v);
           })
      .def("erase",
           [](FileTier& t, py::array keys) {
             const int64_t* k = cptr<int64_t>(keys);
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
        return stats_dict<int64_t>({{"reads", s.reads},
                                    {"writes", s.writes},
                                    {"erases", s.erases},
                                    {"bytes_read", s.bytes_read},
                                    {"bytes_written", s.bytes_written},
                                    {"flushes", s.flushes}});
      });

  auto table = py::reinterpret_borrow<py::class_<EmbeddingTable>>(m.attr("Table"));
  table.def_property_readonly("version", &EmbeddingTable::version)
      .def_property_readonly("lineage", &EmbeddingTable::lineage)
      .def("export_delta",
           [](const EmbeddingTable& t, uint64_t since, bool full, bool with_versions, int row_type) {
             std::vector<uint8_t> bytes;
             {
               py::gil_scoped_release nogil;
               RowBatch b;
               t.collect(since, full, with_versions, b, row_type);
               encode_snapshot(b, bytes);
             }
             const py::ssize_t n = static_cast<py::ssize_t>(bytes.size());
             return owned_array(std::move(bytes), {n});
           },
           py::arg("since"), py::arg("full"), py::arg("with_versions"), py::arg("row_type") = -1)
      .def("apply_delta",
           [](EmbeddingTable& t, py::buffer buf, bool convert) {
             py::buffer_info info = bytes_of(buf);
             const auto* p = static_cast<const uint8_t*>(info.ptr);
             const size_t n = static_cast<size_t>(info.size * info.itemsize);
             py::gil_scoped_release nogil;
             t.apply_batch(decode_snapshot(p, n), convert);  // validates all before any change
           },
           py::arg("buf"), py::arg("convert") = false)
      .def("save",
           [](const EmbeddingTable& t, const std::string& path, uint64_t since, bool full, int row_type) {
             py::gil_scoped_release nogil;
             RowBatch b;
             t.collect(since, full, true, b, row_type);
             write_snapshot_file(b, path);
             return b.to_version;
           },
           py::arg("path"), py::arg("since"), py::arg("full"), py::arg("row_type") = -1)
      .def("apply_file",
           [](EmbeddingTable& t, const std::string& path, bool convert) {
             py::gil_scoped_release nogil;
             MappedSnapshot snap(path);  // validated, mapped, no copy
             t.apply_batch(snap.view(), convert);
           },
           py::arg("path"), py::arg("convert") = false)
      .def(
          "attach_tier",
          [](EmbeddingTable& t, std::shared_ptr<StorageTier> tier, int64_t memory_rows, bool promote) {
            TierOptions o;
            o.memory_rows = memory_rows;
            o.promote = promote;
            py::gil_scoped_release nogil;
            t.attach_tier(std::move(tier), o);
          },
          py::arg("tier"), py::arg("memory_rows"), py::arg("promote"))
      .def("demote",
           [](EmbeddingTable& t, py::array keys) {
             const int64_t* k = cptr<int64_t>(keys);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             return t.demote(k, n);
           })
      .def("prefetch",
           [](EmbeddingTable& t, py::array keys) {
             const int64_t* k = cptr<int64_t>(keys);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             return t.prefetch(k, n);
           })
      .def("wait_prefetch",
           [](EmbeddingTable& t, uint64_t ticket) {
             py::gil_scoped_release nogil;
             t.wait_prefetch(ticket);
           })
      .def("wait_all_prefetches",
           [](EmbeddingTable& t) {
             py::gil_scoped_release nogil;
             t.wait_all_prefetches();
           })
      .def("set_max_staged_rows", &EmbeddingTable::set_max_staged_rows)
      .def("prefetch_counters", [](const EmbeddingTable& t) {
        const auto c = t.prefetch_counters();
        return stats_dict<int64_t>({{"staged_rows", c.staged_rows},
                                    {"staged_bytes", c.staged_bytes},
                                    {"max_staged_rows", c.max_staged_rows},
                                    {"prefetched_rows", c.prefetched},
                                    {"prefetch_used_rows", c.used},
                                    {"prefetch_dropped_rows", c.dropped},
                                    {"prefetches_in_flight", c.in_flight},
                                    {"prefetch_read_ns", c.read_ns}});
      })
      .def("tier_counters", [](const EmbeddingTable& t) {
        const auto c = t.tier_counters();
        return stats_dict<int64_t>({{"memory_hits", c.memory_hits},
                                    {"tier_hits", c.tier_hits},
                                    {"promotions", c.promotions},
                                    {"demotions", c.demotions},
                                    {"memory_rows", c.memory_rows},
                                    {"tier_read_ns", c.read_ns},
                                    {"tier_write_ns", c.write_ns}});
      });

  m.def("snapshot_info", [](py::buffer buf) {
    py::buffer_info info = bytes_of(buf);
    const auto* p = static_cast<const uint8_t*>(info.ptr);
    const size_t n = static_cast<size_t>(info.size * info.itemsize);
    py::dict d = header_dict(decode_snapshot_header(p, n));
    d["bytes"] = n;
    return d;
  });
  m.def("snapshot_file_info", [](const std::string& path) { return header_dict(read_snapshot_file_header(path)); });
  m.def("snapshot_header_bytes", [] { return kSnapshotHeaderBytes; });
}
