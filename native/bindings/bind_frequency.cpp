// pybind11 bindings of the frequency-aware table
// (native/frequency/frequency_table.h): conversions only (convert.h);
// embedlookup/frequency.py validates arguments first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../frequency/frequency_table.h"
#include "../frequency/hbm_cache_policy.h"
#include "convert.h"

namespace py = pybind11;
using namespace embedlookup;
using namespace embedlookup::bind;

namespace {
py::tuple call_stats(const CallStats& c) {
  return py::make_tuple(c.hits, c.misses, c.admitted, c.rejected, c.evicted, c.hot_hits);
}
}  // namespace

void bind_frequency(py::module_& m) {
  // Options by name (native/include/embedlookup/options.h); enums as ints.
  py::class_<FrequencyOptions>(m, "FrequencyOptions")
      .def(py::init<>())
      .def_readwrite("half_life", &FrequencyOptions::half_life)
      .def_readwrite("budget_rows", &FrequencyOptions::budget_rows)
      .def_property(
          "policy", [](const FrequencyOptions& f) { return static_cast<int>(f.policy); },
          [](FrequencyOptions& f, int v) { f.policy = static_cast<EvictionPolicy>(v); })
      .def_readwrite("evict_fraction", &FrequencyOptions::evict_fraction)
      .def_readwrite("ttl", &FrequencyOptions::ttl)
      .def_readwrite("ttl_interval", &FrequencyOptions::ttl_interval)
      .def_readwrite("admit_count", &FrequencyOptions::admit_count)
      .def_readwrite("admit_probability", &FrequencyOptions::admit_probability)
      .def_readwrite("admit_seed", &FrequencyOptions::admit_seed)
      .def_readwrite("sketch_width", &FrequencyOptions::sketch_width)
      .def_readwrite("sketch_depth", &FrequencyOptions::sketch_depth)
      .def_property(
          "default_row", [](const FrequencyOptions& f) { return static_cast<int>(f.default_row); },
          [](FrequencyOptions& f, int v) { f.default_row = static_cast<DefaultRowKind>(v); })
      .def_readwrite("hot_fraction", &FrequencyOptions::hot_fraction);

  py::class_<FrequencyTable, EmbeddingTable>(m, "FrequencyTable")
      .def(py::init([](const TableOptions& t, const FrequencyOptions& f) { return new FrequencyTable(t, f); }),
           py::arg("table_options"), py::arg("frequency_options"))
      .def("lookup",
           [](FrequencyTable& t, py::array keys, py::array out, bool train, py::object found, py::object weights) {
             uint8_t* f = opt_ptr<uint8_t>(found);
             const int64_t* k = cptr<int64_t>(keys);
             const float* w = opt_cptr<float>(weights);
             float* o = ptr<float>(out);
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
             const Bags b = bags(values, offsets, n_bags, mode, pool_w);
             const float* sw = opt_cptr<float>(score_w);
             float* o = ptr<float>(out);
             CallStats c;
             {
               py::gil_scoped_release nogil;
               c = t.pooled_lookup(b, o, train, sw);
             }
             return call_stats(c);
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
      .def("set_discard_evicted", &FrequencyTable::set_discard_evicted, py::arg("discard"))
      .def("take_evicted",
           [](FrequencyTable& t) {
             EvictedRows e = t.take_evicted();
             const py::ssize_t n = static_cast<py::ssize_t>(e.keys.size());
             py::dict d;
             d["keys"] = owned_array(std::move(e.keys), {n});
             d["rows"] = owned_array(std::move(e.rows), {n, static_cast<py::ssize_t>(t.dim())});
             d["optimizer_state"] = owned_array(std::move(e.state), {n, static_cast<py::ssize_t>(e.state_dim)});
             d["scores"] = owned_array(std::move(e.scores), {n});
             d["last_step"] = owned_array(std::move(e.last), {n});
             return d;
           })
      .def("stats",
           [](const FrequencyTable& t) {
             const FrequencyStats s = t.stats();
             py::dict d = stats_dict<int64_t>({{"hits", s.totals.hits},
                                               {"misses", s.totals.misses},
                                               {"admitted", s.totals.admitted},
                                               {"rejected", s.totals.rejected},
                                               {"evicted", s.totals.evicted},
                                               {"hot_hits", s.totals.hot_hits},
                                               {"clock", s.clock},
                                               {"rows", s.rows},
                                               {"hot_rows", s.hot_rows},
                                               {"relayout_moves", s.relayout_moves},
                                               {"relayouts_completed", s.relayouts_completed},
                                               {"grads_dropped", s.grads_dropped},
                                               {"cold_updates", s.cold_updates},
                                               {"evicted_pending", s.evicted_pending},
                                               {"index_bytes", static_cast<int64_t>(s.index_bytes)},
                                               {"row_bytes", static_cast<int64_t>(s.row_bytes)},
                                               {"optimizer_state_bytes", static_cast<int64_t>(s.state_bytes)},
                                               {"metadata_bytes", static_cast<int64_t>(s.metadata_bytes)},
                                               {"sketch_bytes", static_cast<int64_t>(s.sketch_bytes)},
                                               {"evicted_buffer_bytes", static_cast<int64_t>(s.evicted_buffer_bytes)}});
             if (t.has_cold_rows())
               d.attr("update")(stats_dict<int64_t>({{"cold_rows", s.cold_rows},
                                                     {"cold_row_bytes", s.cold_row_bytes},
                                                     {"cold_state_bytes", s.cold_state_bytes},
                                                     {"cold_metadata_bytes", s.cold_metadata_bytes},
                                                     {"cold_index_bytes", s.cold_index_bytes},
                                                     {"demoted", s.cold_demoted},
                                                     {"promoted", s.cold_promoted},
                                                     {"cold_dropped", s.cold_dropped}}));
             d["relayout_pause_max_ms"] = s.relayout_pause_max_ns * 1e-6;
             d["evict_pause_max_ms"] = s.evict_pause_max_ns * 1e-6;
             return d;
           })
      .def("inspect",
           [](const FrequencyTable& t, py::array keys) {
             const int64_t n = keys.size();
             py::array_t<float> score(n);
             py::array_t<uint32_t> last(n), id(n);
             const int64_t* k = cptr<int64_t>(keys);
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
      // What embedlookup/torch/_ops.py calls: pooled lookups that return (call stats, layout epoch) and fill `ids`
      // (uint32, n); `argmax` (int64, n_bags x dim) selects max pooling.
      .def("pooled_lookup_ids",
           [](FrequencyTable& t, py::array values, py::array offsets, int64_t n_bags, int mode, py::object pool_w,
              py::array out, bool train, py::array ids, py::object argmax) {
             const Bags b = bags(values, offsets, n_bags, mode, pool_w);
             float* o = ptr<float>(out);
             uint32_t* id = ptr<uint32_t>(ids);
             int64_t* am = opt_ptr<int64_t>(argmax);
             CallStats c;
             uint64_t epoch = 0;
             {
               py::gil_scoped_release nogil;
               c = am ? t.pooled_max_argmax(b, o, am, train, id, &epoch)
                      : t.pooled_lookup_ids(b, o, train, nullptr, id, &epoch);
             }
             return py::make_tuple(call_stats(c), epoch);
           })
      // Precision that follows frequency (embedlookup/frequency.py checks the arguments).
      .def("enable_cold_rows",
           [](FrequencyTable& t, int row_type, int64_t budget_bytes, int64_t hot_row_bytes, int64_t cold_row_bytes,
              double hot_share, int64_t state_floats) {
             ColdRowsOptions o;
             o.type = static_cast<RowType>(row_type);
             o.budget_bytes = budget_bytes;
             o.hot_row_bytes = hot_row_bytes;
             o.cold_row_bytes = cold_row_bytes;
             o.hot_share = hot_share;
             o.state_floats = state_floats;
             t.enable_cold_rows(o);
           })
      .def("cold_keys",
           [](const FrequencyTable& t) {
             std::vector<int64_t> k;
             {
               py::gil_scoped_release nogil;
               k = t.cold_keys();
             }
             const py::ssize_t n = static_cast<py::ssize_t>(k.size());
             return owned_array(std::move(k), {n});
           })
      .def("cold_slot_bytes",
           [](const FrequencyTable& t) {
             return t.has_cold_rows() ? static_cast<const ColdRowStore&>(*t.tier()).slot_bytes() : 0;
           })
      .def("save_state",
           [](const FrequencyTable& t) {
             FrequencyTable::SavedState s = t.save_state();
             py::dict d;
             d["clock"] = s.clock;
             const py::ssize_t ns = static_cast<py::ssize_t>(s.sketch.size()),
                               nr = static_cast<py::ssize_t>(s.cold_row.size()),
                               nc = static_cast<py::ssize_t>(s.cold_state.size());
             d["sketch"] = owned_array(std::move(s.sketch), {ns});
             d["cold_row"] = owned_array(std::move(s.cold_row), {nr});
             d["cold_state"] = owned_array(std::move(s.cold_state), {nc});
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
             const int64_t* k = cptr<int64_t>(keys);
             const float* sc = cptr<float>(scores);
             const uint32_t* l = cptr<uint32_t>(last);
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

  // The HBM cache's host-side policy (native/frequency/hbm_cache_policy.h);
  // embedlookup/cache_policy.py validates arguments first.
  py::class_<CachePolicyOptions>(m, "CachePolicyOptions")
      .def(py::init<>())
      .def_readwrite("slots", &CachePolicyOptions::slots)
      .def_readwrite("half_life", &CachePolicyOptions::half_life)
      .def_readwrite("admit_count", &CachePolicyOptions::admit_count)
      .def_readwrite("sketch_width", &CachePolicyOptions::sketch_width)
      .def_readwrite("sketch_depth", &CachePolicyOptions::sketch_depth);
  py::class_<HbmCachePolicy>(m, "HbmCachePolicy")
      .def(py::init<const CachePolicyOptions&>())
      .def("plan",
           [](HbmCachePolicy& c, const py::array& keys, bool write) {
             CachePlan p;
             {
               py::gil_scoped_release nogil;
               p = c.plan(cptr<int64_t>(keys), n_rows(keys), write);
             }
             auto arr32 = [](std::vector<int32_t>&& v) {
               const auto n = static_cast<py::ssize_t>(v.size());
               return owned_array(std::move(v), {n});
             };
             auto arr64 = [](std::vector<int64_t>&& v) {
               const auto n = static_cast<py::ssize_t>(v.size());
               return owned_array(std::move(v), {n});
             };
             py::dict d;
             d["slot_of"] = arr32(std::move(p.slot_of));
             d["writeback_slots"] = arr32(std::move(p.writeback_slots));
             d["writeback_keys"] = arr64(std::move(p.writeback_keys));
             d["evict_slots"] = arr32(std::move(p.evict_slots));
             d["evict_keys"] = arr64(std::move(p.evict_keys));
             d["fill_slots"] = arr32(std::move(p.fill_slots));
             d["fill_keys"] = arr64(std::move(p.fill_keys));
             d["hits"] = p.hits;
             d["misses"] = p.misses;
             return d;
           })
      .def("release", &HbmCachePolicy::release)
      .def("mark_dirty", [](HbmCachePolicy& c, const py::array& keys) { c.mark_dirty(cptr<int64_t>(keys), n_rows(keys)); })
      .def("take_dirty",
           [](HbmCachePolicy& c) {
             auto r = c.take_dirty();
             const auto n = static_cast<py::ssize_t>(r.first.size());
             return py::make_tuple(owned_array(std::move(r.first), {n}), owned_array(std::move(r.second), {n}));
           })
      .def("slot_of", &HbmCachePolicy::slot_of)
      .def("key_of", &HbmCachePolicy::key_of)
      .def("dirty", &HbmCachePolicy::dirty)
      .def("estimate", &HbmCachePolicy::estimate)
      .def_property_readonly("slots", &HbmCachePolicy::slots)
      .def_property_readonly("used", &HbmCachePolicy::used)
      .def_property_readonly("clock", &HbmCachePolicy::clock)
      .def_property_readonly("pending", &HbmCachePolicy::pending);
  py::class_<HostRowIndex>(m, "HostRowIndex")
      .def(py::init<>())
      .def("resolve",
           [](HostRowIndex& h, const py::array& keys, bool insert) {
             const int64_t n = n_rows(keys);
             std::vector<int64_t> rows(static_cast<size_t>(n));
             {
               py::gil_scoped_release nogil;
               h.resolve(cptr<int64_t>(keys), n, insert, rows.data());
             }
             return owned_array(std::move(rows), {static_cast<py::ssize_t>(n)});
           })
      .def("keys",
           [](const HostRowIndex& h) {
             std::vector<int64_t> k = h.keys();
             const auto n = static_cast<py::ssize_t>(k.size());
             return owned_array(std::move(k), {n});
           })
      .def_property_readonly("size", &HostRowIndex::size);
}
