// The embedlookup._core extension module. Each part binds itself from its own
// file (bind_*.cpp, conversions only) and is registered here with one line.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_table(py::module_& m);      // bind_table.cpp: EmbeddingTable, InitSpec, OptimSpec
void bind_frequency(py::module_& m);  // bind_frequency.cpp: FrequencyTable
void bind_storage(py::module_& m);    // bind_storage.cpp: FileTier, deltas, checkpoints
void bind_sharding(py::module_& m);   // bind_sharding.cpp: parameter-server routing
#ifdef EMBEDLOOKUP_WITH_CUDA
void bind_cuda(py::module_& m);       // bind_cuda.cpp: CudaTable
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "embedlookup native core (use the embedlookup package, not this module)";
  bind_table(m);
  bind_frequency(m);  // after bind_table: FrequencyTable derives from Table
  bind_storage(m);    // adds the version / tier methods to Table
  bind_sharding(m);
#ifdef EMBEDLOOKUP_WITH_CUDA
  bind_cuda(m);
#endif
}
