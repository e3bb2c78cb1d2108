// Per-row fused optimizer steps. `grad` is the merged gradient of one row
// (duplicates already summed); `w` the row; `state` its optimizer state.
// Formulas follow torch.optim (SGD, Adagrad, Adam with L2 weight_decay) so
// results match torch within fp32 rounding; row-wise Adagrad follows FBGEMM.
#pragma once
#include <cmath>
#include "embedlookup/portable.h"

namespace embedlookup {

enum class OptimKind : int32_t { kNone = 0, kSGD = 1, kAdagrad = 2, kRowWiseAdagrad = 3, kAdam = 4 };

struct OptimSpec {
  OptimKind kind = OptimKind::kSGD;
  float lr = 1e-3f;
  float eps = 1e-10f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float weight_decay = 0.0f;
  float lr_decay = 0.0f;                  // Adagrad only
  float initial_accumulator_value = 0.0f; // Adagrad / row-wise Adagrad
};

// The name users know the optimizer by (error messages).
inline const char* optim_name(OptimKind k) {
  switch (k) {
    case OptimKind::kSGD: return "SGD";
    case OptimKind::kAdagrad: return "Adagrad";
    case OptimKind::kRowWiseAdagrad: return "Adagrad(rowwise=True)";
    case OptimKind::kAdam: return "Adam";
    default: return "none";
  }
}

// Scalars that depend on the step count only: computed once per call, not per row.
struct StepScalars {
  float lr = 0.0f;           // effective learning rate (Adagrad: decayed; Adam: lr / bias_correction1)
  float inv_bc2_sqrt = 1.0f; // Adam: 1 / sqrt(1 - beta2^t)
};

inline StepScalars step_scalars(const OptimSpec& s, int64_t step) {
  StepScalars r;
  r.lr = s.lr;
  if (s.kind == OptimKind::kAdagrad || s.kind == OptimKind::kRowWiseAdagrad) {
    r.lr = static_cast<float>(s.lr / (1.0 + static_cast<double>(step - 1) * s.lr_decay));
  } else if (s.kind == OptimKind::kAdam) {
    const double bc1 = 1.0 - std::pow(static_cast<double>(s.beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(step));
    r.lr = static_cast<float>(s.lr / bc1);
    r.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
  }
  return r;
}

// Optimizer-state floats per row.
EL_HD int64_t state_floats(OptimKind k, int64_t dim) {
  switch (k) {
    case OptimKind::kAdagrad: return dim;
    case OptimKind::kRowWiseAdagrad: return 1;
    case OptimKind::kAdam: return 2 * dim;
    default: return 0;
  }
}

EL_HD float initial_state_value(const OptimSpec& s) {
  return (s.kind == OptimKind::kAdagrad || s.kind == OptimKind::kRowWiseAdagrad) ? s.initial_accumulator_value : 0.0f;
}

// Per-element steps. apply_row below runs them over a whole row (CPU); the
// CUDA kernel spreads the same calls over a warp's lanes, so both backends
// share one definition of every formula.
EL_HD float decayed_grad(const OptimSpec& s, float g, float w) { return g + s.weight_decay * w; }

EL_HD void sgd_elem(const StepScalars& c, float& w, float g) { w -= c.lr * g; }

EL_HD void adagrad_elem(const OptimSpec& s, const StepScalars& c, float& w, float& acc, float g) {
  acc += g * g;
  w -= c.lr * g / (sqrtf(acc) + s.eps);
}

// Row-wise Adagrad: `sq` is the sum of g^2 over the row; updates the row's one
// accumulator and returns the step size shared by all its elements.
EL_HD float rowwise_adagrad_scale(const OptimSpec& s, const StepScalars& c, float& acc, float sq, int64_t dim) {
  acc += sq / static_cast<float>(dim);
  return c.lr / (sqrtf(acc) + s.eps);
}

EL_HD void adam_elem(const OptimSpec& s, const StepScalars& c, float& w, float& m, float& v, float g) {
  m += (1.0f - s.beta1) * (g - m);
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  w -= c.lr * m / (sqrtf(v) * c.inv_bc2_sqrt + s.eps);
}

EL_HD void apply_row(const OptimSpec& s, const StepScalars& c, float* w, float* state, float* grad, int64_t dim) {
  if (s.weight_decay != 0.0f)
    for (int64_t j = 0; j < dim; ++j) grad[j] = decayed_grad(s, grad[j], w[j]);
  switch (s.kind) {
    case OptimKind::kSGD:
      for (int64_t j = 0; j < dim; ++j) sgd_elem(c, w[j], grad[j]);
      break;
    case OptimKind::kAdagrad:
      for (int64_t j = 0; j < dim; ++j) adagrad_elem(s, c, w[j], state[j], grad[j]);
      break;
    case OptimKind::kRowWiseAdagrad: {
      float sq = 0.0f;
      for (int64_t j = 0; j < dim; ++j) sq += grad[j] * grad[j];
      const float scale = rowwise_adagrad_scale(s, c, state[0], sq, dim);
      for (int64_t j = 0; j < dim; ++j) w[j] -= scale * grad[j];
      break;
    }
    case OptimKind::kAdam:
      for (int64_t j = 0; j < dim; ++j) adam_elem(s, c, w[j], state[j], state[dim + j], grad[j]);
      break;
    default:
      break;
  }
}

}  // namespace embedlookup
