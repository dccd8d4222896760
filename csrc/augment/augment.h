// SimCLR's whole view pipeline fused per view on the CPU (docs/architecture.md section 10.4):
// the entries bound in csrc/bindings.cpp and the kernel they dispatch to. On CUDA the same views
// come from three kernels (resized crop, color distortion, blur in place), chained in
// simclr_ext/pipeline.py; this path exists because on a CPU the passes between them cost memory
// traffic that a view held in the cache does not.
//
// Layout shared by every function here (B source images, V = k * B views, view v from image
// v % B):
//   images:       [B, 3, H, W] uint8 or floating (any strides), or a list of [3, H_i, W_i]
//   boxes:        [V, 4] int64 (top, left, height, width); flip: [V] bool
//   factors:      [V, 4] float32, order: [V, 4] int64, apply_jitter / apply_gray: [V] bool
//                 (the color parameters of csrc/color/color.h, one row per view)
//   sigma:        [V] float32, blur sigma (0: not blurred); kernel_size odd, kernel_size / 2 < S
//   out:          [V, 3, S, S] floating, NCHW or NHWC strides, written once per element
//   out_scale:    multiplies the resampled pixels (1 / 255 maps uint8 to [0, 1])
//   mean, std:    3 floats each or empty: (x - mean[c]) / std[c] fused into the store
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "crop/crop.h"

namespace simclr_ext {
namespace augment {

at::Tensor views(const at::Tensor& images, const at::Tensor& boxes, const at::Tensor& flip,
                 const at::Tensor& factors, const at::Tensor& order,
                 const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
                 const at::Tensor& sigma, int64_t kernel_size, double out_scale,
                 const std::vector<double>& mean, const std::vector<double>& std, at::Tensor out);
at::Tensor views_list(const std::vector<at::Tensor>& images, const at::Tensor& boxes,
                      const at::Tensor& flip, const at::Tensor& factors, const at::Tensor& order,
                      const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
                      const at::Tensor& sigma, int64_t kernel_size, double out_scale,
                      const std::vector<double>& mean, const std::vector<double>& std,
                      at::Tensor out);

// Backend: everything validated; parameter tensors contiguous; norm_mean / norm_std 3 or 0.
void views_cpu(const std::vector<crop::SourceImage>& sources, at::ScalarType dtype,
               const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
               const at::Tensor& order, const at::Tensor& apply_jitter,
               const at::Tensor& apply_gray, const at::Tensor& sigma, int64_t kernel_size,
               float out_scale, const std::vector<float>& norm_mean,
               const std::vector<float>& norm_std, at::Tensor& out);

}  // namespace augment
}  // namespace simclr_ext
