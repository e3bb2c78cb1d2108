// NDRange variant, for CPUs and GPUs (PoCL, vendor GPU drivers).
//
// Two passes: el_resolve probes one key per work item (keys are independent,
// so the probes run fully in parallel); el_pool / el_gather then run one work
// item per (column, bag) or (column, key). Work items of one work group hold
// consecutive columns of the same row, so a GPU coalesces their row reads and
// a CPU implementation (PoCL) vectorises across them. Each work item walks its
// bag's keys in order, so every column is accumulated in exactly the order the
// CPU engine uses: sums and means match it bit for bit.
#include "el_common.cl"

__kernel void el_resolve(__global const long* restrict keys, long n, __global const long* restrict slot_keys,
                         __global const int* restrict slot_rows, ulong mask, __global int* restrict ids) {
  const long i = get_global_id(0);
  if (i < n) ids[i] = el_probe(keys[i], slot_keys, slot_rows, mask);
}

// Global size (>= dim, n_bags). Bag b covers ids[offsets[b] .. end) where end
// is offsets[b + 1], or n for the last bag when there is no trailing offset.
// Missing keys (EL_NO_ROW) read as zero rows, as the CPU engine's insert=False.
__kernel void el_pool(__global const int* restrict ids, __global const long* restrict offsets, long n_offsets,
                      long n, __global const float* restrict weights, int has_weights, int mode,
                      __global const el_row_t* restrict rows, int dim, __global float* restrict out) {
  const int d = get_global_id(0);
  const long b = get_global_id(1);
  if (d >= dim) return;
  const long s = offsets[b];
  const long e = (b + 1 < n_offsets) ? offsets[b + 1] : n;
  float acc = (mode == EL_MODE_MAX) ? -INFINITY : 0.0f;
  for (long p = s; p < e; ++p) {
    const int id = ids[p];
    const float x = (id != EL_NO_ROW) ? el_row_value(rows, id, dim, d) : 0.0f;
    if (mode == EL_MODE_MAX) {
      acc = x > acc ? x : acc;  // the CPU engine's comparison, NaN rows included
    } else if (has_weights) {
      acc += weights[p] * x;
    } else {
      acc += x;
    }
  }
  float r = acc;
  if (e == s) {
    r = 0.0f;
  } else if (mode == EL_MODE_MEAN) {
    r = acc * (1.0f / (float)(e - s));
  }
  out[b * dim + d] = r;
}

// Global size (>= dim, n): out[i] = row of ids[i], zeros where missing.
__kernel void el_gather(__global const int* restrict ids, __global const el_row_t* restrict rows, int dim,
                        __global float* restrict out, __global uchar* restrict found) {
  const int d = get_global_id(0);
  const long i = get_global_id(1);
  if (d >= dim) return;
  const int id = ids[i];
  out[i * dim + d] = (id != EL_NO_ROW) ? el_row_value(rows, id, dim, d) : 0.0f;
  if (d == 0) found[i] = id != EL_NO_ROW;
}
