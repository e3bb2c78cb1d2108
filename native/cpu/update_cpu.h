// Training-side CPU kernels: the fused sparse update (duplicate merging +
// optimizer step) and the helpers that turn a pooled-output gradient into
// per-occurrence gradients. Like the lookup kernels, the ISA-specific bodies
// live in update_cpu.inl, built for AVX2+FMA and for baseline x86-64.
#pragma once
#include <atomic>
#include <cstdint>

#include "kernels_cpu.h"

namespace embedlookup {
namespace cpu {

// Tuning of fused_update, as measured on the 1 M x 64 training step: the
// apply pass prefetches each distinct row (and its state and version) into
// L2 kUpdateL2Ahead rows ahead and into L1 kUpdateL1Ahead ahead. This
// replaced a burst of L2 prefetches of every row when the merge first saw
// it (backward 3% faster, uniform and Zipf keys, 1 and 2 threads).
constexpr int64_t kUpdateL2Ahead = 40;
constexpr int64_t kUpdateL1Ahead = 8;

// One optimizer step on every distinct row of ids[0..n). Occurrence i
// contributes g.grad[(g.src ? g.src[i] : i) * g.grad_stride ..] * (g.scale ?
// g.scale[i] : 1). Duplicates are summed in ascending position order, so the
// result does not depend on the thread count. All ids must be real rows.
//
// How: occurrences are radix-partitioned by seqlock stripe range
// into partitions of ~256 (one parallel counting pass + a stable scatter); each
// partition is then owned by one thread, which merges duplicates with a small
// L1-resident hash map, accumulates their gradients, and updates the rows.
// No locks between threads (a row and its stripe live in exactly one
// partition) and no global sort. Holds a RowSeqlock::BatchWrite throughout, so
// concurrent calls on one table run one after another.
//
// stamp (optional): each updated row's version slot, stamp->versions[id], is
// set to a new version drawn from stamp->counter while the batch holds the
// writers' lock (so versions increase in the order batches apply), by the
// thread that updates the row: no serial pass over the batch afterwards.
struct VersionStamp {
  uint64_t* versions;                // row id -> version of its last change
  std::atomic<uint64_t>* counter;    // the table's version counter
};
void fused_update(const RowView& v, RowArena* state, const uint32_t* ids, int64_t n, const GradSource& g,
                  int64_t dim, const OptimSpec& o, const StepScalars& c, int nthreads,
                  const VersionStamp* stamp = nullptr);

// bag_of[p] = the bag holding position p (positions outside every bag: -1),
// and, when scale != nullptr, scale[p] = per_sample_weights[p] (sum), or
// 1 / bag length (mean), or 1 (sum without weights).
void bag_positions(const int64_t* offsets, int64_t n_offsets, int64_t n_bags, int64_t n, PoolMode mode,
                   const float* weights, int64_t* bag_of, float* scale, int nthreads);

// Max pooling that also records, per (bag, column), the position whose row
// won (the first one on ties, as torch does; -1 for empty bags). Rows are
// read consistently (seqlock retry per bag). ids must be resolved.
void pool_max_argmax(const RowView& v, const uint32_t* ids, int64_t n, const int64_t* offsets, int64_t n_offsets,
                     int64_t n_bags, int64_t dim, float* out, int64_t* argmax, int nthreads);

// Per-occurrence gradient of max pooling: grad[p, j] = sum of grad_out[b, j]
// over the (b, j) whose winner is p (n x dim, zeros elsewhere).
void max_pool_grad(const int64_t* argmax, const float* grad_out, int64_t n_bags, int64_t dim, int64_t out_stride,
                   int64_t n, float* grad, int nthreads);

}  // namespace cpu
}  // namespace embedlookup
