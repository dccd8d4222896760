// CPU kernel of the color distortion: at::parallel_for over (image, pixel chunk) work items; each
// chunk is processed in blocks of kBlock pixels held as three float arrays, one op at a time over
// the block, so every per-op loop is a straight vectorizable loop over color_math.h's functions.
// Contrast needs the image's mean luma at its step: a first pass applies the ops that precede
// contrast in that image's order and sums the luma per chunk (summed per image in a fixed order,
// so the result does not depend on the thread count); the second pass runs the whole pipeline.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstring>

#include "color/color.h"
#include "color/color_math.h"
#include "color/layout.h"
#include "color/pixel_loop_cpu.h"

// The block loops run color_math.h's templates on 8-float GCC vectors; they are compiled twice,
// for AVX2 and the baseline ISA, and picked at load time (GCC function multi-versioning), so a
// default (SSE2) build still runs 8-wide on AVX2 machines; `flatten` inlines the per-pixel
// templates into each clone so they get its ISA.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SIMCLR_VEC_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define SIMCLR_VEC_CLONES
#endif

namespace simclr_ext {
namespace color {

namespace {

constexpr int64_t kBlock = 256;   // pixels per block: 3 x 1 KiB of floats, stays in L1
constexpr int64_t kChunk = 4096;  // pixels per parallel work item

SIMCLR_VEC_CLONES void block_brightness(float* r, float* g, float* b, int64_t n, float factor) {
  for_each_pixel(r, g, b, n, [=](auto& rr, auto& gg, auto& bb) {
    adjust_brightness(rr, gg, bb, factor);
  });
}

SIMCLR_VEC_CLONES void block_contrast(float* r, float* g, float* b, int64_t n, float factor,
                                      float mean_luma) {
  for_each_pixel(r, g, b, n, [=](auto& rr, auto& gg, auto& bb) {
    adjust_contrast(rr, gg, bb, factor, mean_luma);
  });
}

SIMCLR_VEC_CLONES void block_saturation(float* r, float* g, float* b, int64_t n, float factor) {
  for_each_pixel(r, g, b, n, [=](auto& rr, auto& gg, auto& bb) {
    adjust_saturation(rr, gg, bb, factor);
  });
}

SIMCLR_VEC_CLONES void block_hue(float* r, float* g, float* b, int64_t n, float factor) {
  for_each_pixel(r, g, b, n, [=](auto& rr, auto& gg, auto& bb) {
    adjust_hue(rr, gg, bb, factor);
  });
}

SIMCLR_VEC_CLONES void block_gray(float* r, float* g, float* b, int64_t n) {
  for_each_pixel(r, g, b, n, [](auto& rr, auto& gg, auto& bb) { to_grayscale(rr, gg, bb); });
}

// Sum of the block's luma: 8 independent partial sums so the loop vectorizes without
// reassociating a single float chain (which the compiler may not do on its own).
SIMCLR_VEC_CLONES double block_luma_sum(const float* __restrict r, const float* __restrict g,
                                        const float* __restrict b, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += luma(r[i + j], g[i + j], b[i + j]);
  }
  double total = 0.0;
  for (; i < n; ++i) total += luma(r[i], g[i], b[i]);
  for (int j = 0; j < 8; ++j) total += acc[j];
  return total;
}

// Steps [0, end) of the image's order on one block.
void run_steps(const ImageParams& p, int end, float mean_luma, float* r, float* g, float* b,
               int64_t n) {
  for (int k = 0; k < end; ++k) {
    switch (p.order[k]) {
      case kBrightness: block_brightness(r, g, b, n, p.factor[kBrightness]); break;
      case kContrast: block_contrast(r, g, b, n, p.factor[kContrast], mean_luma); break;
      case kSaturation: block_saturation(r, g, b, n, p.factor[kSaturation]); break;
      case kHue: block_hue(r, g, b, n, p.factor[kHue]); break;
      default: break;
    }
  }
}

// Pixels [p0, p0 + n) of one image into r, g, b.
template <typename in_t>
void load_block(const in_t* image, const Layout& l, int64_t p0, int64_t n, float* r, float* g,
                float* b) {
  const in_t* src_r = image + p0 * l.pixel;
  const in_t* src_g = src_r + l.channel;
  const in_t* src_b = src_g + l.channel;
  if (l.pixel == 1) {
    for (int64_t i = 0; i < n; ++i) r[i] = to_unit(src_r[i]);
    for (int64_t i = 0; i < n; ++i) g[i] = to_unit(src_g[i]);
    for (int64_t i = 0; i < n; ++i) b[i] = to_unit(src_b[i]);
  } else {
    const int64_t s = l.pixel;
    for (int64_t i = 0; i < n; ++i) {
      r[i] = to_unit(src_r[i * s]);
      g[i] = to_unit(src_g[i * s]);
      b[i] = to_unit(src_b[i * s]);
    }
  }
}

template <typename out_t>
void store_channel(out_t* dst, int64_t s, const float* x, int64_t n, const Norm& nm, int c) {
  if (nm.on) {
    const float m = nm.mean[c], sd = nm.std[c];
    if (s == 1) {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<out_t>((x[i] - m) / sd);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i * s] = static_cast<out_t>((x[i] - m) / sd);
    }
  } else if (s == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<out_t>(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * s] = static_cast<out_t>(x[i]);
  }
}

template <typename in_t, typename out_t>
void run_kernel(const at::Tensor& images, at::Tensor& out, const std::vector<ImageParams>& params,
                const Norm& nm) {
  const int64_t batch = images.size(0);
  const int64_t pixels = images.size(2) * images.size(3);
  const int64_t chunks = (pixels + kChunk - 1) / kChunk;
  const Layout in_l = layout_of(images), out_l = layout_of(out);
  const in_t* in = images.const_data_ptr<in_t>();
  out_t* dst = out.mutable_data_ptr<out_t>();

  // Pass 1: luma sums of the image as it is just before its contrast step, per chunk.
  std::vector<double> partial(batch * chunks, 0.0);
  bool any_contrast = false;
  for (const auto& p : params) any_contrast |= p.contrast_step < kNumOps;
  if (any_contrast) {
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      alignas(64) float r[kBlock], g[kBlock], b[kBlock];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n_img = item / chunks, chunk = item % chunks;
        const ImageParams& p = params[n_img];
        if (p.contrast_step >= kNumOps) continue;
        const int64_t stop = std::min(pixels, (chunk + 1) * kChunk);
        double sum = 0.0;
        for (int64_t p0 = chunk * kChunk; p0 < stop; p0 += kBlock) {
          const int64_t n = std::min(kBlock, stop - p0);
          load_block(in + n_img * in_l.image, in_l, p0, n, r, g, b);
          run_steps(p, p.contrast_step, 0.f, r, g, b, n);
          sum += block_luma_sum(r, g, b, n);
        }
        partial[item] = sum;
      }
    });
  }
  std::vector<float> mean_luma(batch, 0.f);
  for (int64_t i = 0; i < batch; ++i) {
    double sum = 0.0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[i * chunks + c];
    mean_luma[i] = static_cast<float>(sum / static_cast<double>(pixels));
  }

  // Pass 2: the whole pipeline, written once.
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float r[kBlock], g[kBlock], b[kBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n_img = item / chunks, chunk = item % chunks;
      const ImageParams& p = params[n_img];
      const int64_t stop = std::min(pixels, (chunk + 1) * kChunk);
      out_t* out_img = dst + n_img * out_l.image;
      for (int64_t p0 = chunk * kChunk; p0 < stop; p0 += kBlock) {
        const int64_t n = std::min(kBlock, stop - p0);
        load_block(in + n_img * in_l.image, in_l, p0, n, r, g, b);
        if (p.jitter) run_steps(p, kNumOps, mean_luma[n_img], r, g, b, n);
        if (p.gray) block_gray(r, g, b, n);
        out_t* o = out_img + p0 * out_l.pixel;
        store_channel(o, out_l.pixel, r, n, nm, 0);
        store_channel(o + out_l.channel, out_l.pixel, g, n, nm, 1);
        store_channel(o + 2 * out_l.channel, out_l.pixel, b, n, nm, 2);
      }
    }
  });
}

}  // namespace

void distort_cpu(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                 const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor& out,
                 const Norm& nm) {
  const int64_t batch = images.size(0);
  const float* f = factors.const_data_ptr<float>();
  const int64_t* o = order.const_data_ptr<int64_t>();
  const bool* j = apply_jitter.const_data_ptr<bool>();
  const bool* g = apply_gray.const_data_ptr<bool>();
  std::vector<ImageParams> params(batch);
  for (int64_t i = 0; i < batch; ++i) params[i] = load_params(f, o, j, g, i);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, images.scalar_type(),
                                  "color_distort_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                    "color_distort_cpu_out", [&] {
      run_kernel<in_t, scalar_t>(images, out, params, nm);
    });
  });
}

}  // namespace color
}  // namespace simclr_ext
