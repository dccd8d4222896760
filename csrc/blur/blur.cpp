// Gaussian blur entry: cheap invariant checks (docs/architecture.md section 5), then dispatch
// to the CPU or CUDA kernel.
#include "blur/blur.h"

#include <cmath>

#include "common/checks.h"

namespace simclr_ext {
namespace blur {

at::Tensor gaussian_blur(const at::Tensor& images, const at::Tensor& sigma, int64_t kernel_size,
                         at::Tensor out) {
  SIMCLR_CHECK_DEFINED(images);
  check_backend_available(images, "gaussian_blur");
  TORCH_CHECK(images.dim() == 4, "images must be a 4-d batch [N, C, H, W], got shape ",
              images.sizes());
  SIMCLR_CHECK_FLOATING(images);
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  SIMCLR_CHECK_DEFINED(sigma);
  TORCH_CHECK(sigma.dim() == 1 && sigma.size(0) == n, "sigma must have shape [", n,
              "] (one per image), got ", sigma.sizes());
  TORCH_CHECK(sigma.scalar_type() == at::kFloat, "sigma must be float32, got ",
              sigma.scalar_type());
  TORCH_CHECK(sigma.device() == images.device(), "sigma must be on the images' device ",
              images.device(), ", got ", sigma.device());
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "kernel_size must be odd and >= 1, got ",
              kernel_size);
  SIMCLR_CHECK_DEFINED(out);
  TORCH_CHECK(out.sizes() == images.sizes(), "out must have the images' shape ", images.sizes(),
              ", got ", out.sizes());
  SIMCLR_CHECK_SAME_DTYPE(out, images);
  SIMCLR_CHECK_SAME_DEVICE(out, images);
  if (images.numel() == 0) return out;
  // Reflect padding mirrors at most one image width: F.pad(mode="reflect") has the same limit.
  TORCH_CHECK(kernel_size / 2 < h && kernel_size / 2 < w, "kernel_size ", kernel_size,
              " is too large for ", h, " x ", w, " images: reflect padding needs kernel_size / 2 "
              "< height and < width");
  const bool in_place = out.is_same(images);
  TORCH_CHECK(in_place || !out.is_alias_of(images),
              "out must be the images tensor itself (in place) or not share its memory");
  const at::Tensor s = sigma.contiguous();
  if (images.is_cuda()) {
#ifdef WITH_CUDA
    gaussian_blur_cuda(images, s, kernel_size, out, in_place);
#endif
  } else {
    const float* p = s.const_data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(p[i] >= 0.f && std::isfinite(p[i]), "sigma[", i,
                  "] must be finite and >= 0 (0: no blur), got ", p[i]);
    }
    gaussian_blur_cpu(images, s, kernel_size, out, in_place);
  }
  return out;
}

}  // namespace blur
}  // namespace simclr_ext
