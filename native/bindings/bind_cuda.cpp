// pybind11 bindings of the CUDA table: conversions only. embedlookup/cuda.py
// checks dtypes, shapes and devices first and passes raw device addresses
// (torch's data_ptr()) and the current stream, so nothing is copied here.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include "../cuda/cuda_table.h"

namespace py = pybind11;
using namespace embedlookup;
using cuda::CudaTable;

namespace {

template <class T>
T* dptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cuda::Stream stream(uintptr_t s) { return reinterpret_cast<cuda::Stream>(s); }

}  // namespace

void bind_cuda(py::module_& m) {
  py::register_exception<cuda::DeviceMemoryError>(m, "DeviceMemoryError", PyExc_MemoryError);
  py::register_exception<cuda::CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.attr("cuda_built") = true;
  m.def(
      "cuda_device_count",
      []() -> py::tuple {
        int n = 0;
        const cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) {
          cudaGetLastError();
          return py::make_tuple(0, std::string(cudaGetErrorString(e)));
        }
        return py::make_tuple(n, std::string());
      },
      "(number of CUDA devices, reason when none could be counted).");
  m.def("cuda_runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });

  m.def(
      "cuda_pool_raw_rows",
      [](uintptr_t rows, int64_t n_rows, int64_t row_bytes, int64_t dim, int kind, uintptr_t ids, int64_t n,
         uintptr_t offsets, int64_t n_offsets, int64_t n_bags, int mode, uintptr_t weights, uintptr_t out,
         uintptr_t s) {
        const cuda::RawRowsView r{dptr<const uint8_t>(rows), n_rows, row_bytes, dim, static_cast<cuda::RowKind>(kind)};
        py::gil_scoped_release nogil;
        cuda::pool_raw_rows(r, dptr<const int64_t>(ids), n, dptr<const int64_t>(offsets), n_offsets, n_bags,
                            static_cast<PoolMode>(mode), dptr<const float>(weights), dptr<float>(out), stream(s));
      },
      "Pooled lookup over raw rows in a storage type (device addresses; embedlookup/cuda.py checks them).");

  // The cached table's kernels (native/cuda/cache_cuda.cu): embedlookup/cuda.py
  // (CachedCudaTable) owns the arrays, runs the host policy and checks arguments.
  auto view = [](uintptr_t hbm, uintptr_t hbm_state, uintptr_t host, uintptr_t host_state, int64_t dim,
                 int64_t stride, int64_t state_stride) {
    return cuda::CachedView{dptr<float>(hbm), dptr<float>(hbm_state), dptr<float>(host), dptr<float>(host_state),
                            dim, stride, state_stride};
  };
  m.def("cuda_cached_pool",
        [view](py::tuple v, uintptr_t slot_of, uintptr_t host_row, int64_t n, uintptr_t offsets, int64_t n_offsets,
               int64_t n_bags, int mode, uintptr_t weights, uintptr_t out, uintptr_t s) {
          const cuda::CachedView cv = view(v[0].cast<uintptr_t>(), v[1].cast<uintptr_t>(), v[2].cast<uintptr_t>(),
                                           v[3].cast<uintptr_t>(), v[4].cast<int64_t>(), v[5].cast<int64_t>(),
                                           v[6].cast<int64_t>());
          py::gil_scoped_release nogil;
          cuda::cached_pool(cv, dptr<const int32_t>(slot_of), dptr<const int64_t>(host_row), n,
                            dptr<const int64_t>(offsets), n_offsets, n_bags, static_cast<PoolMode>(mode),
                            dptr<const float>(weights), dptr<float>(out), stream(s));
        });
  m.def("cuda_cached_gather",
        [view](py::tuple v, uintptr_t slot_of, uintptr_t host_row, int64_t n, uintptr_t out, uintptr_t s) {
          const cuda::CachedView cv = view(v[0].cast<uintptr_t>(), v[1].cast<uintptr_t>(), v[2].cast<uintptr_t>(),
                                           v[3].cast<uintptr_t>(), v[4].cast<int64_t>(), v[5].cast<int64_t>(),
                                           v[6].cast<int64_t>());
          py::gil_scoped_release nogil;
          cuda::cached_gather(cv, dptr<const int32_t>(slot_of), dptr<const int64_t>(host_row), n, dptr<float>(out),
                              stream(s));
        });
  m.def("cuda_cached_move",
        [view](py::tuple v, uintptr_t slots, uintptr_t host_rows, int64_t n, bool to_host, uintptr_t s) {
          const cuda::CachedView cv = view(v[0].cast<uintptr_t>(), v[1].cast<uintptr_t>(), v[2].cast<uintptr_t>(),
                                           v[3].cast<uintptr_t>(), v[4].cast<int64_t>(), v[5].cast<int64_t>(),
                                           v[6].cast<int64_t>());
          py::gil_scoped_release nogil;
          cuda::cached_move(cv, dptr<const int32_t>(slots), dptr<const int64_t>(host_rows), n, to_host, stream(s));
        });
  m.def("cuda_cached_update",
        [view](py::tuple v, uintptr_t loc_slot, uintptr_t loc_host, int64_t n_loc, uintptr_t seg, uintptr_t perm,
               uintptr_t grads, const OptimSpec& o, int64_t step, uintptr_t s) {
          const cuda::CachedView cv = view(v[0].cast<uintptr_t>(), v[1].cast<uintptr_t>(), v[2].cast<uintptr_t>(),
                                           v[3].cast<uintptr_t>(), v[4].cast<int64_t>(), v[5].cast<int64_t>(),
                                           v[6].cast<int64_t>());
          const StepScalars c = step_scalars(o, step);
          py::gil_scoped_release nogil;
          cuda::cached_update(cv, dptr<const int32_t>(loc_slot), dptr<const int64_t>(loc_host), n_loc,
                              dptr<const int64_t>(seg), dptr<const int64_t>(perm), dptr<const float>(grads), o, c,
                              stream(s));
        });

  py::class_<CudaTable>(m, "CudaTable")
      .def(py::init([](int64_t dim, const InitSpec& init, int64_t capacity, int device, int64_t expected_rows) {
             cuda::CudaTableOptions o;
             o.dim = dim;
             o.init = init;
             o.capacity = capacity;
             o.device = device;
             o.expected_rows = expected_rows;
             py::gil_scoped_release nogil;
             return new CudaTable(o);
           }),
           py::arg("dim"), py::arg("init"), py::arg("capacity"), py::arg("device"), py::arg("expected_rows"))
      .def_property_readonly("dim", &CudaTable::dim)
      .def_property_readonly("stride", &CudaTable::stride)
      .def_property_readonly("device", &CudaTable::device)
      .def_property_readonly("step", &CudaTable::step)
      .def_property_readonly("state_kind", [](const CudaTable& t) { return static_cast<int>(t.state_kind()); })
      .def("size", [](CudaTable& t, uintptr_t s) {
        py::gil_scoped_release nogil;
        return t.size(stream(s));
      })
      .def("lookup",
           [](CudaTable& t, uintptr_t keys, int64_t n, uintptr_t out, bool insert, uintptr_t found, uintptr_t s) {
             py::gil_scoped_release nogil;
             t.lookup(dptr<const int64_t>(keys), n, dptr<float>(out), insert, dptr<uint8_t>(found), stream(s));
           })
      .def("pooled_lookup",
           [](CudaTable& t, uintptr_t values, int64_t n, uintptr_t offsets, int64_t n_offsets, int64_t n_bags,
              bool include_last, int mode, uintptr_t weights, uintptr_t out, bool insert, bool check, uintptr_t s) {
             cuda::ArgProblem p;
             {
               py::gil_scoped_release nogil;
               p = t.pooled_lookup(dptr<const int64_t>(values), n, dptr<const int64_t>(offsets), n_offsets, n_bags,
                                   include_last, static_cast<PoolMode>(mode), dptr<const float>(weights),
                                   dptr<float>(out), insert, check, stream(s));
             }
             return py::make_tuple(p.code, p.index);
           })
      .def("assign",
           [](CudaTable& t, uintptr_t keys, int64_t n, uintptr_t rows, uintptr_t s) {
             py::gil_scoped_release nogil;
             t.assign(dptr<const int64_t>(keys), n, dptr<const float>(rows), stream(s));
           })
      .def("export_rows",
           [](CudaTable& t, uintptr_t keys, uintptr_t rows, int64_t n, uintptr_t s) {
             py::gil_scoped_release nogil;
             t.export_rows(dptr<int64_t>(keys), dptr<float>(rows), n, stream(s));
           })
      .def("apply_gradients",
           [](CudaTable& t, uintptr_t keys, int64_t n, uintptr_t grads, const OptimSpec& o, uintptr_t s) {
             py::gil_scoped_release nogil;
             t.apply_gradients(dptr<const int64_t>(keys), n, dptr<const float>(grads), o, stream(s));
           })
      .def("memory", [](CudaTable& t, uintptr_t s) {
        cuda::CudaMemory mem;
        {
          py::gil_scoped_release nogil;
          mem = t.memory(stream(s));
        }
        py::dict d;
        d["index_bytes"] = mem.index_bytes;
        d["row_bytes"] = mem.row_bytes;
        d["optimizer_state_bytes"] = mem.state_bytes;
        d["metadata_bytes"] = mem.metadata_bytes;
        d["rows"] = mem.rows;
        d["row_capacity"] = mem.row_capacity;
        return d;
      });
}
