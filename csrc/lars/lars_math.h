// LARS formulas shared by the CPU and CUDA kernels (docs/architecture.md, 3.1: google-research/
// simclr's "classic momentum" LARS), written once so the CPU tests exercise what the GPU runs.
#pragma once
#include <c10/macros/Macros.h>

namespace simclr_ext {
namespace lars {

// trust = eta * ||w|| / ||g'|| when adapting and both norms are positive, else 1. A zero weight
// (fresh zero-initialized layer) or a zero gradient must not freeze or blow up the step; a NaN
// norm also fails both comparisons, so a NaN gradient reaches the update unchanged (GradScaler's
// job to skip it), never hidden by the ratio.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t trust_ratio(acc_t w_norm, acc_t g_norm, acc_t eta, bool adaptation) {
  return (adaptation && w_norm > acc_t(0) && g_norm > acc_t(0)) ? eta * w_norm / g_norm
                                                                  : acc_t(1);
}

// g' = g + wd * w, the decayed gradient whose norm enters the trust ratio and which the
// momentum accumulates.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t decayed_grad(acc_t w, acc_t g, acc_t weight_decay) {
  return g + weight_decay * w;
}

// One element's update, scaled_lr = lr * trust:
//   v = momentum * v + scaled_lr * g'
//   w = w - v                                  (nesterov: w - (momentum * v + scaled_lr * g'))
template <typename acc_t>
C10_HOST_DEVICE inline void update_element(acc_t& w, acc_t& v, acc_t g, acc_t weight_decay,
                                           acc_t momentum, acc_t scaled_lr, bool nesterov) {
  const acc_t gd = decayed_grad(w, g, weight_decay);
  const acc_t step = scaled_lr * gd;
  v = momentum * v + step;
  w -= nesterov ? momentum * v + step : v;
}

}  // namespace lars
}  // namespace simclr_ext
