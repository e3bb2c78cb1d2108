// Single-work-item variant, written for FPGA OpenCL compilers (Intel FPGA SDK
// for OpenCL / oneAPI FPGA, AMD Vitis OpenCL), which turn one work item's
// loops into a deep pipeline instead of replicating work items.
//
// What makes it pipelineable:
// - launched as a task (global size 1); nothing depends on get_global_id;
// - no recursion, no dynamic allocation; the per-bag accumulator and the row
//   staging buffer are fixed-size private arrays of EL_MAX_DIM floats (the
//   host compiles with -D EL_MAX_DIM = the table's dim rounded up to 8), which
//   an FPGA compiler maps to registers / on-chip RAM;
// - every loop has a bound known at compile time or a simple counted bound:
//   the hash probe stops after EL_MAX_PROBE slots (el_common.cl);
// - each row is copied with one sequential loop over its columns (a burst
//   read from global memory), then accumulated by a second loop over columns;
// - the accumulation's loop-carried dependency is on acc[d] only, and the
//   same acc[d] is touched again only after all other columns of the row
//   (dependency distance = dim / EL_VEC iterations of the column-chunk loop),
//   so the chunk loop pipelines at II=1 once dim / EL_VEC >= the adder's
//   latency. EL_IVDEP tells the compilers that know it. The per-column
//   summation order stays the CPU engine's order (keys in bag order), so the
//   results equal the CPU engine's, bit for bit for sum and mean.
#include "el_common.cl"

#ifndef EL_MAX_DIM
#define EL_MAX_DIM 64
#endif
// Columns handled per iteration of the pipelined column loop (unrolled).
#define EL_VEC 8

#if defined(INTELFPGA_CL)
#define EL_TASK __attribute__((max_global_work_dim(0)))
#define EL_IVDEP _Pragma("ivdep")
#else
#define EL_TASK
#define EL_IVDEP
#endif

__kernel EL_TASK void el_pooled_swi(__global const long* restrict keys, __global const long* restrict offsets,
                                    long n_offsets, long n, long n_bags, __global const float* restrict weights,
                                    int has_weights, int mode, __global const long* restrict slot_keys,
                                    __global const int* restrict slot_rows, ulong mask,
                                    __global const el_row_t* restrict rows, int dim, __global float* restrict out) {
  float acc[EL_MAX_DIM];
  float row[EL_MAX_DIM];
  const float init = (mode == EL_MODE_MAX) ? -INFINITY : 0.0f;
  const int chunks = (dim + EL_VEC - 1) / EL_VEC;
  for (long b = 0; b < n_bags; ++b) {
    const long s = offsets[b];
    const long e = (b + 1 < n_offsets) ? offsets[b + 1] : n;
    for (int d = 0; d < EL_MAX_DIM; ++d) acc[d] = init;
    for (long p = s; p < e; ++p) {
      const int id = el_probe(keys[p], slot_keys, slot_rows, mask);
      const float w = has_weights ? weights[p] : 1.0f;
      // Burst read: one row, consecutive addresses. Missing keys stage zeros.
      // Compressed rows are decoded in this loop, element by element.
      for (int d = 0; d < EL_MAX_DIM; ++d)
        row[d] = (id != EL_NO_ROW && d < dim) ? el_row_value(rows, id, dim, d) : 0.0f;
      EL_IVDEP
      for (int c = 0; c < chunks; ++c) {
#pragma unroll
        for (int v = 0; v < EL_VEC; ++v) {
          const int d = c * EL_VEC + v;
          const float x = row[d];
          const float a = acc[d];
          acc[d] = (mode == EL_MODE_MAX) ? (x > a ? x : a) : (has_weights ? a + w * x : a + x);
        }
      }
    }
    const float scale = (mode == EL_MODE_MEAN && e > s) ? 1.0f / (float)(e - s) : 1.0f;
    for (int d = 0; d < dim; ++d) {
      float r = acc[d];
      if (e == s) {
        r = 0.0f;
      } else if (mode == EL_MODE_MEAN) {
        r = acc[d] * scale;
      }
      out[b * dim + d] = r;
    }
  }
}

// out[i] = row of keys[i] (zeros where missing), found[i] = whether present.
__kernel EL_TASK void el_find_swi(__global const long* restrict keys, long n, __global const long* restrict slot_keys,
                                  __global const int* restrict slot_rows, ulong mask,
                                  __global const el_row_t* restrict rows, int dim, __global float* restrict out,
                                  __global uchar* restrict found) {
  for (long i = 0; i < n; ++i) {
    const int id = el_probe(keys[i], slot_keys, slot_rows, mask);
    found[i] = id != EL_NO_ROW;
    for (int d = 0; d < dim; ++d) out[i * dim + d] = (id != EL_NO_ROW) ? el_row_value(rows, id, dim, d) : 0.0f;
  }
}
