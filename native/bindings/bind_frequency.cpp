// pybind11 bindings of the frequency-aware table (native/core/frequency.h):
// conversions only; embedlookup/frequency.py validates arguments first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../core/frequency.h"
#include "pooled_gradients.h"  // torch backend (issue 5)

namespace py = pybind11;
using namespace embedlookup;

namespace {

template <class T>
const T* opt_ptr(const py::object& o) {
  if (o.is_none()) return nullptr;
  return static_cast<const T*>(o.cast<py::array>().data());
}

py::tuple call_stats(const CallStats& c) {
  return py::make_tuple(c.hits, c.misses, c.admitted, c.rejected, c.evicted, c.hot_hits);
}

template <class T>
py::array_t<T> to_array(std::vector<T>& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

}  // namespace

void bind_frequency(py::module_& m) {
  py::class_<FrequencyTable, EmbeddingTable>(m, "FrequencyTable")
      .def(py::init([](int64_t dim, const InitSpec& init, int num_threads, double half_life, int64_t budget_rows,
                       int policy, double evict_fraction, int64_t ttl, int64_t ttl_interval, int64_t admit_count,
                       double admit_probability, uint64_t admit_seed, int64_t sketch_width, int64_t sketch_depth,
                       int default_row, double hot_fraction) {
             TableOptions t;
             t.dim = dim;
             t.init = init;
             t.num_threads = num_threads;
             FrequencyOptions f;
             f.half_life = half_life;
             f.budget_rows = budget_rows;
             f.policy = static_cast<EvictionPolicy>(policy);
             f.evict_fraction = evict_fraction;
             f.ttl = ttl;
             f.ttl_interval = ttl_interval;
             f.admit_count = admit_count;
             f.admit_probability = admit_probability;
             f.admit_seed = admit_seed;
             f.sketch_width = sketch_width;
             f.sketch_depth = sketch_depth;
             f.default_row = static_cast<DefaultRowKind>(default_row);
             f.hot_fraction = hot_fraction;
             return new FrequencyTable(t, f);
           }),
           py::arg("dim"), py::arg("init"), py::arg("num_threads"), py::arg("half_life"), py::arg("budget_rows"),
           py::arg("policy"), py::arg("evict_fraction"), py::arg("ttl"), py::arg("ttl_interval"),
           py::arg("admit_count"), py::arg("admit_probability"), py::arg("admit_seed"), py::arg("sketch_width"),
           py::arg("sketch_depth"), py::arg("default_row"), py::arg("hot_fraction"))
      .def("lookup",
           [](FrequencyTable& t, py::array keys, py::array out, bool train, py::object found, py::object weights) {
             uint8_t* f = found.is_none() ? nullptr : static_cast<uint8_t*>(found.cast<py::array>().mutable_data());
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const float* w = opt_ptr<float>(weights);
             float* o = static_cast<float*>(out.mutable_data());
             const int64_t n = keys.size();
             CallStats c;
             {
               py::gil_scoped_release nogil;
               c = t.lookup(k, n, o, train, f, w);
             }
             return call_stats(c);
           })
      .def("pooled_lookup",
           [](FrequencyTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object pool_w,
              py::array out, bool train, py::object score_w) {
             const int64_t* v = static_cast<const int64_t*>(values.data());
             const int64_t* off = static_cast<const int64_t*>(offsets.data());
             const float* pw = opt_ptr<float>(pool_w);
             const float* sw = opt_ptr<float>(score_w);
             float* o = static_cast<float*>(out.mutable_data());
             const int64_t n = values.size(), n_off = offsets.size();
             CallStats c;
             {
               py::gil_scoped_release nogil;
               c = t.pooled_lookup(v, n, off, n_off, n_bags, static_cast<PoolMode>(mode), pw, o, train, sw);
             }
             return call_stats(c);
           })
      .def("apply_gradients",
           [](FrequencyTable& t, py::array keys, py::array grads, const OptimSpec& o) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             GradSource g{static_cast<const float*>(grads.data()), grads.ndim() ? grads.shape(0) : 0, t.dim(),
                          nullptr, nullptr};
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.apply_gradients(k, n, g, o);
           })
      .def("assign",
           [](FrequencyTable& t, py::array keys, py::array rows) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const float* r = static_cast<const float*>(rows.data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.assign(k, n, r);
           })
      .def("erase",
           [](FrequencyTable& t, py::array keys) {
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             return t.erase(k, n);
           })
      .def("relayout_step",
           [](FrequencyTable& t, int64_t max_moves) {
             py::gil_scoped_release nogil;
             return t.relayout_step(max_moves);
           })
      .def("relayout",
           [](FrequencyTable& t, int64_t chunk) {
             py::gil_scoped_release nogil;
             t.relayout(chunk);
           })
      .def("take_evicted",
           [](FrequencyTable& t) {
             EvictedRows e = t.take_evicted();
             const py::ssize_t n = static_cast<py::ssize_t>(e.keys.size());
             py::dict d;
             d["keys"] = to_array(e.keys, {n});
             d["rows"] = to_array(e.rows, {n, static_cast<py::ssize_t>(t.dim())});
             d["optimizer_state"] = to_array(e.state, {n, static_cast<py::ssize_t>(e.state_dim)});
             d["scores"] = to_array(e.scores, {n});
             d["last_step"] = to_array(e.last, {n});
             return d;
           })
      .def("stats",
           [](const FrequencyTable& t) {
             const FrequencyStats s = t.stats();
             py::dict d;
             d["hits"] = s.totals.hits;
             d["misses"] = s.totals.misses;
             d["admitted"] = s.totals.admitted;
             d["rejected"] = s.totals.rejected;
             d["evicted"] = s.totals.evicted;
             d["hot_hits"] = s.totals.hot_hits;
             d["clock"] = s.clock;
             d["rows"] = s.rows;
             d["hot_rows"] = s.hot_rows;
             d["relayout_moves"] = s.relayout_moves;
             d["relayouts_completed"] = s.relayouts_completed;
             d["grads_dropped"] = s.grads_dropped;
             d["relayout_pause_max_ms"] = s.relayout_pause_max_ns * 1e-6;
             d["evict_pause_max_ms"] = s.evict_pause_max_ns * 1e-6;
             d["cold_updates"] = s.cold_updates;
             d["evicted_pending"] = s.evicted_pending;
             d["index_bytes"] = s.index_bytes;
             d["row_bytes"] = s.row_bytes;
             d["optimizer_state_bytes"] = s.state_bytes;
             d["metadata_bytes"] = s.metadata_bytes;
             d["sketch_bytes"] = s.sketch_bytes;
             d["evicted_buffer_bytes"] = s.evicted_buffer_bytes;
             return d;
           })
      .def("inspect",
           [](const FrequencyTable& t, py::array keys) {
             const int64_t n = keys.size();
             py::array_t<float> score(n);
             py::array_t<uint32_t> last(n), id(n);
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             float* sp = score.mutable_data();
             uint32_t* lp = last.mutable_data();
             uint32_t* ip = id.mutable_data();
             {
               py::gil_scoped_release nogil;
               t.inspect(k, n, sp, lp, ip);
             }
             return py::make_tuple(score, last, id);
           })
      .def("default_row", [](const FrequencyTable& t) {
        py::array_t<float> r(t.dim());
        std::copy_n(t.default_row(), t.dim(), r.mutable_data());
        return r;
      })
      // ---- torch backend (issue 5): what embedlookup/torch/_ops.py calls.
      // pooled lookups that return (call stats, layout epoch) and fill `ids`
      // (uint32, n); `argmax` (int64, n_bags x dim) selects max pooling.
      .def("pooled_lookup_ids",
           [](FrequencyTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object pool_w,
              py::array out, bool train, py::array ids, py::object argmax) {
             const int64_t* v = static_cast<const int64_t*>(values.data());
             const int64_t* off = static_cast<const int64_t*>(offsets.data());
             const float* pw = opt_ptr<float>(pool_w);
             float* o = static_cast<float*>(out.mutable_data());
             uint32_t* id = static_cast<uint32_t*>(ids.mutable_data());
             int64_t* am = argmax.is_none() ? nullptr : static_cast<int64_t*>(argmax.cast<py::array>().mutable_data());
             const int64_t n = values.size(), n_off = offsets.size();
             CallStats c;
             uint64_t epoch = 0;
             {
               py::gil_scoped_release nogil;
               c = am ? t.pooled_max_argmax(v, n, off, n_off, n_bags, o, am, train, id, &epoch)
                      : t.pooled_lookup_ids(v, n, off, n_off, n_bags, static_cast<PoolMode>(mode), pw, o, train,
                                            nullptr, id, &epoch);
             }
             return py::make_tuple(call_stats(c), epoch);
           })
      .def("save_state",
           [](const FrequencyTable& t) {
             FrequencyTable::SavedState s = t.save_state();
             py::dict d;
             d["clock"] = s.clock;
             d["sketch"] = to_array(s.sketch, {static_cast<py::ssize_t>(s.sketch.size())});
             d["cold_row"] = to_array(s.cold_row, {static_cast<py::ssize_t>(s.cold_row.size())});
             d["cold_state"] = to_array(s.cold_state, {static_cast<py::ssize_t>(s.cold_state.size())});
             return d;
           })
      .def("restore_state",
           [](FrequencyTable& t, uint32_t clock, py::array_t<uint32_t, py::array::c_style | py::array::forcecast> sketch,
              py::array_t<float, py::array::c_style | py::array::forcecast> cold_row,
              py::array_t<float, py::array::c_style | py::array::forcecast> cold_state, py::array keys,
              py::array scores, py::array last) {
             FrequencyTable::SavedState s;
             s.clock = clock;
             s.sketch.assign(sketch.data(), sketch.data() + sketch.size());
             s.cold_row.assign(cold_row.data(), cold_row.data() + cold_row.size());
             s.cold_state.assign(cold_state.data(), cold_state.data() + cold_state.size());
             const int64_t* k = static_cast<const int64_t*>(keys.data());
             const float* sc = static_cast<const float*>(scores.data());
             const uint32_t* l = static_cast<const uint32_t*>(last.data());
             const int64_t n = keys.size();
             py::gil_scoped_release nogil;
             t.restore_state(s, k, n, sc, l);
           })
      .def_property_readonly("options", [](const FrequencyTable& t) {
        const FrequencyOptions& f = t.frequency_options();
        py::dict d;
        d["half_life"] = f.half_life;
        d["budget_rows"] = f.budget_rows;
        d["policy"] = static_cast<int>(f.policy);
        d["evict_fraction"] = f.evict_fraction;
        d["ttl"] = f.ttl;
        d["ttl_interval"] = f.ttl_interval;
        d["admit_count"] = f.admit_count;
        d["admit_probability"] = f.admit_probability;
        d["admit_seed"] = f.admit_seed;
        d["sketch_width"] = f.sketch_width;
        d["sketch_depth"] = f.sketch_depth;
        d["default_row"] = static_cast<int>(f.default_row);
        d["hot_fraction"] = f.hot_fraction;
        d["num_threads"] = t.options().num_threads;
        return d;
      });
  // Same signature as Table.apply_pooled_gradients: this one routes
  // row-less values to the default row.
  def_apply_pooled_gradients<FrequencyTable>(
      py::reinterpret_borrow<py::class_<FrequencyTable, EmbeddingTable>>(m.attr("FrequencyTable")));
  // ---- end torch backend
}
