// Parameter-server routing: shard_ids and partition_by_shard (core/partition.h).
// The Python layer (embedlookup/ps/_client.py) checks the arrays first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../core/partition.h"
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
}
