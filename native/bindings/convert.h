// The bindings' one helper header: NumPy <-> pointer conversions, owned
// results, stats dicts and the argument views shared by Table and
// FrequencyTable. The Python layer (embedlookup/_checks.py) validates dtypes,
// shapes, offsets and overlaps first, so these receive contiguous arrays of the
// right dtype and borrow them without copying.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "embedlookup/optimizer.h"
#include "embedlookup/options.h"

namespace embedlookup {
namespace bind {

namespace py = pybind11;

template <class T>
T* ptr(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}
template <class T>
const T* cptr(const py::array& a) {
  return static_cast<const T*>(a.data());
}
// None -> nullptr.
template <class T>
const T* opt_cptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const T*>(o.cast<py::array>().data());
}
template <class T>
T* opt_ptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<T*>(o.cast<py::array>().mutable_data());
}

inline int64_t n_rows(const py::array& a) { return a.ndim() ? a.shape(0) : 0; }

// Hands a vector to NumPy without a copy: the array owns it through a capsule.
template <class T>
py::array_t<T> owned_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

// A stats struct as a dict: {"name": value, ...}.
template <class V = int64_t>
py::dict stats_dict(std::initializer_list<std::pair<const char*, V>> fields) {
  py::dict d;
  for (const auto& f : fields) d[f.first] = f.second;
  return d;
}

// The jagged batch of a pooled call: values, offsets (both int64), the bag
// count, the mode and optional per-value weights.
inline Bags bags(const py::array& values, const py::array& offsets, int64_t n_bags, int mode,
                 const py::object& weights) {
  Bags b;
  b.values = cptr<int64_t>(values);
  b.n = values.size();
  b.offsets = cptr<int64_t>(offsets);
  b.n_offsets = offsets.size();
  b.n_bags = n_bags;
  b.mode = static_cast<PoolMode>(mode);
  b.weights = opt_cptr<float>(weights);
  return b;
}

// apply_pooled_gradients (the fused backward of a pooled lookup, called by
// embedlookup/torch/_ops.py), bound on Table and FrequencyTable with each
// class's own implementation (FrequencyTable routes row-less values to its
// default row).
template <class T, class Class>
void def_apply_pooled_gradients(Class&& cls) {
  cls.def(
      "apply_pooled_gradients",
      [](T& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object weights, py::object argmax,
         py::array grad_out, const OptimSpec& o, py::object ids, uint64_t ids_epoch) {
        const Bags b = bags(values, offsets, n_bags, mode, weights);
        const int64_t* am = opt_cptr<int64_t>(argmax);
        const uint32_t* hint = opt_cptr<uint32_t>(ids);
        const float* g = cptr<float>(grad_out);
        const int64_t gs =
            grad_out.ndim() == 2 ? grad_out.strides(0) / static_cast<int64_t>(sizeof(float)) : t.dim();
        py::gil_scoped_release nogil;
        t.apply_pooled_gradients(b, am, g, gs, o, hint, ids_epoch);
      },
      py::arg("values"), py::arg("offsets"), py::arg("n_bags"), py::arg("mode"), py::arg("weights"),
      py::arg("argmax"), py::arg("grad_out"), py::arg("optimizer"), py::arg("ids") = py::none(),
      py::arg("ids_epoch") = 0);
}

}  // namespace bind
}  // namespace embedlookup
