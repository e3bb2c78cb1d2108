// Index maintenance kernels: insert, rehash, rollback, and the slow-path
// copies (collect, gather by id, assign) used by export/assign.
#include "device_index.cuh"
#include "kernels_cuda.h"
#include "launch.cuh"

namespace embedlookup {
namespace cuda {

namespace {

using ull = unsigned long long;

__global__ void fill_empty_kernel(Slot* slots, uint64_t n) {
  EL_GRID_STRIDE(i, static_cast<int64_t>(n)) {
    slots[i].key = kEmptyKey;
    slots[i].id = kNoRow;
    slots[i].unused = 0;
  }
}

__global__ void rehash_kernel(const Slot* from, uint64_t from_mask, Slot* to, uint64_t to_mask) {
  EL_GRID_STRIDE(i, static_cast<int64_t>(from_mask + 2)) {
    const Slot x = from[i];
    if (x.id == kNoRow) continue;
    if (static_cast<uint64_t>(i) == from_mask + 1) {  // the extra slot (key kEmptyKey)
      to[to_mask + 1] = x;
      continue;
    }
    uint64_t s = hash_key(x.key) & to_mask;
    while (atomicCAS(reinterpret_cast<ull*>(&to[s].key), static_cast<ull>(kEmptyKey), static_cast<ull>(x.key)) !=
           static_cast<ull>(kEmptyKey))
      s = (s + 1) & to_mask;
    to[s].id = x.id;
  }
}

// Fills a row created for `key` (and its optimizer state).
__device__ void init_new_row(const TableView& t, uint32_t id, int64_t key, bool init_rows) {
  t.row_keys[id] = key;
  float* r = t.rows + static_cast<int64_t>(id) * t.stride;
  if (init_rows) init_row(t.init, key, r, t.dim);
  for (int64_t j = init_rows ? t.dim : 0; j < t.stride; ++j) r[j] = 0.0f;
  if (t.state) {
    float* st = t.state + static_cast<int64_t>(id) * t.state_stride;
    for (int64_t j = 0; j < t.state_stride; ++j) st[j] = t.state_init;
  }
}

__global__ void insert_kernel(TableView t, const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows) {
  EL_GRID_STRIDE(i, n) {
    const int64_t key = keys[i];
    uint32_t id = kNoRow;
    bool created = false;
    Slot* x;
    if (key == kEmptyKey) {
      x = t.slots + t.mask + 1;
      const uint32_t cur = *reinterpret_cast<volatile uint32_t*>(&x->id);
      if (cur == kNoRow) {
        if (atomicCAS(&x->id, kNoRow, kClaimed) == kNoRow) created = true;
      } else if (cur != kClaimed) {
        id = cur;
      }
    } else {
      uint64_t s = hash_key(key) & t.mask;
      for (;;) {
        x = t.slots + s;
        int64_t k = *reinterpret_cast<volatile int64_t*>(&x->key);
        if (k == kEmptyKey) {
          const ull old = atomicCAS(reinterpret_cast<ull*>(&x->key), static_cast<ull>(kEmptyKey), static_cast<ull>(key));
          if (old == static_cast<ull>(kEmptyKey)) {
            created = true;
            break;
          }
          k = static_cast<int64_t>(old);
        }
        if (k == key) {
          id = *reinterpret_cast<volatile uint32_t*>(&x->id);  // kNoRow while its creator is still writing it
          break;
        }
        s = (s + 1) & t.mask;
      }
    }
    if (created) {
      id = atomicAdd(t.count, 1u);
      init_new_row(t, id, key, init_rows);
      atomicExch(&x->id, id);
    }
    ids[i] = id;
  }
}

// Second pass: ids still pending in insert_kernel are complete now.
__global__ void resolve_pending_kernel(TableView t, const int64_t* keys, int64_t n, uint32_t* ids) {
  const IndexView ix{t.slots, t.mask};
  EL_GRID_STRIDE(i, n) {
    if (ids[i] == kNoRow) ids[i] = find_row(ix, keys[i]);
  }
}

__global__ void rollback_kernel(TableView t, uint32_t first_new) {
  EL_GRID_STRIDE(i, static_cast<int64_t>(t.mask + 2)) {
    Slot& x = t.slots[i];
    if (x.id != kNoRow && x.id >= first_new) {
      x.key = kEmptyKey;
      x.id = kNoRow;
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *t.count = first_new;
}

__global__ void collect_kernel(TableView t, int64_t* keys, uint32_t* ids, uint32_t* n_out) {
  EL_GRID_STRIDE(i, static_cast<int64_t>(t.mask + 2)) {
    const Slot x = t.slots[i];
    if (x.id == kNoRow) continue;
    const uint32_t p = atomicAdd(n_out, 1u);
    keys[p] = x.key;
    ids[p] = x.id;
  }
}

__global__ void gather_ids_kernel(TableView t, const uint32_t* ids, int64_t n, float* out) {
  EL_GRID_STRIDE(e, n * t.dim) {
    const int64_t i = e / t.dim, j = e - i * t.dim;
    out[e] = t.rows[static_cast<int64_t>(ids[i]) * t.stride + j];
  }
}

__global__ void assign_winner_kernel(const uint32_t* ids, int64_t n, int32_t* winner) {
  EL_GRID_STRIDE(i, n) atomicMax(&winner[ids[i]], static_cast<int32_t>(i));
}

__global__ void assign_copy_kernel(TableView t, const uint32_t* ids, int64_t n, const float* rows,
                                   const int32_t* winner) {
  EL_GRID_STRIDE(e, n * t.dim) {
    const int64_t i = e / t.dim, j = e - i * t.dim;
    const uint32_t id = ids[i];
    if (winner[id] == i) t.rows[static_cast<int64_t>(id) * t.stride + j] = rows[e];
  }
}

__global__ void fill_floats_kernel(float* p, int64_t n, float v) {
  EL_GRID_STRIDE(i, n) p[i] = v;
}

}  // namespace

void fill_empty_slots(Slot* slots, uint64_t n_slots, Stream s) {
  fill_empty_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(slots, n_slots);
  check_launch("fill_empty_slots");
}

void rehash(const Slot* from, uint64_t from_mask, Slot* to, uint64_t to_mask, Stream s) {
  rehash_kernel<<<grid_for(from_mask + 2), kThreads, 0, s>>>(from, from_mask, to, to_mask);
  check_launch("rehash");
}

void insert_keys(const TableView& t, const int64_t* keys, int64_t n, uint32_t* ids, bool init_rows, Stream s) {
  if (n == 0) return;
  insert_kernel<<<grid_for(n), kThreads, 0, s>>>(t, keys, n, ids, init_rows);
  check_launch("insert_keys");
  resolve_pending_kernel<<<grid_for(n), kThreads, 0, s>>>(t, keys, n, ids);
  check_launch("insert_keys (resolve)");
}

void rollback_inserts(const TableView& t, uint32_t first_new, Stream s) {
  rollback_kernel<<<grid_for(t.mask + 2), kThreads, 0, s>>>(t, first_new);
  check_launch("rollback_inserts");
}

void collect_slots(const TableView& t, int64_t* keys, uint32_t* ids, uint32_t* n_out, Stream s) {
  cudaMemsetAsync(n_out, 0, sizeof(uint32_t), s);
  collect_kernel<<<grid_for(t.mask + 2), kThreads, 0, s>>>(t, keys, ids, n_out);
  check_launch("collect_slots");
}

void gather_ids(const TableView& t, const uint32_t* ids, int64_t n, float* out, Stream s) {
  if (n == 0) return;
  gather_ids_kernel<<<grid_for(n * t.dim), kThreads, 0, s>>>(t, ids, n, out);
  check_launch("gather_ids");
}

void assign_rows(const TableView& t, const uint32_t* ids, int64_t n, const float* rows, int32_t* winner,
                 int64_t row_cap, Stream s) {
  if (n == 0) return;
  cudaMemsetAsync(winner, 0xFF, sizeof(int32_t) * row_cap, s);  // -1
  assign_winner_kernel<<<grid_for(n), kThreads, 0, s>>>(ids, n, winner);
  assign_copy_kernel<<<grid_for(n * t.dim), kThreads, 0, s>>>(t, ids, n, rows, winner);
  check_launch("assign_rows");
}

void fill_floats(float* p, int64_t n, float v, Stream s) {
  if (n == 0) return;
  fill_floats_kernel<<<grid_for(n), kThreads, 0, s>>>(p, n, v);
  check_launch("fill_floats");
}

}  // namespace cuda
}  // namespace embedlookup
