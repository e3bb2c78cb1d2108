// EmbeddingTable's training entry points for the torch backend: the fused
// backward of pooled_lookup, max pooling with argmax, and optimizer-state
// export/import for checkpoints. Same contract as table.cpp: validate first,
// mutate after, so a failed call leaves the table as it was.
#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "../cpu/kernels_cpu.h"
#include "../cpu/pooling_quantized.h"
#include "../cpu/update_cpu.h"
#include "read_path.h"
#include "table.h"

namespace embedlookup {

namespace {
// Per-thread scratch reused across training steps (a step's arrays are a few
// MB; reallocating them would page-fault on every call).
struct TrainScratch {
  std::vector<uint32_t> ids;
  std::vector<int64_t> bag_of;
  std::vector<float> scale, grad;
};
TrainScratch& train_scratch() {
  thread_local TrainScratch s;
  return s;
}
template <class T>
T* sized(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}
}  // namespace

void EmbeddingTable::check_update_bound(const GradSource& g, int64_t n, const OptimSpec& o, double G) const {
  // Below 1e30 a step can neither overflow itself nor push a finite row past
  // FLT_MAX: FLT_MAX + 1e30 rounds back to FLT_MAX (its ulp is ~2e31).
  constexpr double kMaxStep = 1e30;
  if (n == 0) return;
  const double T = g.scale ? cpu::sum_abs(g.scale, n, threads()) : static_cast<double>(n);
  const double merged = G * T;  // bound on any row's summed gradient
  auto refuse = [&](const std::string& what, double bound) {
    throw std::invalid_argument("gradients: " + what + " could reach " + std::to_string(bound) +
                                ", which could overflow float32 (the limit is 1e30); nothing was updated");
  };
  if (merged > kMaxStep) refuse("a row's summed gradient (max |grad| x sum of |weights|)", merged);
  const double lr = o.lr, wd = o.weight_decay;
  double step = 0.0;  // bound on one element's step
  switch (o.kind) {
    case OptimKind::kSGD:
      step = lr * merged;
      // w - lr * (g + wd * w) = w * (1 - lr * wd) - lr * g: |1 - lr * wd| <= 1 keeps w's part bounded.
      if (lr * wd > 2.0) refuse("lr x weight_decay (the decay's factor on a row)", lr * wd);
      break;
    case OptimKind::kAdagrad:  // |g| / sqrt(accumulator + g^2) <= 1
      step = lr;
      break;
    case OptimKind::kRowWiseAdagrad:  // |g_j| / sqrt(mean(g^2)) <= sqrt(dim)
      step = lr * std::sqrt(static_cast<double>(opt_.dim));
      break;
    case OptimKind::kAdam: {  // |m_hat| / sqrt(v_hat) <= 1 / (sqrt(1 - b2) (1 - b1 / sqrt(b2))), capped
      const double r = std::min(static_cast<double>(o.beta1) / std::sqrt(std::max(1e-30, double(o.beta2))), 0.999);
      step = lr / (std::sqrt(1.0 - o.beta2) * (1.0 - r));
      break;
    }
    default:
      break;
  }
  // With decoupled-from-the-bound L2 decay, g + wd * w stays finite while wd <= 1.
  if (o.kind != OptimKind::kSGD && wd > 1.0) refuse("weight_decay (above 1, g + weight_decay x row)", wd);
  if (step > kMaxStep) refuse("one step (lr x the optimizer's bound on the gradient's scale)", step);
}

GradSource EmbeddingTable::pooled_grad_source(const Bags& b, const int64_t* argmax, const float* grad_out,
                                              int64_t grad_stride, const OptimSpec& o) const {
  const int64_t n = b.n, n_bags = b.n_bags;
  const PoolMode mode = b.mode;
  if (o.kind == OptimKind::kNone) throw std::invalid_argument("optimizer kind is none");
  if (mode == PoolMode::kMax && !argmax) throw std::invalid_argument("max mode needs the argmax from its forward");
  const int64_t dim = opt_.dim;
  const cpu::GradScan scan = cpu::scan_grads(grad_out, n_bags, dim, grad_stride, threads());
  const int64_t bad = scan.first_non_finite;
  if (bad >= 0)
    throw std::invalid_argument("grad_output: bag " + std::to_string(bad) +
                                " holds NaN or inf; non-finite gradients are rejected and nothing was updated");
  TrainScratch& s = train_scratch();
  if (mode == PoolMode::kMax) {
    float* per_occurrence = sized(s.grad, n * dim);
    cpu::max_pool_grad(argmax, grad_out, n_bags, dim, grad_stride, n, per_occurrence, threads());
    const GradSource g{per_occurrence, n, dim, nullptr, nullptr};
    check_update_bound(g, n, o, scan.max_abs);  // max pooling routes each grad_out element to one position
    return g;
  }
  int64_t* bag_of = sized(s.bag_of, n);
  // Plain sum needs no per-occurrence scale.
  float* scale = (mode == PoolMode::kMean || b.weights) ? sized(s.scale, n) : nullptr;
  cpu::bag_positions(b.offsets, b.n_offsets, n_bags, n, mode, b.weights, bag_of, scale, threads());
  const GradSource g{grad_out, n_bags, grad_stride, bag_of, scale};
  check_update_bound(g, n, o, scan.max_abs);
  return g;
}

void EmbeddingTable::apply_pooled_gradients(const Bags& b, const int64_t* argmax, const float* grad_out,
                                            int64_t grad_stride, const OptimSpec& o, const uint32_t* ids_hint,
                                            uint64_t ids_epoch) {
  const GradSource g = pooled_grad_source(b, argmax, grad_out, grad_stride, o);
  uint32_t* ids = sized(train_scratch().ids, b.n);
  fused_step(b.values, b.n, ids, g, o, ids_hint, ids_epoch);
}

uint64_t EmbeddingTable::pooled_lookup_ids(const Bags& b, float* out, bool insert, uint32_t* ids) {
  ReadCall c{b.values, b.n, insert, 0, nullptr, {}};
  return read_path(
      c, ids, zero_row_.data(),
      [&](const RowView& v, uint32_t* id) {
        return pool(v, b, id, out);
      },
      nullptr);
}

uint64_t EmbeddingTable::resolve_ids(const int64_t* keys, int64_t n, bool insert, uint32_t* ids) {
  ReadCall c{keys, n, insert, 0, nullptr, {}};
  return read_path(
      c, ids, zero_row_.data(),
      [&](const RowView&, uint32_t* id) {
        resolve(keys, n, id);
        int64_t missing = 0;
        for (int64_t i = 0; i < n; ++i) missing += id[i] == kNoRow;
        return missing;
      },
      nullptr);
}

std::pair<bool, uint64_t> EmbeddingTable::pooled_lookup_resolved(const Bags& b, const uint32_t* ids,
                                                                  uint64_t ids_epoch, float* out, bool insert,
                                                                  uint32_t* fresh_ids) {
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    if (ids_epoch == layout_epoch_.load()) {
      // Every id must name a row this table allocated: a missing key needs the
      // read path (insertion, the tier), and a forged id must never be read.
      uint32_t bad = 0;
      for (int64_t i = 0; i < b.n; ++i) bad |= static_cast<uint32_t>(ids[i] >= next_row_);
      if (!bad) {
        const RowView v{&rows_, &seq_, zero_row_.data()};
        uint32_t* given = const_cast<uint32_t*>(ids);  // read only: keys == nullptr
        if (opt_.row_type == RowType::kF32)
          cpu::pool_bags(v, index_, nullptr, given, b.n, b.offsets, b.n_offsets, b.n_bags, opt_.dim, b.mode,
                         b.weights, out, threads());
        else
          cpu::pool_bags_quantized(v, opt_.row_type, index_, nullptr, given, b.n, b.offsets, b.n_offsets, b.n_bags,
                                   opt_.dim, b.mode, b.weights, out, threads());
        if (tier_) memory_hits_.fetch_add(b.n, std::memory_order_relaxed);
        return {true, ids_epoch};
      }
    }
  }
  if (fresh_ids) return {false, pooled_lookup_ids(b, out, insert, fresh_ids)};
  pooled_lookup(b, out, insert);
  return {false, 0};
}

uint64_t EmbeddingTable::pooled_max_argmax(const Bags& b, float* out, int64_t* argmax, bool insert, uint32_t* ids) {
  check_max_argmax();
  ReadCall c{b.values, b.n, insert, 0, nullptr, {}};
  return read_path(
      c, ids, zero_row_.data(),
      [&](const RowView& v, uint32_t* id) {
        resolve(b.values, b.n, id);
        int64_t missing = 0;
        for (int64_t i = 0; i < b.n; ++i) missing += id[i] == kNoRow;
        cpu::pool_max_argmax(v, id, b.n, b.offsets, b.n_offsets, b.n_bags, opt_.dim, out, argmax, threads());
        return missing;
      },
      nullptr);
}

int64_t EmbeddingTable::state_stride() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return state_ ? state_floats(state_kind_.load(), opt_.dim) : 0;
}

void EmbeddingTable::export_state(const int64_t* keys, int64_t n, float* out) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  if (!state_) return;
  const int64_t sf = state_floats(state_kind_.load(), opt_.dim);
  std::vector<uint32_t> ids(n);
  resolve(keys, n, ids.data());
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) throw KeyMissingError("keys: key " + std::to_string(keys[i]) + " is not in the table");
  for (int64_t i = 0; i < n; ++i) {
    const float* st = state_->row(ids[i]);
    for (;;) {  // consistent with concurrent updates, like row reads
      const uint32_t s0 = seq_.read_begin(ids[i]);
      std::copy(st, st + sf, out + i * sf);
      if (seq_.read_valid(ids[i], s0)) break;
    }
  }
}

void EmbeddingTable::import_state(const int64_t* keys, int64_t n, const float* state, const OptimSpec& o) {
  if (o.kind == OptimKind::kNone) throw std::invalid_argument("optimizer kind is none");
  std::unique_lock<std::shared_mutex> lk(mu_);
  const OptimKind have = state_kind_.load();
  if (have != OptimKind::kNone && have != o.kind)
    throw std::invalid_argument("optimizer: the table already holds optimizer state of another kind");
  std::vector<uint32_t> ids(n);
  resolve(keys, n, ids.data());
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] == kNoRow) throw KeyMissingError("keys: key " + std::to_string(keys[i]) + " is not in the table");
  if (have == OptimKind::kNone) bind_state(o);
  if (!state_) return;  // SGD keeps no state
  const int64_t sf = state_->stride();
  for (int64_t i = 0; i < n; ++i) std::copy(state + i * sf, state + (i + 1) * sf, state_->row(ids[i]));
}

}  // namespace embedlookup
