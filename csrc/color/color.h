// Per-sample SimCLR color distortion (docs/architecture.md, section 4): the entry bound in
// csrc/bindings.cpp and the per-backend kernels it dispatches to.
//
// Layout shared by every function here (B images):
//   images:       [B, 3, H, W] uint8 (x / 255) or floating in [0, 1]; NCHW- or NHWC-strided
//   factors:      [B, 4] float32 (brightness, contrast, saturation, hue) per image
//   order:        [B, 4] int64, order[b, k] = the op applied at step k (kBrightness..kHue)
//   apply_jitter: [B] bool, whether the four ops run at all for image b
//   apply_gray:   [B] bool, whether image b is turned to grayscale (3 channels) at the end
//   out:          [B, 3, H, W] floating, written by the kernel (its strides may be NCHW or NHWC)
//   mean, std:    3 floats each, or empty: out = (x - mean[c]) / std[c] fused into the store
// The values of factors and order are checked in Python (simclr_ext/augment.py), never here:
// on a GPU that would need a host synchronization. Both kernels treat an op code outside 0..3
// as a no-op step and use the factors as given.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "color/layout.h"

namespace simclr_ext {
namespace color {

// Writes the distorted images into `out` (allocated by the caller with the result's dtype and
// memory format) and returns it.
at::Tensor distort(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                   const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor out,
                   const std::vector<double>& mean, const std::vector<double>& std);

// Backends: inputs already checked; images and out are NCHW- or NHWC-strided (dense), the
// parameter tensors contiguous with the dtypes above.
void distort_cpu(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                 const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor& out,
                 const Norm& norm);
#ifdef WITH_CUDA
void distort_cuda(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                  const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor& out,
                  const Norm& norm);
#endif

}  // namespace color
}  // namespace simclr_ext
