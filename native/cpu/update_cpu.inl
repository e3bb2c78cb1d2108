// Body of the fused sparse update, included once per instruction set with
// EL_ISA_NS set (see update_cpu.h for what it computes and how).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../structures/key_index.h"
#include "update_cpu.h"

namespace embedlookup {
namespace cpu {
namespace EL_ISA_NS {

namespace {

// Partitions are ranges of seqlock stripes: each stripe (and so each row)
// belongs to exactly one partition, which one thread updates, so the rows'
// seqlock counters move without locked instructions (row_seqlock.h). A
// stripe covers blocks of 256 neighbouring rows, so a partition's rows lie in
// a few windows of the arena (friendlier to DRAM pages than hashed ids).
// `stripes`: how many stripes the arena's rows span (all of them from 2^20
// rows on). Dividing that span, not all 4096 stripes, keeps a small table's
// rows spread over every partition (a 64 K-row table used 16 of 256 before,
// each with 16x the occurrences its map and sums were sized for).
inline uint32_t partition_of(uint32_t id, uint32_t parts, uint32_t stripes) {
  const uint32_t s = std::min(RowSeqlock::stripe_of(id), stripes - 1);
  return static_cast<uint32_t>(static_cast<uint64_t>(s) * parts / stripes);
}

// One occurrence, as the scatter pass lays them out per partition: the merge
// then streams records instead of chasing positions into ids / bag_of.
struct Occurrence {
  uint32_t id;   // row
  uint32_t src;  // gradient row: g.src[i] (bag) or i (position)
};

// Reused per thread so steady-state training steps neither allocate nor fault.
struct PartitionScratch {
  std::vector<uint32_t> slot_row, slot_group, rows;
  std::vector<float> grad;
};


// apply_row, with row-wise Adagrad's sum of squares in 8 independent lanes:
// the portable loop is one chain of dim dependent adds (~4 cycles each,
// ~250 cycles a row at dim 64), which without reassociation the compiler
// must keep serial; 8 lanes vectorize into one register.
inline void apply_row_cpu(const OptimSpec& o, const StepScalars& c, float* __restrict w, float* st,
                          float* __restrict grad, int64_t dim) {
  if (o.kind != OptimKind::kRowWiseAdagrad) return apply_row(o, c, w, st, grad, dim);
  if (o.weight_decay != 0.0f)
    for (int64_t j = 0; j < dim; ++j) grad[j] = decayed_grad(o, grad[j], w[j]);
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= dim; j += 8)
    for (int l = 0; l < 8; ++l) lane[l] += grad[j + l] * grad[j + l];
  for (; j < dim; ++j) lane[j & 7] += grad[j] * grad[j];
  const float sq = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
  const float scale = rowwise_adagrad_scale(o, c, st[0], sq, dim);
  for (int64_t k = 0; k < dim; ++k) w[k] -= scale * grad[k];
}

// Prefetches row id, its optimizer state and its version slot (Rw: 1 for
// write intent; Locality: 3 into L1, 2 into L2). always_inline: GCC judged a
// non-inlined lambda that only prefetched free of side effects and deleted
// its calls, so the apply pass once ran with no prefetch at all.
template <int Rw, int Locality>
__attribute__((always_inline)) inline void prefetch_update_row(const RowView& v, const RowArena* state,
                                                              const uint64_t* versions, uint32_t id,
                                                              int64_t row_bytes, int64_t state_bytes) {
  const char* r = reinterpret_cast<const char*>(v.arena->row(id));
  for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(r + b, Rw, Locality);
  if (state) {
    const char* st = reinterpret_cast<const char*>(state->row(id));
    for (int64_t b = 0; b < state_bytes; b += 64) __builtin_prefetch(st + b, Rw, Locality);
  }
  if (versions) __builtin_prefetch(versions + id, Rw, Locality);
}

// Merges and applies the occurrences occ[0..m) (in ascending position
// order, all of one partition, so no other thread touches their rows);
// scale[k] is occurrence k's gradient scale (nullptr: 1).
void update_partition(const RowView& v, RowArena* state, const Occurrence* occ, const float* scale, int64_t m,
                      const GradSource& g, int64_t dim, int64_t stride, const OptimSpec& o, const StepScalars& c,
                      uint64_t* versions, uint64_t version, PartitionScratch& s) {
  int log_cap = 4;
  while ((int64_t(1) << log_cap) < 2 * m) ++log_cap;
  const size_t cap = size_t(1) << log_cap;
  if (s.slot_row.size() < cap) {
    s.slot_row.resize(cap);
    s.slot_group.resize(cap);
  }
  // Sized separately: the scratch is per thread and shared by tables of
  // different strides, so enough rows does not mean enough gradient floats.
  if (static_cast<int64_t>(s.rows.size()) < m) s.rows.resize(m);
  if (s.grad.size() < static_cast<size_t>(m) * stride) s.grad.resize(static_cast<size_t>(m) * stride);
  uint32_t* __restrict slot_row = s.slot_row.data();
  uint32_t* __restrict slot_group = s.slot_group.data();
  std::fill(slot_row, slot_row + cap, kNoRow);
  int64_t groups = 0;
  // Gradient rows are read at random from grad_out (L2/L3): fetch them a few
  // records ahead.
  constexpr int64_t kGradAhead = 8;
  const int64_t grad_bytes = dim * static_cast<int64_t>(sizeof(float));
  // And into L2 first, kGradL2Ahead records ahead (the pooled kernels' two
  // levels): backward 7.32 -> 7.05 ms on uniform keys, equal on Zipf keys
  // (step_split.py, 1 thread, builds alternated six and three times).
  constexpr int64_t kGradL2Ahead = 32;
  for (int64_t k = 0; k < std::min<int64_t>(m, kGradL2Ahead); ++k) {
    const char* f = reinterpret_cast<const char*>(g.grad + occ[k].src * g.grad_stride);
    for (int64_t b = 0; b < grad_bytes; b += 64) __builtin_prefetch(f + b, 0, 2);
  }
  for (int64_t k = 0; k < m; ++k) {
    if (k + kGradL2Ahead < m) {
      const char* f = reinterpret_cast<const char*>(g.grad + occ[k + kGradL2Ahead].src * g.grad_stride);
      for (int64_t b = 0; b < grad_bytes; b += 64) __builtin_prefetch(f + b, 0, 2);
    }
    if (k + kGradAhead < m) {
      const char* f = reinterpret_cast<const char*>(g.grad + occ[k + kGradAhead].src * g.grad_stride);
      for (int64_t b = 0; b < grad_bytes; b += 64) __builtin_prefetch(f + b, 0, 3);
    }
    const uint32_t id = occ[k].id;
    // A different multiplier from partition_of, so ids of one partition spread.
    size_t h = (id * 0x85EBCA6Bu) >> (32 - log_cap);
    while (slot_row[h] != kNoRow && slot_row[h] != id) h = (h + 1) & (cap - 1);
    const float* __restrict src = g.grad + static_cast<int64_t>(occ[k].src) * g.grad_stride;
    const float sc = scale ? scale[k] : 1.0f;
    if (slot_row[h] == kNoRow) {
      slot_row[h] = id;
      slot_group[h] = static_cast<uint32_t>(groups);
      s.rows[groups] = id;
      float* __restrict acc = s.grad.data() + groups * stride;
      for (int64_t j = 0; j < dim; ++j) acc[j] = sc * src[j];
      ++groups;
    } else {
      float* __restrict acc = s.grad.data() + static_cast<int64_t>(slot_group[h]) * stride;
      for (int64_t j = 0; j < dim; ++j) acc[j] += sc * src[j];
    }
  }
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(float));
  const int64_t state_bytes = state ? state->stride() * static_cast<int64_t>(sizeof(float)) : 0;
  const uint32_t* const group_rows = s.rows.data();  // the scratch is thread_local: its address once
  float* const group_grad = s.grad.data();
  // Two levels, as the pooled kernels: into L2 kUpdateL2Ahead rows ahead,
  // then into L1 with write intent.
  for (int64_t u = -kUpdateL2Ahead; u < groups; ++u) {
    if (u + kUpdateL2Ahead < groups)
      prefetch_update_row<0, 2>(v, state, versions, group_rows[u + kUpdateL2Ahead], row_bytes, state_bytes);
    if (u + kUpdateL1Ahead < groups && u + kUpdateL1Ahead >= 0)
      prefetch_update_row<1, 3>(v, state, versions, group_rows[u + kUpdateL1Ahead], row_bytes, state_bytes);
    if (u < 0) continue;
    const uint32_t id = group_rows[u];
    float* st = state ? state->row(id) : nullptr;
    v.seq->write_begin(id);
    apply_row_cpu(o, c, v.arena->row(id), st, group_grad + u * stride, dim);
    if (versions) __atomic_store_n(versions + id, version, __ATOMIC_RELAXED);
    v.seq->write_end(id);
  }
}

}  // namespace

void fused_update(const RowView& v, RowArena* state, const uint32_t* ids, int64_t n, const GradSource& g,
                  int64_t dim, const OptimSpec& o, const StepScalars& c, int nthreads, const VersionStamp* stamp) {
  if (n <= 0) return;
  if (n > int64_t(UINT32_MAX)) throw std::length_error("fused_update: more than 2^32 - 1 occurrences in one batch");
  const int64_t stride = v.arena->stride();
  // ~256 occurrences per partition keeps its map (2 KiB), gradient sums and
  // the rows prefetched at group creation (64 KiB each at dim 64) in L1/L2
  // until the apply pass uses them (512: the step 8-11% slower, 1 M x 64
  // rows, uniform keys); many more partitions than threads balance the
  // dynamic schedule.
  const uint32_t parts =
      static_cast<uint32_t>(std::min<int64_t>(RowSeqlock::kStripes, std::max<int64_t>(1, n / 256)));
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / 2048 + 1)));
  const uint32_t stripes = static_cast<uint32_t>(std::min<size_t>(
      RowSeqlock::kStripes,
      std::max<size_t>(1, (v.arena->capacity_rows() + (1u << RowSeqlock::kBlockShift) - 1) >> RowSeqlock::kBlockShift)));
  auto part_of = [parts, stripes](uint32_t id) { return partition_of(id, parts, stripes); };
  const RowSeqlock::BatchWrite batch(*v.seq);  // one batch update at a time; readers check rows meanwhile
  // Drawn under the batch lock: a later batch stamps a later version.
  uint64_t* const versions = stamp ? stamp->versions : nullptr;
  const uint64_t version = stamp ? stamp->counter->fetch_add(1) + 1 : 0;
  thread_local std::vector<int64_t> hist;
  thread_local std::vector<Occurrence> occ;
  thread_local std::vector<float> occ_scale;
  hist.assign(static_cast<size_t>(nt) * parts, 0);
  if (static_cast<int64_t>(occ.size()) < n) occ.resize(n);
  if (g.scale && static_cast<int64_t>(occ_scale.size()) < n) occ_scale.resize(n);
  int64_t* __restrict H = hist.data();
  Occurrence* __restrict P = occ.data();
  float* __restrict PS = g.scale ? occ_scale.data() : nullptr;
  std::vector<int64_t> part_start(parts + 1);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t i0 = n * t / nt, i1 = n * (t + 1) / nt;
    int64_t* __restrict h = H + static_cast<size_t>(t) * parts;
    for (int64_t i = i0; i < i1; ++i) ++h[part_of(ids[i])];
#pragma omp barrier
#pragma omp single
    {
      // Exclusive prefix in (partition, thread) order: the scatter below is
      // stable, so each partition lists its positions in ascending order.
      int64_t acc = 0;
      for (uint32_t p = 0; p < parts; ++p) {
        part_start[p] = acc;
        for (int u = 0; u < nt; ++u) {
          const int64_t cnt = H[static_cast<size_t>(u) * parts + p];
          H[static_cast<size_t>(u) * parts + p] = acc;
          acc += cnt;
        }
      }
      part_start[parts] = acc;
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t at = h[part_of(ids[i])]++;
      P[at] = Occurrence{ids[i], static_cast<uint32_t>(g.src ? g.src[i] : i)};
      if (PS) PS[at] = g.scale[i];
    }
#pragma omp barrier
    thread_local PartitionScratch scratch;
#pragma omp for schedule(dynamic, 4)
    for (int64_t p = 0; p < static_cast<int64_t>(parts); ++p)
      update_partition(v, state, P + part_start[p], PS ? PS + part_start[p] : nullptr,
                       part_start[p + 1] - part_start[p], g, dim, stride, o, c, versions, version, scratch);
  }
}

}  // namespace EL_ISA_NS
}  // namespace cpu
}  // namespace embedlookup
