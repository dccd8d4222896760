// CPU kernel of the fused views: at::parallel_for over views. A view lives in a per-thread
// buffer of 3 float planes (S x S each: 600 KiB at S = 224, 108 KiB at 96) from its crop to its
// store, so the source is read once and the output written once (docs/architecture.md 10.4):
//   1. crop: the three channels resampled into the buffer (crop_cpu.h), scaled to [0, 1];
//   2. color: when the view's contrast changes, the ops before contrast are applied to a copy of
//      each 256-pixel block and its luma summed (the image mean at the contrast step); then the
//      four ops in the view's order and grayscale run in place, one op at a time over 256-pixel
//      blocks, 8 lanes per step (color_math.h, the color kernels' functions);
//   3. blur: the three planes in place when sigma > 0 (blur_cpu.h);
//   4. store: (x - mean) / std in out's dtype and layout.
// The order is torchvision's (blur before normalization).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "augment/augment.h"
#include "blur/blur_cpu.h"
#include "color/color_math.h"
#include "color/pixel_loop_cpu.h"
#include "crop/crop_cpu.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SIMCLR_AUG_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define SIMCLR_AUG_CLONES
#endif

namespace simclr_ext {
namespace augment {

namespace {

using color::for_each_pixel;  // color/pixel_loop_cpu.h
using color::ImageParams;
constexpr int64_t kBlock = 256;  // pixels per color block: 3 KiB of lanes, stays in L1

// One color op (a code of `order`, or -1 for grayscale) on a block of n pixels.
SIMCLR_AUG_CLONES void block_op(int op, const ImageParams& p, float mean_luma, float* r,
                                float* g, float* b, int64_t n) {
  switch (op) {
    case color::kBrightness:
      for_each_pixel(r, g, b, n, [&](auto& R, auto& G, auto& B) {
        color::adjust_brightness(R, G, B, p.factor[color::kBrightness]);
      });
      break;
    case color::kContrast:
      for_each_pixel(r, g, b, n, [&](auto& R, auto& G, auto& B) {
        color::adjust_contrast(R, G, B, p.factor[color::kContrast], mean_luma);
      });
      break;
    case color::kSaturation:
      for_each_pixel(r, g, b, n, [&](auto& R, auto& G, auto& B) {
        color::adjust_saturation(R, G, B, p.factor[color::kSaturation]);
      });
      break;
    case color::kHue:
      for_each_pixel(r, g, b, n, [&](auto& R, auto& G, auto& B) {
        color::adjust_hue(R, G, B, p.factor[color::kHue]);
      });
      break;
    case -1:
      for_each_pixel(r, g, b, n, [](auto& R, auto& G, auto& B) { color::to_grayscale(R, G, B); });
      break;
    default: break;
  }
}

// Sum of a block's luma with 8 independent partial sums (a vectorizable loop without
// reassociating one float chain).
SIMCLR_AUG_CLONES double block_luma_sum(const float* __restrict r, const float* __restrict g,
                                        const float* __restrict b, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += color::luma(r[i + j], g[i + j], b[i + j]);
  }
  double total = 0.0;
  for (; i < n; ++i) total += color::luma(r[i], g[i], b[i]);
  for (int j = 0; j < 8; ++j) total += acc[j];
  return total;
}

// Mean luma of the view just before its contrast step (the buffer itself is not modified).
float contrast_mean(const ImageParams& p, const float* r, const float* g, const float* b,
                    int64_t pixels) {
  alignas(64) float tr[kBlock], tg[kBlock], tb[kBlock];
  double sum = 0.0;
  for (int64_t p0 = 0; p0 < pixels; p0 += kBlock) {
    const int64_t n = std::min(kBlock, pixels - p0);
    std::memcpy(tr, r + p0, n * sizeof(float));
    std::memcpy(tg, g + p0, n * sizeof(float));
    std::memcpy(tb, b + p0, n * sizeof(float));
    for (int k = 0; k < p.contrast_step; ++k) block_op(p.order[k], p, 0.f, tr, tg, tb, n);
    sum += block_luma_sum(tr, tg, tb, n);
  }
  return static_cast<float>(sum / static_cast<double>(pixels));
}

struct Norm {
  bool on = false;
  float mean[3] = {0.f, 0.f, 0.f};
  float std[3] = {1.f, 1.f, 1.f};
};

template <typename out_t>
void store_plane(const float* x, int64_t size, const Norm& nm, int c, out_t* dst, int64_t o_h,
                 int64_t o_w) {
  const float m = nm.on ? nm.mean[c] : 0.f, sd = nm.on ? nm.std[c] : 1.f;
  for (int64_t y = 0; y < size; ++y) {
    const float* row = x + y * size;
    out_t* o = dst + y * o_h;
    if (o_w == 1) {
      for (int64_t i = 0; i < size; ++i) o[i] = static_cast<out_t>((row[i] - m) / sd);
    } else {
      for (int64_t i = 0; i < size; ++i) o[i * o_w] = static_cast<out_t>((row[i] - m) / sd);
    }
  }
}

template <typename in_t, typename out_t>
void run_kernel(const std::vector<crop::SourceImage>& sources, const at::Tensor& boxes,
                const at::Tensor& flip, const at::Tensor& factors, const at::Tensor& order,
                const at::Tensor& apply_jitter, const at::Tensor& apply_gray,
                const at::Tensor& sigma, int64_t kernel_size, float out_scale, const Norm& nm,
                at::Tensor& out) {
  const int64_t views = out.size(0), size = out.size(2), pixels = size * size;
  const int64_t batch = static_cast<int64_t>(sources.size());
  const int64_t* box_ptr = boxes.const_data_ptr<int64_t>();
  const bool* flip_ptr = flip.const_data_ptr<bool>();
  const float* f = factors.const_data_ptr<float>();
  const int64_t* o = order.const_data_ptr<int64_t>();
  const bool* jit = apply_jitter.const_data_ptr<bool>();
  const bool* gray = apply_gray.const_data_ptr<bool>();
  const float* sig = sigma.const_data_ptr<float>();
  out_t* dst = out.mutable_data_ptr<out_t>();
  const int64_t o_n = out.stride(0), o_c = out.stride(1), o_h = out.stride(2), o_w = out.stride(3);

  at::parallel_for(0, views, 1, [&](int64_t begin, int64_t end) {
    crop::CpuCropper cropper;
    blur::CpuBlurrer<float> blurrer;
    std::vector<float> buf(3 * pixels);
    float* planes[3] = {buf.data(), buf.data() + pixels, buf.data() + 2 * pixels};
    for (int64_t v = begin; v < end; ++v) {
      const crop::Box box{box_ptr[4 * v], box_ptr[4 * v + 1], box_ptr[4 * v + 2],
                          box_ptr[4 * v + 3]};
      for (int c = 0; c < 3; ++c) {
        cropper.channel<in_t>(sources[v % batch], box, v, c, size, flip_ptr[v], out_scale,
                              planes[c], size, 1);
      }
      const ImageParams p = color::load_params(f, o, jit, gray, v);
      if (p.jitter) {
        const float mean_luma = p.contrast_step < color::kNumOps
                                    ? contrast_mean(p, planes[0], planes[1], planes[2], pixels)
                                    : 0.f;
        for (int64_t p0 = 0; p0 < pixels; p0 += kBlock) {
          const int64_t n = std::min(kBlock, pixels - p0);
          for (int k = 0; k < color::kNumOps; ++k) {
            block_op(p.order[k], p, mean_luma, planes[0] + p0, planes[1] + p0, planes[2] + p0, n);
          }
        }
      }
      if (p.gray) {
        for (int64_t p0 = 0; p0 < pixels; p0 += kBlock) {
          const int64_t n = std::min(kBlock, pixels - p0);
          block_op(-1, p, 0.f, planes[0] + p0, planes[1] + p0, planes[2] + p0, n);
        }
      }
      if (blur::blurs(sig[v])) {
        blurrer.set_sigma(v, sig[v], static_cast<int>(kernel_size));
        for (int c = 0; c < 3; ++c) {
          blurrer.run(planes[c], size, 1, planes[c], size, 1, size, size);
        }
      }
      for (int c = 0; c < 3; ++c) store_plane(planes[c], size, nm, c, dst + v * o_n + c * o_c, o_h, o_w);
    }
  });
}

}  // namespace

void views_cpu(const std::vector<crop::SourceImage>& sources, at::ScalarType dtype,
               const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
               const at::Tensor& order, const at::Tensor& apply_jitter,
               const at::Tensor& apply_gray, const at::Tensor& sigma, int64_t kernel_size,
               float out_scale, const std::vector<float>& norm_mean,
               const std::vector<float>& norm_std, at::Tensor& out) {
  Norm nm;
  if (!norm_mean.empty()) {
    nm.on = true;
    for (int c = 0; c < 3; ++c) {
      nm.mean[c] = norm_mean[c];
      nm.std[c] = norm_std[c];
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, dtype, "simclr_views_cpu",
                                  [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                    "simclr_views_cpu_out", [&] {
      run_kernel<in_t, scalar_t>(sources, boxes, flip, factors, order, apply_jitter, apply_gray,
                                 sigma, kernel_size, out_scale, nm, out);
    });
  });
}

}  // namespace augment
}  // namespace simclr_ext
