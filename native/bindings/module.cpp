// pybind11 bindings: conversions only. The Python layer (embedlookup/_checks.py)
// validates dtypes, shapes and offsets first, so these functions receive
// contiguous arrays of the right dtype and borrow them without copying.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include "../core/table.h"
#include "../cpu/kernels_cpu.h"

namespace py = pybind11;
using namespace embedlookup;

namespace {

template <class T>
T* ptr(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}
template <class T>
const T* cptr(const py::array& a) {
  return static_cast<const T*>(a.data());
}
template <class T>
const T* opt_cptr(const py::object& o) {
  if (o.is_none()) return nullptr;
  return static_cast<const T*>(o.cast<py::array>().data());
}

int64_t n_rows(const py::array& a) { return a.ndim() ? a.shape(0) : 0; }

template <class T>
py::array_t<T> vector_to_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

}  // namespace

// Each part of the engine binds itself from its own file (bind_*.cpp) and is
// registered here with one line, so parts can grow without touching each other.
void bind_table(py::module_& m);
void bind_frequency(py::module_& m);  // frequency (issue 3): bind_frequency.cpp
void bind_training(py::module_& m);  // torch backend (issue 5): bind_training.cpp
void bind_storage(py::module_& m);  // storage (issue 4): native/storage/bind_storage.cpp
#ifdef EMBEDLOOKUP_WITH_CUDA
void bind_cuda(py::module_& m);
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "embedlookup native core (use the embedlookup package, not this module)";
  bind_table(m);
  bind_frequency(m);  // frequency (issue 3)
  bind_training(m);  // after bind_table: adds methods to Table
  bind_storage(m);  // storage (issue 4)
#ifdef EMBEDLOOKUP_WITH_CUDA
  bind_cuda(m);
#endif
}

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

  py::class_<EmbeddingTable>(m, "Table")
      .def(py::init([](int64_t dim, const InitSpec& init, int64_t capacity, int num_threads) {
             TableOptions o;
             o.dim = dim;
             o.init = init;
             o.capacity = capacity;
             o.num_threads = num_threads;
             return new EmbeddingTable(o);
           }),
           py::arg("dim"), py::arg("init"), py::arg("capacity"), py::arg("num_threads"))
      .def_property_readonly("dim", &EmbeddingTable::dim)
      .def_property_readonly("stride", &EmbeddingTable::stride)
      .def_property_readonly("step", &EmbeddingTable::step)
      .def_property_readonly("state_kind", [](const EmbeddingTable& t) { return static_cast<int>(t.state_kind()); })
      .def("__len__", &EmbeddingTable::size)
      .def("lookup",
           [](EmbeddingTable& t, py::array keys, py::array out, bool insert, py::object found) {
             uint8_t* f = found.is_none() ? nullptr : static_cast<uint8_t*>(found.cast<py::array>().mutable_data());
             const int64_t* k = cptr<int64_t>(keys);
             float* o = ptr<float>(out);
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.lookup(k, n, o, insert, f);
           })
      .def("pooled_lookup",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights,
              py::array out, bool insert) {
             const int64_t* v = cptr<int64_t>(values);
             const int64_t* off = cptr<int64_t>(offsets);
             const float* w = opt_cptr<float>(weights);
             float* o = ptr<float>(out);
             const int64_t n = values.size(), n_off = offsets.size();
             py::gil_scoped_release nogil;
             t.pooled_lookup(v, n, off, n_off, n_bags, static_cast<PoolMode>(mode), w, o, insert);
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
      .def("export",
           [](const EmbeddingTable& t) {
             std::vector<int64_t> keys;
             std::vector<float> rows;
             {
               py::gil_scoped_release nogil;
               t.export_rows(keys, rows);
             }
             const py::ssize_t n = static_cast<py::ssize_t>(keys.size());
             return py::make_tuple(vector_to_array(std::move(keys), {n}),
                                   vector_to_array(std::move(rows), {n, static_cast<py::ssize_t>(t.dim())}));
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
        py::dict d;
        d["index_bytes"] = s.index_bytes;
        d["row_bytes"] = s.row_bytes;
        d["optimizer_state_bytes"] = s.state_bytes;
        d["metadata_bytes"] = s.metadata_bytes;
        d["rows"] = s.rows;
        return d;
      });

  m.def("isa", &cpu::isa_name, "Instruction set the CPU kernels dispatch to ('avx2' or 'generic').");
  m.def("max_threads", [] { return omp_get_max_threads(); });
  m.def(
      "copy_bandwidth",
      [](int64_t bytes, int repeats, int nthreads) {
        py::gil_scoped_release nogil;
        return cpu::copy_bandwidth(bytes, repeats, nthreads > 0 ? nthreads : omp_get_max_threads());
      },
      py::arg("bytes"), py::arg("repeats"), py::arg("nthreads") = 0);
  m.def(
      "gather_bandwidth",
      [](int64_t table_bytes, int64_t row_bytes, int64_t n_rows_read, int repeats, int nthreads) {
        py::gil_scoped_release nogil;
        return cpu::gather_bandwidth(table_bytes, row_bytes, n_rows_read, repeats,
                                     nthreads > 0 ? nthreads : omp_get_max_threads());
      },
      py::arg("table_bytes"), py::arg("row_bytes"), py::arg("n_rows_read"), py::arg("repeats"),
      py::arg("nthreads") = 0);
}
