// The binding of apply_pooled_gradients (the fused backward of a pooled
// lookup, used by embedlookup/torch/_ops.py), shared by Table and
// FrequencyTable: each class gets it with its own implementation (the
// FrequencyTable's routes row-less values to its default row).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "../core/table.h"

namespace embedlookup {

template <class T, class Class>
void def_apply_pooled_gradients(Class&& cls) {
  namespace py = pybind11;
  auto ptr = [](const py::object& o) { return o.is_none() ? nullptr : o.cast<py::array>().data(); };
  cls.def(
      "apply_pooled_gradients",
      [ptr](T& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights,
            py::object argmax, py::array grad_out, const OptimSpec& o, py::object ids, uint64_t ids_epoch) {
        const int64_t* v = static_cast<const int64_t*>(values.data());
        const int64_t* off = static_cast<const int64_t*>(offsets.data());
        const float* w = static_cast<const float*>(ptr(weights));
        const int64_t* am = static_cast<const int64_t*>(ptr(argmax));
        const uint32_t* hint = static_cast<const uint32_t*>(ptr(ids));
        const float* g = static_cast<const float*>(grad_out.data());
        const int64_t n = values.size(), n_off = offsets.size();
        const int64_t gs =
            grad_out.ndim() == 2 ? grad_out.strides(0) / static_cast<int64_t>(sizeof(float)) : t.dim();
        py::gil_scoped_release nogil;
        t.apply_pooled_gradients(v, n, off, n_off, n_bags, static_cast<PoolMode>(mode), w, am, g, gs, o, hint,
                                 ids_epoch);
      },
      py::arg("values"), py::arg("offsets"), py::arg("n_bags"), py::arg("mode"), py::arg("weights"),
      py::arg("argmax"), py::arg("grad_out"), py::arg("optimizer"), py::arg("ids") = py::none(),
      py::arg("ids_epoch") = 0);
}

}  // namespace embedlookup
