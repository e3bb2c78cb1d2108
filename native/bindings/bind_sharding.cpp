// Parameter-server routing: shard_ids and partition_by_shard (core/partition.h),
// and pool_rows, the client's pooling of rows it holds (its trainer-side cache).
// The Python layer (embedlookup/ps/_client.py) checks the arrays first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../core/partition.h"
#include "../cpu/kernels_cpu.h"
#include "convert.h"

namespace py = pybind11;
using namespace embedlookup;
using bind::cptr;

namespace {
// Hands a part's buffer to NumPy without a copy: the array owns it through a capsule.
template <class T>
py::array_t<T> owned_buffer(Buffer<T>&& v, py::ssize_t n) {
  auto* heap = new Buffer<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<Buffer<T>*>(p); });
  return py::array_t<T>({n}, heap->data(), owner);
}
}  // namespace

void bind_sharding(py::module_& m) {
  m.def(
      "shard_ids",
      [](py::array_t<int64_t, py::array::c_style> keys, uint32_t num_shards) {
        if (num_shards < 1) throw py::value_error("num_shards must be >= 1, got 0");
        py::array_t<int64_t> out(keys.size());
        const int64_t* k = keys.data();
        int64_t* o = out.mutable_data();
        int64_t n = keys.size();
        {
          py::gil_scoped_release nogil;
          shard_ids(k, n, num_shards, o);
        }
        return out;
      },
      py::arg("keys"), py::arg("num_shards"));
  m.def(
      "partition_by_shard",
      [](py::array_t<int64_t, py::array::c_style> values, py::object offsets, int64_t n_bags, py::object weights,
         bool mean_weights, uint32_t num_shards, bool positions) {
        if (num_shards < 1) throw py::value_error("num_shards must be >= 1, got 0");
        PartitionInput in;
        in.values = values.data();
        in.n = values.size();
        py::array_t<int64_t, py::array::c_style> off;
        py::array_t<float, py::array::c_style> w;
        if (!offsets.is_none()) {
          off = offsets.cast<py::array_t<int64_t, py::array::c_style>>();
          in.offsets = off.data();
          in.n_offsets = off.size();
          in.n_bags = n_bags;
          // The bags are read as given: check what the one pass relies on.
          if (n_bags < 0 || (in.n_offsets != n_bags && in.n_offsets != n_bags + 1))
            throw py::value_error("offsets: need n_bags or n_bags + 1 offsets");
          for (int64_t b = 0; b < in.n_offsets; ++b)
            if ((b == 0 ? in.offsets[0] != 0 : in.offsets[b] < in.offsets[b - 1]) || in.offsets[b] > in.n)
              throw py::value_error("offsets must start at 0, not decrease and not pass the number of values");
          if (in.n_offsets == n_bags + 1 && in.offsets[n_bags] != in.n)
            throw py::value_error("offsets: with n_bags + 1 offsets the last one must be the number of values");
        }
        if (!weights.is_none()) {
          w = weights.cast<py::array_t<float, py::array::c_style>>();
          if (w.size() != in.n) throw py::value_error("weights: need one per value");
          in.weights = w.data();
        }
        in.mean_weights = mean_weights;
        in.positions = positions;
        std::vector<ShardPart> parts;
        {
          py::gil_scoped_release nogil;
          parts = partition_by_shard(in, num_shards);
        }
        py::list out;
        for (auto& p : parts) {
          auto n = static_cast<py::ssize_t>(p.values.size());
          auto nb = static_cast<py::ssize_t>(p.offsets.size());
          bool has_off = in.offsets != nullptr, has_w = !p.weights.empty() || (n == 0 && (in.weights || mean_weights));
          py::object o_off = has_off ? py::object(owned_buffer(std::move(p.offsets), nb)) : py::none();
          py::object o_w = has_w ? py::object(owned_buffer(std::move(p.weights), n)) : py::none();
          py::object o_pos = positions ? py::object(owned_buffer(std::move(p.positions), n)) : py::none();
          out.append(py::make_tuple(owned_buffer(std::move(p.values), n), o_off, o_w, o_pos));
        }
        return out;
      },
      py::arg("values"), py::arg("offsets"), py::arg("n_bags"), py::arg("weights"), py::arg("mean_weights"),
      py::arg("num_shards"), py::arg("positions"));
  m.def(
      "distinct_keys",
      [](py::array_t<int64_t, py::array::c_style> keys) {
        if (keys.size() >= (int64_t{1} << 31)) throw py::value_error("keys: at most 2**31 - 1 keys");
        const int64_t* k = keys.data();
        const int64_t n = keys.size();
        DistinctKeys d;
        {
          py::gil_scoped_release nogil;
          d = distinct_keys(k, n);
        }
        const auto u = static_cast<py::ssize_t>(d.keys.size());
        return py::make_tuple(owned_buffer(std::move(d.keys), u), owned_buffer(std::move(d.inverse), n),
                              owned_buffer(std::move(d.counts), u));
      },
      py::arg("keys"));
  m.def(
      "pool_rows",
      [](py::array_t<float> rows, py::array_t<int64_t, py::array::c_style> idx,
         py::array_t<int64_t, py::array::c_style> offsets, int64_t n_bags, int mode, py::object weights,
         int nthreads) {
        // rows may be a view of a wider matrix (the cache's rows without their stamps): contiguous
        // within a row, any row stride.
        if (rows.ndim() != 2 || rows.strides(1) != static_cast<py::ssize_t>(sizeof(float)) || rows.strides(0) < 0 ||
            rows.strides(0) % static_cast<py::ssize_t>(sizeof(float)) != 0)
          throw py::value_error("rows: need a 2-d float32 array, each row contiguous");
        if (mode < 0 || mode > 2) throw py::value_error("mode: 0 (sum), 1 (mean) or 2 (max)");
        const int64_t m = rows.shape(0), dim = rows.shape(1), n = idx.size();
        const int64_t* ix = idx.data();
        const int64_t* off = offsets.data();
        if (n_bags < 0 || (offsets.size() != n_bags && offsets.size() != n_bags + 1))
          throw py::value_error("offsets: need n_bags or n_bags + 1 offsets");
        for (int64_t b = 0; b < offsets.size(); ++b)
          if ((b == 0 ? off[0] != 0 : off[b] < off[b - 1]) || off[b] > n)
            throw py::value_error("offsets must start at 0, not decrease and not pass the number of indices");
        for (int64_t j = 0; j < n; ++j)
          if (ix[j] < 0 || ix[j] >= m) throw py::value_error("idx: every index must be in [0, rows)");
        py::array_t<float, py::array::c_style> w;
        if (!weights.is_none()) {
          w = weights.cast<py::array_t<float, py::array::c_style>>();
          if (w.size() != n) throw py::value_error("weights: need one per index");
        }
        py::array_t<float> out({n_bags, dim});
        const float* r = rows.data();
        const int64_t stride = rows.strides(0) / static_cast<py::ssize_t>(sizeof(float));
        const float* wp = weights.is_none() ? nullptr : w.data();
        float* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          cpu::pool_rows(r, stride, ix, n, off, n_bags, dim, static_cast<PoolMode>(mode), wp, o, nthreads);
        }
        return out;
      },
      py::arg("rows"), py::arg("idx"), py::arg("offsets"), py::arg("n_bags"), py::arg("mode"), py::arg("weights"),
      py::arg("nthreads"));
}
