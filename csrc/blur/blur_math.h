// Per-image Gaussian blur math shared by the CPU and CUDA kernels (docs/architecture.md section
// 10.3): torchvision's 1-d kernel and reflect padding, so the separable blur equals
// transforms.v2.functional.gaussian_blur(img, [k, k], [s, s]) image by image.
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace simclr_ext {
namespace blur {

C10_HOST_DEVICE inline float exp_acc(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp_acc(double x) { return ::exp(x); }

// An image is blurred only for sigma > 0; 0 (and anything not > 0, NaN included, which the CPU
// entry rejects and the CUDA kernel cannot check without a synchronization) means "leave it".
template <typename acc_t>
C10_HOST_DEVICE inline bool blurs(acc_t sigma) {
  return sigma > acc_t(0);
}

// torchvision's _get_gaussian_kernel1d in acc_t: x = linspace(-lim, lim, k) with
// lim = (k - 1) / (2 sqrt 2), w = softmax(-(x / sigma)^2). linspace is evaluated as ATen does
// (from the start for the first half, from the end for the second), so the taps are symmetric;
// the softmax subtracts the largest logit (the center's, 0) before exp.
template <typename acc_t>
C10_HOST_DEVICE inline void gaussian_weights(acc_t sigma, int k, acc_t* w) {
  const acc_t lim = static_cast<acc_t>((k - 1) / (2.0 * 1.4142135623730951));
  const acc_t step = k > 1 ? (lim - (-lim)) / static_cast<acc_t>(k - 1) : acc_t(0);
  const int half = k / 2;
  acc_t vmax = -INFINITY;
  for (int i = 0; i < k; ++i) {
    const acc_t x = i < half ? -lim + step * static_cast<acc_t>(i)
                             : lim - step * static_cast<acc_t>(k - i - 1);
    const acc_t t = x / sigma;
    w[i] = -(t * t);
    vmax = w[i] > vmax ? w[i] : vmax;
  }
  acc_t total = 0;
  for (int i = 0; i < k; ++i) {
    w[i] = exp_acc(w[i] - vmax);
    total += w[i];
  }
  for (int i = 0; i < k; ++i) w[i] /= total;
}

// Reflect padding without repeating the edge (torch.nn.functional.pad mode="reflect"): valid for
// -n < i < 2n - 1, which the entry guarantees by requiring kernel_size / 2 < n.
C10_HOST_DEVICE inline int64_t reflect(int64_t i, int64_t n) {
  i = i < 0 ? -i : i;
  return i >= n ? 2 * (n - 1) - i : i;
}

}  // namespace blur
}  // namespace simclr_ext
