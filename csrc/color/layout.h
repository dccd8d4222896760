// How the color kernels read and write an image batch, shared by color.cpp (the layout check),
// color_cpu.cpp and color_cuda.cu: the element strides of a dense NCHW or NHWC batch, the
// conversion of an input element to a float in [0, 1], and the optional normalization of the
// store (docs/architecture.md, 4.2).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <vector>

#include "color/color_math.h"  // kInv255

namespace simclr_ext {
namespace color {

// Element strides of a dense NCHW or NHWC image batch (a kernel argument on CUDA).
struct Layout {
  int64_t image, channel, pixel;
};

inline Layout layout_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(3)}; }

// Whether the kernels can index t through layout_of(t): dense NCHW or NHWC strides. Exact
// strides, not is_contiguous(): that ignores the strides of size-1 dimensions, and a
// [B, 3, H, 1] view with stride(3) != 1 would then be read out of bounds through the pixel stride.
inline bool is_kernel_layout(const at::Tensor& t) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  const bool batch_ok = t.size(0) <= 1 || t.stride(0) == C * H * W;
  const bool nchw = t.stride(1) == H * W && t.stride(2) == W && t.stride(3) == 1;
  const bool nhwc = t.stride(1) == 1 && t.stride(2) == W * C && t.stride(3) == C;
  return batch_ok && (nchw || nhwc);
}

// An input element as a float pixel value: uint8 is scaled to [0, 1] as torchvision's
// to_dtype(uint8 -> float32, scale=True) rounds it; floating inputs are taken as they are.
template <typename in_t>
C10_HOST_DEVICE inline float to_unit(in_t v) {
  return static_cast<float>(v);
}
template <>
C10_HOST_DEVICE inline float to_unit<uint8_t>(uint8_t v) {
  return static_cast<float>(v) * kInv255;
}

// Optional (x - mean[c]) / std[c] per channel at the store, in transforms.Normalize's order.
struct Norm {
  bool on = false;
  float mean[3] = {0.f, 0.f, 0.f};
  float std[3] = {1.f, 1.f, 1.f};
};

// mean and std: 3 entries each, or both empty (no normalization).
inline Norm make_norm(const std::vector<double>& mean, const std::vector<double>& std) {
  Norm nm;
  nm.on = !mean.empty();
  for (size_t c = 0; c < mean.size() && c < 3; ++c) {
    nm.mean[c] = static_cast<float>(mean[c]);
    nm.std[c] = static_cast<float>(std[c]);
  }
  return nm;
}

}  // namespace color
}  // namespace simclr_ext
