// CPU kernel of the per-image Gaussian blur: at::parallel_for over the (image, channel) planes
// of the images that are blurred (images with sigma 0 are only copied when the result is a new
// tensor, and skipped in place). A plane is blurred separably by blur_cpu.h's CpuBlurrer
// (docs/architecture.md section 10.3).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "blur/blur.h"
#include "blur/blur_cpu.h"

namespace simclr_ext {
namespace blur {

namespace {

struct Plane {
  int64_t n, h, w, s_n, s_c, s_h, s_w;
  explicit Plane(const at::Tensor& t)
      : n(t.size(0)), h(t.size(2)), w(t.size(3)), s_n(t.stride(0)), s_c(t.stride(1)),
        s_h(t.stride(2)), s_w(t.stride(3)) {}
  int64_t offset(int64_t img, int64_t c) const { return img * s_n + c * s_c; }
};

template <typename scalar_t>
void run_kernel(const at::Tensor& images, const at::Tensor& sigma, int64_t k, at::Tensor& out,
                bool in_place) {
  using acc_t = at::opmath_type<scalar_t>;
  const Plane in_l(images), out_l(out);
  const int64_t channels = images.size(1), h = in_l.h, w = in_l.w;
  const scalar_t* in = images.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const float* sig = sigma.const_data_ptr<float>();

  std::vector<int64_t> blurred, copied;  // plane ids img * channels + c
  for (int64_t img = 0; img < in_l.n; ++img) {
    auto& list = blurs(sig[img]) ? blurred : copied;
    if (&list == &copied && in_place) continue;
    for (int64_t c = 0; c < channels; ++c) list.push_back(img * channels + c);
  }

  at::parallel_for(0, static_cast<int64_t>(blurred.size()), 1, [&](int64_t begin, int64_t end) {
    CpuBlurrer<acc_t> blurrer;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t img = blurred[item] / channels, c = blurred[item] % channels;
      blurrer.set_sigma(img, static_cast<acc_t>(sig[img]), static_cast<int>(k));
      blurrer.run(in + in_l.offset(img, c), in_l.s_h, in_l.s_w, dst + out_l.offset(img, c),
                  out_l.s_h, out_l.s_w, h, w);
    }
  });

  if (!copied.empty()) {
    at::parallel_for(0, static_cast<int64_t>(copied.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t img = copied[item] / channels, c = copied[item] % channels;
        const scalar_t* src = in + in_l.offset(img, c);
        scalar_t* o = dst + out_l.offset(img, c);
        for (int64_t y = 0; y < h; ++y) {
          for (int64_t x = 0; x < w; ++x) {
            o[y * out_l.s_h + x * out_l.s_w] = src[y * in_l.s_h + x * in_l.s_w];
          }
        }
      }
    });
  }
}

}  // namespace

void gaussian_blur_cpu(const at::Tensor& images, const at::Tensor& sigma, int64_t kernel_size,
                       at::Tensor& out, bool in_place) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(),
                                  "gaussian_blur_cpu", [&] {
    run_kernel<scalar_t>(images, sigma, kernel_size, out, in_place);
  });
}

}  // namespace blur
}  // namespace simclr_ext
