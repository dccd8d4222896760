// Fused-view entries: the invariant checks of every part (docs/architecture.md section 5), then
// the CPU kernel. The checks read the parameter values, which is free on the CPU.
#include "augment/augment.h"

#include <cmath>

#include "color/color_math.h"
#include "common/checks.h"

namespace simclr_ext {
namespace augment {

namespace {

void check_param(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                 at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, " (one row per view), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
}

std::vector<float> three_floats(const std::vector<double>& v, const char* name) {
  TORCH_CHECK(v.empty() || v.size() == 3, name, " must have 3 entries (one per channel), got ",
              v.size());
  return std::vector<float>(v.begin(), v.end());
}

bool dense_nchw_or_nhwc(const at::Tensor& t) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  const bool batch_ok = t.size(0) <= 1 || t.stride(0) == C * H * W;
  const bool nchw = t.stride(1) == H * W && t.stride(2) == W && t.stride(3) == 1;
  const bool nhwc = t.stride(1) == 1 && t.stride(2) == W * C && t.stride(3) == C;
  return batch_ok && (nchw || nhwc);
}

at::Tensor run(const std::vector<crop::SourceImage>& sources, at::ScalarType dtype,
               int64_t channels, const at::Device& device, const at::Tensor& boxes,
               const at::Tensor& flip, const at::Tensor& factors, const at::Tensor& order,
               const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
               const at::Tensor& sigma, int64_t kernel_size, double out_scale,
               const std::vector<double>& mean, const std::vector<double>& std, at::Tensor out) {
  TORCH_CHECK(device.is_cpu(), "simclr_views is the CPU path of SimCLRAugment (on CUDA it runs "
              "resized_crop, color_distort and gaussian_blur_), got images on ", device);
  TORCH_CHECK(channels == 3, "images must have 3 (RGB) channels, got ", channels);
  TORCH_CHECK(flip.defined(), "flip must be a bool tensor");
  crop::check_boxes_and_flip(boxes, flip, static_cast<int64_t>(sources.size()), device);
  const int64_t views = boxes.size(0);
  check_param(factors, "factors", {views, color::kNumOps}, at::kFloat);
  check_param(order, "order", {views, color::kNumOps}, at::kLong);
  check_param(apply_jitter, "apply_jitter", {views}, at::kBool);
  check_param(apply_gray, "apply_gray", {views}, at::kBool);
  check_param(sigma, "sigma", {views}, at::kFloat);
  SIMCLR_CHECK_DEFINED(out);
  TORCH_CHECK(out.dim() == 4 && out.size(0) == views && out.size(1) == 3 &&
                  out.size(2) == out.size(3) && out.size(2) >= 1,
              "out must have shape [", views, ", 3, S, S], got ", out.sizes());
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "out_dtype must be floating, got ",
              out.scalar_type());
  TORCH_CHECK(out.device().is_cpu(), "out must be on the CPU");
  TORCH_CHECK(dense_nchw_or_nhwc(out), "out must be contiguous or channels_last");
  const int64_t size = out.size(2);
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size / 2 < size,
              "kernel_size must be odd, >= 1 and with kernel_size / 2 < ", size, ", got ",
              kernel_size);
  TORCH_CHECK(std::isfinite(out_scale), "out_scale must be finite, got ", out_scale);
  const std::vector<float> norm_mean = three_floats(mean, "mean");
  const std::vector<float> norm_std = three_floats(std, "std");
  TORCH_CHECK(norm_mean.size() == norm_std.size(), "mean and std must be given together");
  for (float s : norm_std) TORCH_CHECK(s != 0.f, "std must be nonzero, got ", s);
  if (out.numel() == 0) return out;

  const at::Tensor b = boxes.contiguous(), fl = flip.contiguous(), f = factors.contiguous();
  const at::Tensor o = order.contiguous(), j = apply_jitter.contiguous();
  const at::Tensor g = apply_gray.contiguous(), s = sigma.contiguous();
  crop::check_box_values(b, sources);
  // The color kernel's value checks (orders are permutations, factors in range) and the blur's.
  const float* fp = f.const_data_ptr<float>();
  const int64_t* op = o.const_data_ptr<int64_t>();
  const float* sp = s.const_data_ptr<float>();
  for (int64_t v = 0; v < views; ++v) {
    int seen = 0;
    for (int k = 0; k < color::kNumOps; ++k) {
      const int64_t code = op[v * color::kNumOps + k];
      if (code >= 0 && code < color::kNumOps) seen |= 1 << code;
    }
    TORCH_CHECK(seen == 0xF, "order[", v, "] must be a permutation of 0..3 (brightness, "
                "contrast, saturation, hue), got ", o[v]);
    for (int k = 0; k < 3; ++k) {
      TORCH_CHECK(fp[v * color::kNumOps + k] >= 0.f, "factors[", v, ", ", k,
                  "] (brightness, contrast, saturation) must be >= 0, got ",
                  fp[v * color::kNumOps + k]);
    }
    const float hue = fp[v * color::kNumOps + color::kHue];
    TORCH_CHECK(hue >= -0.5f && hue <= 0.5f, "factors[", v, ", 3] (hue) must be in [-0.5, 0.5], "
                "got ", hue);
    TORCH_CHECK(sp[v] >= 0.f && std::isfinite(sp[v]), "sigma[", v,
                "] must be finite and >= 0 (0: no blur), got ", sp[v]);
  }
  views_cpu(sources, dtype, b, fl, f, o, j, g, s, kernel_size, static_cast<float>(out_scale),
            norm_mean, norm_std, out);
  return out;
}

}  // namespace

at::Tensor views(const at::Tensor& images, const at::Tensor& boxes, const at::Tensor& flip,
                 const at::Tensor& factors, const at::Tensor& order,
                 const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
                 const at::Tensor& sigma, int64_t kernel_size, double out_scale,
                 const std::vector<double>& mean, const std::vector<double>& std, at::Tensor out) {
  const std::vector<crop::SourceImage> sources = crop::batch_sources(images, "simclr_views");
  return run(sources, images.scalar_type(), images.size(1), images.device(), boxes, flip,
             factors, order, apply_jitter, apply_gray, sigma, kernel_size, out_scale, mean, std,
             out);
}

at::Tensor views_list(const std::vector<at::Tensor>& images, const at::Tensor& boxes,
                      const at::Tensor& flip, const at::Tensor& factors, const at::Tensor& order,
                      const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
                      const at::Tensor& sigma, int64_t kernel_size, double out_scale,
                      const std::vector<double>& mean, const std::vector<double>& std,
                      at::Tensor out) {
  const std::vector<crop::SourceImage> sources = crop::list_sources(images, "simclr_views");
  return run(sources, images[0].scalar_type(), images[0].size(0), images[0].device(), boxes,
             flip, factors, order, apply_jitter, apply_gray, sigma, kernel_size, out_scale, mean,
             std, out);
}

}  // namespace augment
}  // namespace simclr_ext
