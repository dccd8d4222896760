// Color distortion entry: one check of the invariants the kernels rely on, the same for both
// devices, then dispatch to the CPU or CUDA kernel (docs/architecture.md, sections 4.2 and 5).
#include "color/color.h"

#include "color/color_math.h"
#include "common/checks.h"

namespace simclr_ext {
namespace color {

namespace {

void check_param(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                 at::ScalarType dtype, const at::Tensor& images) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, " (one row per image), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == images.device(), name, " must be on the images' device ",
              images.device(), ", got ", t.device());
}

// Shapes, dtypes, devices and the output layout; never the contents of a tensor (the values of
// factors and order are the Python wrapper's check).
void check_inputs(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                  const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
                  const at::Tensor& out, const std::vector<double>& mean,
                  const std::vector<double>& std) {
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
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "out must be floating, got ",
              out.scalar_type());
  TORCH_CHECK(out.device() == images.device(), "out must be on the images' device ",
              images.device(), ", got ", out.device());
  TORCH_CHECK(is_kernel_layout(out), "out must be contiguous or channels_last, got strides ",
              out.strides());
  TORCH_CHECK(mean.size() == std.size() && (mean.empty() || mean.size() == 3),
              "mean and std must both have 3 entries (one per channel) or both be empty, got ",
              mean.size(), " and ", std.size());
}

}  // namespace

at::Tensor distort(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                   const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor out,
                   const std::vector<double>& mean, const std::vector<double>& std) {
  check_inputs(images, factors, order, apply_jitter, apply_gray, out, mean, std);
  if (out.numel() == 0) return out;

  const at::Tensor x = is_kernel_layout(images) ? images
                                                : images.clone(at::MemoryFormat::Contiguous);
  const at::Tensor f = factors.contiguous();
  const at::Tensor o = order.contiguous();
  const at::Tensor j = apply_jitter.contiguous();
  const at::Tensor g = apply_gray.contiguous();
  const Norm norm = make_norm(mean, std);
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    distort_cuda(x, f, o, j, g, out, norm);
#endif
  } else {
    distort_cpu(x, f, o, j, g, out, norm);
  }
  return out;
}

}  // namespace color
}  // namespace simclr_ext
