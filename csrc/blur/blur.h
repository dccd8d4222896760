// Per-image separable Gaussian blur (docs/architecture.md section 10.3): the entry bound in
// csrc/bindings.cpp and the per-backend kernels it dispatches to.
//
// Layout shared by every function here (N images):
//   images: [N, C, H, W] floating (float32, float64, bfloat16, float16), any strides
//   sigma:  [N] float32: image n is blurred with sigma[n] in both directions when sigma[n] > 0,
//           and left as it is otherwise (no work spent on it)
//   kernel_size: odd k >= 1 with k / 2 < H and k / 2 < W (reflect padding)
//   out:    [N, C, H, W], images' dtype, any non-overlapping strides; may be `images` itself
//           (in place: images with sigma 0 are then not touched at all)
// The math runs in float32 (float64 for float64 images).
#pragma once
#include <ATen/ATen.h>

namespace simclr_ext {
namespace blur {

at::Tensor gaussian_blur(const at::Tensor& images, const at::Tensor& sigma, int64_t kernel_size,
                         at::Tensor out);

// Backends: inputs validated; in_place when out and images are the same tensor.
void gaussian_blur_cpu(const at::Tensor& images, const at::Tensor& sigma, int64_t kernel_size,
                       at::Tensor& out, bool in_place);
#ifdef WITH_CUDA
void gaussian_blur_cuda(const at::Tensor& images, const at::Tensor& sigma, int64_t kernel_size,
                        at::Tensor& out, bool in_place);
#endif

}  // namespace blur
}  // namespace simclr_ext
