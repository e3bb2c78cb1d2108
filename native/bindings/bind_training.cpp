// Bindings of the training entry points used by embedlookup.torch (issue 5):
// methods added to the Table class bound in module.cpp. Conversions only; the
// Python layer checks dtypes, shapes and offsets and passes contiguous arrays,
// which are borrowed, never copied.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "../core/table.h"
#include "../cpu/update_cpu.h"
#include "pooled_gradients.h"

namespace py = pybind11;
using namespace embedlookup;

namespace {
template <class T>
const T* opt_data(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const T*>(o.cast<py::array>().data());
}
}  // namespace

void bind_training(py::module_& m) {
  auto table = py::reinterpret_borrow<py::class_<EmbeddingTable>>(m.attr("Table"));
  def_apply_pooled_gradients<EmbeddingTable>(table);
  table
      .def("pooled_lookup_ids",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights,
              py::array out, bool insert, py::array ids) {
             const int64_t* v = static_cast<const int64_t*>(values.data());
             const int64_t* off = static_cast<const int64_t*>(offsets.data());
             const float* w = opt_data<float>(weights);
             float* o = static_cast<float*>(out.mutable_data());
             uint32_t* id = static_cast<uint32_t*>(ids.mutable_data());
             const int64_t n = values.size(), n_off = offsets.size();
             py::gil_scoped_release nogil;
             return t.pooled_lookup_ids(v, n, off, n_off, n_bags, static_cast<PoolMode>(mode), w, o, insert, id);
           })
      .def("pooled_max_argmax",
           [](EmbeddingTable& t, py::array values, py::array offsets, int64_t n_bags, py::array out, py::array argmax,
              bool insert, py::array ids) {
             const int64_t* v = static_cast<const int64_t*>(values.data());
             const int64_t* off = static_cast<const int64_t*>(offsets.data());
             float* o = static_cast<float*>(out.mutable_data());
             int64_t* am = static_cast<int64_t*>(argmax.mutable_data());
             uint32_t* id = static_cast<uint32_t*>(ids.mutable_data());
             const int64_t n = values.size(), n_off = offsets.size();
             py::gil_scoped_release nogil;
             return t.pooled_max_argmax(v, n, off, n_off, n_bags, o, am, insert, id);
           })
      .def_property_readonly("layout_epoch", &EmbeddingTable::layout_epoch)
      .def_property_readonly("state_stride", &EmbeddingTable::state_stride)
      .def("export_state",
           [](const EmbeddingTable& t, py::array keys) {
             const int64_t n = keys.size();
             py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(t.state_stride())});
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             float* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               t.export_state(k, n, o);
             }
             return out;
           })
      .def("import_state",
           [](EmbeddingTable& t, py::array keys, py::array state, const OptimSpec& o) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const float* s = static_cast<const float*>(state.data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.import_state(k, n, s, o);
           })
      .def("set_step", &EmbeddingTable::set_step);
}
