// Color distortion entry: validate once, then dispatch to the CPU or CUDA kernel (DESIGN 3.3).
#include "color/color.h"

#include "common/checks.h"
#include "color/color_math.h"

namespace simclr_ext {
namespace color {

namespace {

// Dense NCHW or NHWC strides are what both kernels index (image, channel and pixel strides);
// anything else is copied to NCHW. Exact strides, not is_contiguous(): that ignores the strides
// of size-1 dimensions, and a [B, 3, H, 1] view with stride(3) != 1 would then be read out of
// bounds through the pixel stride.
bool kernel_layout(const at::Tensor& t) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  const bool batch_ok = t.size(0) <= 1 || t.stride(0) == C * H * W;
  const bool nchw = t.stride(1) == H * W && t.stride(2) == W && t.stride(3) == 1;
  const bool nhwc = t.stride(1) == 1 && t.stride(2) == W * C && t.stride(3) == C;
  return batch_ok && (nchw || nhwc);
}

void check_param(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                 at::ScalarType dtype, const at::Tensor& images) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, " (one row per image), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == images.device(), name, " must be on the images' device ",
              images.device(), ", got ", t.device());
}

std::vector<float> three_floats(const std::vector<double>& v, const char* name) {
  TORCH_CHECK(v.empty() || v.size() == 3, name, " must have 3 entries (one per channel), got ",
              v.size());
  return std::vector<float>(v.begin(), v.end());
}

}  // namespace

at::Tensor distort(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                   const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor out,
                   const std::vector<double>& mean, const std::vector<double>& std) {
  SIMCLR_CHECK_DEFINED(images);
  check_backend_available(images, "color_distort");
  TORCH_CHECK(images.dim() == 4, "images must be a 4-d batch [B, 3, H, W], got shape ",
              images.sizes());
  TORCH_CHECK(images.size(1) == 3, "images must have 3 (RGB) channels in dim 1, got shape ",
              images.sizes());
  TORCH_CHECK(images.scalar_type() == at::kByte || at::isFloatingType(images.scalar_type()),
              "images must be uint8 or floating (float32, bfloat16, float16, float64), got ",
              images.scalar_type());
  const int64_t batch = images.size(0);
  check_param(factors, "factors", {batch, kNumOps}, at::kFloat, images);
  check_param(order, "order", {batch, kNumOps}, at::kLong, images);
  check_param(apply_jitter, "apply_jitter", {batch}, at::kBool, images);
  check_param(apply_gray, "apply_gray", {batch}, at::kBool, images);
  SIMCLR_CHECK_DEFINED(out);
  TORCH_CHECK(out.sizes() == images.sizes(), "out must have the images' shape ", images.sizes(),
              ", got ", out.sizes());
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "out_dtype must be floating, got ",
              out.scalar_type());
  TORCH_CHECK(out.device() == images.device(), "out must be on the images' device");
  TORCH_CHECK(kernel_layout(out), "out must be contiguous or channels_last");
  const std::vector<float> norm_mean = three_floats(mean, "mean");
  const std::vector<float> norm_std = three_floats(std, "std");
  TORCH_CHECK(norm_mean.size() == norm_std.size(), "mean and std must be given together");
  for (float s : norm_std) TORCH_CHECK(s != 0.f, "std must be nonzero, got ", s);
  if (out.numel() == 0) return out;

  const at::Tensor x = kernel_layout(images) ? images : images.clone(at::MemoryFormat::Contiguous);
  const at::Tensor f = factors.contiguous();
  const at::Tensor o = order.contiguous();
  const at::Tensor j = apply_jitter.contiguous();
  const at::Tensor g = apply_gray.contiguous();
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    distort_cuda(x, f, o, j, g, out, norm_mean, norm_std);
#endif
  } else {
    // The CPU kernel also checks the values (order rows are permutations, factors in range);
    // the CUDA kernel cannot without a device synchronization (it treats an unknown op code as a
    // no-op and uses the factors as given).
    distort_cpu(x, f, o, j, g, out, norm_mean, norm_std);
  }
  return out;
}

}  // namespace color
}  // namespace simclr_ext
