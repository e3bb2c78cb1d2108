// pybind11 bindings of EmbeddingTable (native/core/table.h): lookups,
// writes, gradients and the torch backend's training entry points.
// Conversions only (convert.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include "../core/table.h"
#include "../cpu/kernels_cpu.h"
#include "../cpu/pooling_quantized.h"
#include "convert.h"

namespace py = pybind11;
using namespace embedlookup;
using namespace embedlookup::bind;

void bind_table_training(py::module_& m);

void bind_table(py::module_& m) {

  py::register_exception<TableFullError>(m, "TableFullError", PyExc_RuntimeError);
  py::register_exception<KeyMissingError>(m, "KeyMissingError", PyExc_KeyError);

  py::class_<InitSpec>(m, "InitSpec")
      .def(py::init([](int kind, float a, float b, uint64_t seed) {
             InitSpec s;
             s.kind = static_cast<InitKind>(kind);
             s.a = a;
             s.b = b;
             s.seed = seed;
             return s;
           }),
           py::arg("kind"), py::arg("a"), py::arg("b"), py::arg("seed"));

  py::class_<OptimSpec>(m, "OptimSpec")
      .def(py::init([](int kind, float lr, float eps, float beta1, float beta2, float weight_decay, float lr_decay,
                       float initial_accumulator_value) {
             OptimSpec s;
             s.kind = static_cast<OptimKind>(kind);
             s.lr = lr;
             s.eps = eps;
             s.beta1 = beta1;
             s.beta2 = beta2;
             s.weight_decay = weight_decay;
             s.lr_decay = lr_decay;
             s.initial_accumulator_value = initial_accumulator_value;
             return s;
           }),
           py::arg("kind"), py::arg("lr"), py::arg("eps"), py::arg("beta1"), py::arg("beta2"),
           py::arg("weight_decay"), py::arg("lr_decay"), py::arg("initial_accumulator_value"));

  // Options by name (native/include/embedlookup/options.h).
  py::class_<TableOptions>(m, "TableOptions")
      .def(py::init<>())
      .def_readwrite("dim", &TableOptions::dim)
      .def_readwrite("init", &TableOptions::init)
      .def_readwrite("capacity", &TableOptions::capacity)
      .def_readwrite("num_threads", &TableOptions::num_threads)
      .def_property(
          "row_type", [](const TableOptions& o) { return static_cast<int>(o.row_type); },
          [](TableOptions& o, int t) { o.row_type = static_cast<RowType>(t); })
      .def_readwrite("rounding_seed", &TableOptions::rounding_seed);

  py::class_<EmbeddingTable>(m, "Table")
      .def(py::init([](const TableOptions& o) { return new EmbeddingTable(o); }), py::arg("options"))
      .def_property_readonly("dim", &EmbeddingTable::dim)
      .def_property_readonly("stride", &EmbeddingTable::stride)
      .def_property_readonly("step", &EmbeddingTable::step)
      .def_property_readonly("row_type", [](const EmbeddingTable& t) { return static_cast<int>(t.row_type()); })
      .def("export_raw",
           [](const EmbeddingTable& t) {
             std::vector<int64_t> keys;
             std::vector<uint8_t> raw;
             {
               py::gil_scoped_release nogil;
               t.export_raw(keys, raw);
             }
             const py::ssize_t n = static_cast<py::ssize_t>(keys.size());
             const py::ssize_t rb = static_cast<py::ssize_t>(row_bytes(t.row_type(), t.dim()));
             return py::make_tuple(owned_array(std::move(keys), {n}), owned_array(std::move(raw), {n, rb}));
           })
      .def_property_readonly("state_kind", [](const EmbeddingTable& t) { return static_cast<int>(t.state_kind()); })
      .def("__len__", &EmbeddingTable::size)
      .def("lookup",
           [](EmbeddingTable& t, py::array keys, py::array out, bool insert, py::object found) {
             uint8_t* f = opt_ptr<uint8_t>(found);
             const int64_t* k = cptr<int64_t>(keys);
             float* o = ptr<float>(out);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.lookup(k, n, o, insert, f);
           })
      .def("pooled_lookup",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights,
              py::array out, bool insert) {
             const Bags b = bags(values, offsets, n_bags, mode, weights);
             float* o = ptr<float>(out);
             py::gil_scoped_release nogil;
             t.pooled_lookup(b, o, insert);
           })
      .def("assign",
           [](EmbeddingTable& t, py::array keys, py::array rows) {
             const int64_t* k = cptr<int64_t>(keys);
             const float* r = cptr<float>(rows);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.assign(k, n, r);
           })
      .def("erase",
           [](EmbeddingTable& t, py::array keys) {
             const int64_t* k = cptr<int64_t>(keys);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             return t.erase(k, n);
           })
      .def("export_keys",
           [](const EmbeddingTable& t) {
             std::vector<int64_t> keys;
             {
               py::gil_scoped_release nogil;
               t.export_keys(keys);
             }
             const py::ssize_t n = static_cast<py::ssize_t>(keys.size());
             return owned_array(std::move(keys), {n});
           })
      .def("export",
           [](const EmbeddingTable& t) {
             std::vector<int64_t> keys;
             std::vector<float> rows;
             {
               py::gil_scoped_release nogil;
               t.export_rows(keys, rows);
             }
             const py::ssize_t n = static_cast<py::ssize_t>(keys.size());
             return py::make_tuple(owned_array(std::move(keys), {n}),
                                   owned_array(std::move(rows), {n, static_cast<py::ssize_t>(t.dim())}));
           })
      .def("apply_gradients",
           [](EmbeddingTable& t, py::array keys, py::array grads, const OptimSpec& o) {
             const int64_t* k = cptr<int64_t>(keys);
             GradSource g{cptr<float>(grads), n_rows(grads), t.dim(), nullptr, nullptr};
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.apply_gradients(k, n, g, o);
           })
      .def("memory", [](const EmbeddingTable& t) {
        const MemoryStats s = t.memory();
        return stats_dict<size_t>({{"index_bytes", s.index_bytes},
                                   {"row_bytes", s.row_bytes},
                                   {"optimizer_state_bytes", s.state_bytes},
                                   {"metadata_bytes", s.metadata_bytes},
                                   {"rows", s.rows}});
      });
  bind_table_training(m);

  // Row codecs (native/include/embedlookup/row_codec.h), for embedlookup.quantize.
  m.def("row_bytes", [](int t, int64_t dim) { return row_bytes(static_cast<RowType>(t), dim); });
  m.def("quantize_rows", [](py::array x, int t, int64_t n, int64_t dim, py::array out) {
    const float* xs = cptr<float>(x);
    uint8_t* o = ptr<uint8_t>(out);
    const RowType rt = static_cast<RowType>(t);
    const int64_t rb = row_bytes(rt, dim);
    py::gil_scoped_release nogil;
    for (int64_t i = 0; i < n; ++i)
      if (!row_representable(rt, xs + i * dim, dim))
        throw std::invalid_argument("x: row " + std::to_string(i) + " is out of the range of " + row_type_name(rt));
#pragma omp parallel for schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; ++i) encode_row(rt, xs + i * dim, dim, o + i * rb);
  });
  m.def("dequantize_rows", [](py::array raw, int t, int64_t n, int64_t dim, py::array out) {
    const uint8_t* r = cptr<uint8_t>(raw);
    float* o = ptr<float>(out);
    const RowType rt = static_cast<RowType>(t);
    const int64_t rb = row_bytes(rt, dim);
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; ++i) decode_row(rt, r + i * rb, dim, o + i * dim);
  });
  m.def("quantized_isa", &cpu::quantized_isa_name,
        "Build the compressed-row kernels dispatch to ('avx2' = AVX2+FMA+F16C, or 'generic'; "
        "EMBEDLOOKUP_GENERIC_KERNELS=1 forces 'generic').");
  m.def("isa", &cpu::isa_name, "Instruction set the CPU kernels dispatch to ('avx2' or 'generic').");
  m.def("max_threads", [] { return omp_get_max_threads(); });
  m.attr("NO_ROW") = kNoRow;  // native/include/embedlookup/row_id.h, for the OpenCL kernels
}

// The training entry points of embedlookup.torch, on the same Table class.
void bind_table_training(py::module_& m) {
  auto table = py::reinterpret_borrow<py::class_<EmbeddingTable>>(m.attr("Table"));
  def_apply_pooled_gradients<EmbeddingTable>(table);
  table
      .def("pooled_lookup_ids",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights,
              py::array out, bool insert, py::array ids) {
             const Bags b = bags(values, offsets, n_bags, mode, weights);
             float* o = ptr<float>(out);
             uint32_t* id = ptr<uint32_t>(ids);
             py::gil_scoped_release nogil;
             return t.pooled_lookup_ids(b, o, insert, id);
           })
      .def("resolve_ids",
           [](EmbeddingTable& t, py::array keys, bool insert, py::array ids) {
             const int64_t* k = cptr<int64_t>(keys);
             const int64_t n = static_cast<int64_t>(keys.size());
             uint32_t* id = ptr<uint32_t>(ids);
             py::gil_scoped_release nogil;
             return t.resolve_ids(k, n, insert, id);
           })
      .def("pooled_lookup_resolved",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights,
              py::array out, bool insert, py::array ids, uint64_t epoch, py::object fresh_ids) {
             const Bags b = bags(values, offsets, n_bags, mode, weights);
             float* o = ptr<float>(out);
             const uint32_t* id = cptr<uint32_t>(ids);
             py::array fresh_arr = fresh_ids.is_none() ? py::array() : fresh_ids.cast<py::array>();
             uint32_t* fresh = fresh_ids.is_none() ? nullptr : ptr<uint32_t>(fresh_arr);
             py::gil_scoped_release nogil;
             return t.pooled_lookup_resolved(b, id, epoch, o, insert, fresh);
           })
      .def("pooled_max_argmax",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, py::array out, py::array argmax,
              bool insert, py::array ids) {
             const Bags b = bags(values, offsets, n_bags, static_cast<int>(PoolMode::kMax), py::none());
             float* o = ptr<float>(out);
             int64_t* am = ptr<int64_t>(argmax);
             uint32_t* id = ptr<uint32_t>(ids);
             py::gil_scoped_release nogil;
             return t.pooled_max_argmax(b, o, am, insert, id);
           })
      .def_property_readonly("layout_epoch", &EmbeddingTable::layout_epoch)
      .def_property_readonly("state_stride", &EmbeddingTable::state_stride)
      .def("export_state",
           [](const EmbeddingTable& t, py::array keys) {
             const int64_t n = keys.size();
             py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(t.state_stride())});
             const int64_t* k = cptr<int64_t>(keys);
             float* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               t.export_state(k, n, o);
             }
             return out;
           })
      .def("import_state",
           [](EmbeddingTable& t, py::array keys, py::array state, const OptimSpec& o) {
             const int64_t* k = cptr<int64_t>(keys);
             const float* s = cptr<float>(state);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.import_state(k, n, s, o);
           })
      .def("set_step", &EmbeddingTable::set_step);
}
