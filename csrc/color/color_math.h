// Per-pixel color math shared by the CPU and CUDA kernels, written once: torchvision 0.29's
// transforms.v2.functional adjust_brightness / adjust_contrast / adjust_saturation / adjust_hue
// (_rgb_to_hsv / _hsv_to_rgb) and rgb_to_grayscale, on float32 pixels in [0, 1]. Every function
// is branch-free (selects only), so one lane type can be a SIMD vector.
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>

namespace simclr_ext {
namespace color {

// Op codes used by `order` (docs/architecture.md, 4.1).
constexpr int kBrightness = 0;
constexpr int kContrast = 1;
constexpr int kSaturation = 2;
constexpr int kHue = 3;
constexpr int kNumOps = 4;

// torchvision's luma weights (ITU-R 601-2, as rounded in _rgb_to_grayscale_image).
constexpr float kLumaR = 0.2989f;
constexpr float kLumaG = 0.587f;
constexpr float kLumaB = 0.114f;

// Same rounding as torchvision's to_dtype(uint8 -> float32, scale=True): x * (1 / 255).
constexpr float kInv255 = static_cast<float>(1.0 / 255.0);

// Every per-pixel function is a template over the lane type F: float (the CUDA kernel, and
// scalar CPU code) or a GCC vector of 8 floats (the CPU kernel's blocks, see color_cpu.cpp). The
// same source serves both because comparisons, `!`/`&&`/`||`, `?:` and arithmetic with float
// constants mean the same thing lane by lane on GCC vectors; sel() is the one select.
template <typename M, typename F>
C10_HOST_DEVICE inline F sel(M mask, F a, F b) {
  return mask ? a : b;
}

template <typename F>
C10_HOST_DEVICE inline F splat(float v) {
  return F{} + v;
}

// floor(x) for x >= 0 (truncation), as a float.
C10_HOST_DEVICE inline float trunc_nonneg(float x) {
  return static_cast<float>(static_cast<int>(x));
}

#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__clang__)
// 8 float lanes for the CPU blocks (GCC vector extension; two SSE registers or one AVX2). GCC
// prints a -Wpsabi note on the function below: its vector ABI differs with -mavx, which does not
// matter for an inline function that is never called across objects.
typedef float float8 __attribute__((vector_size(32)));
typedef int int8v __attribute__((vector_size(32)));
inline float8 trunc_nonneg(float8 x) {
  return __builtin_convertvector(__builtin_convertvector(x, int8v), float8);
}
#define SIMCLR_COLOR_HAVE_FLOAT8 1
#endif

template <typename F>
C10_HOST_DEVICE inline F clamp01(F x) {
  // In this operand order a NaN stays NaN, as torch.clamp keeps it.
  x = sel(x < 0.f, F{}, x);
  return sel(x > 1.f, splat<F>(1.f), x);
}

template <typename F>
C10_HOST_DEVICE inline F luma(F r, F g, F b) {
  return r * kLumaR + g * kLumaG + b * kLumaB;
}

// _blend(image1, image2, ratio) = clamp(image1 * ratio + image2 * (1 - ratio), 0, 1)
template <typename F, typename G>
C10_HOST_DEVICE inline F blend(F x, G y, float ratio, float one_minus_ratio) {
  return clamp01<F>(x * ratio + y * one_minus_ratio);
}

template <typename F>
C10_HOST_DEVICE inline void adjust_brightness(F& r, F& g, F& b, float factor) {
  r = clamp01<F>(r * factor);
  g = clamp01<F>(g * factor);
  b = clamp01<F>(b * factor);
}

// Contrast blends every channel with one scalar: the mean luma of the whole image as it is at
// this step (computed by the backends' first pass).
template <typename F>
C10_HOST_DEVICE inline void adjust_contrast(F& r, F& g, F& b, float factor, float mean_luma) {
  const float w = 1.f - factor;
  r = blend(r, mean_luma, factor, w);
  g = blend(g, mean_luma, factor, w);
  b = blend(b, mean_luma, factor, w);
}

// Saturation blends every channel with the pixel's own luma.
template <typename F>
C10_HOST_DEVICE inline void adjust_saturation(F& r, F& g, F& b, float factor) {
  const F l = luma(r, g, b);
  const float w = 1.f - factor;
  r = blend(r, l, factor, w);
  g = blend(g, l, factor, w);
  b = blend(b, l, factor, w);
}

// torch.remainder(x, 1) for x in (-1, 2): fmod is exact there (x - 1 by Sterbenz), and a
// negative fmod result gets + 1, rounded, exactly as ATen's remainder kernel does.
template <typename F>
C10_HOST_DEVICE inline F remainder1(F x) {
  return sel(x >= 1.f, x - 1.f, sel(x < 0.f, x + 1.f, x));
}

// Hue rotation: _rgb_to_hsv, h = (h + factor) mod 1, _hsv_to_rgb, step by step as torchvision.
template <typename F>
C10_HOST_DEVICE inline void adjust_hue(F& r, F& g, F& b, float factor) {
  const F maxc = sel(r > g, sel(r > b, r, b), sel(g > b, g, b));
  const F minc = sel(r < g, sel(r < b, r, b), sel(g < b, g, b));
  // maxc == minc (gray) erases h and s: the divisors become 1 instead of 0, as in torchvision.
  const auto eqc = maxc == minc;
  const F one = splat<F>(1.f);
  const F range = maxc - minc;
  const F s = range / sel(eqc, one, maxc);
  const F div = sel(eqc, one, range);
  const F rc = (maxc - r) / div;
  const F gc = (maxc - g) / div;
  const F bc = (maxc - b) / div;
  // One sector holds: max is r, else max is g, else b (torchvision's masks, same tie order).
  const F hr = bc - gc;
  const F hg = (rc + 2.f) - bc;
  const F hb = (gc + 4.f) - rc;
  F h = sel(maxc == r, hr, sel(maxc == g, hg, hb));
  // h / 6 lies in [-1/6, 5/6]: (h / 6 + 1) mod 1 as torchvision's fmod_(1.0).
  h = remainder1<F>(h * static_cast<float>(1.0 / 6.0) + 1.f);
  h = remainder1<F>(h + factor);  // factor in [-0.5, 0.5], so h + factor in [-0.5, 1.5)
  const F v = maxc;

  F h6 = h * 6.f;
  // h6 >= 0, so truncation is floor; the clamp keeps a NaN pixel from a UB float->int cast.
  h6 = sel(h6 > 0.f, h6, F{});
  h6 = sel(h6 < 6.f, h6, splat<F>(6.f));
  const F i = trunc_nonneg(h6);
  const F f = h6 - i;
  const F sxf = s * f;
  const F one_minus_s = 1.f - s;
  const F q = clamp01<F>((1.f - sxf) * v);
  const F t = clamp01<F>((sxf + one_minus_s) * v);
  const F p = clamp01<F>(one_minus_s * v);
  // rgb per sector i (6 is torchvision's i.remainder_(6) = 0):
  //   0: (v,t,p)  1: (q,v,p)  2: (p,v,t)  3: (p,q,v)  4: (t,p,v)  5: (v,p,q)
  const auto s1 = i == 1.f, s2 = i == 2.f, s3 = i == 3.f, s4 = i == 4.f, s5 = i == 5.f;
  const auto upper = s3 || s4 || s5;
  r = sel(s2 || s3 || s4, sel(s4, t, p), sel(s1, q, v));
  g = sel(upper, sel(s3, q, p), sel(s1 || s2, v, t));
  b = sel(upper, sel(s5, q, v), sel(s2, t, p));
}

// rgb_to_grayscale(num_output_channels=3): no clamp (the weights sum to 0.9999).
template <typename F>
C10_HOST_DEVICE inline void to_grayscale(F& r, F& g, F& b) {
  const F l = luma(r, g, b);
  r = l;
  g = l;
  b = l;
}

// One image's parameters, read once per image by both backends.
struct ImageParams {
  float factor[kNumOps];  // indexed by op code
  int order[kNumOps];     // op code at each step; codes outside 0..3 are no-ops
  bool jitter;
  bool gray;
  int contrast_step;      // step at which contrast runs (kNumOps: no contrast pass needed)
};

C10_HOST_DEVICE inline ImageParams load_params(const float* factors, const int64_t* order,
                                               const bool* apply_jitter, const bool* apply_gray,
                                               int64_t image) {
  ImageParams p;
  p.jitter = apply_jitter[image];
  p.gray = apply_gray[image];
  p.contrast_step = kNumOps;
  for (int k = 0; k < kNumOps; ++k) {
    p.factor[k] = factors[image * kNumOps + k];
    p.order[k] = static_cast<int>(order[image * kNumOps + k]);
  }
  // contrast with factor exactly 1 is x * 1 + mean * 0 = x for any finite mean: skip its pass.
  if (p.jitter && p.factor[kContrast] != 1.f) {
    for (int k = 0; k < kNumOps; ++k) {
      if (p.order[k] == kContrast) p.contrast_step = k;
    }
  }
  return p;
}

// Applies the op with this code to one pixel (the CUDA kernel's per-pixel path).
template <typename F>
C10_HOST_DEVICE inline void apply_op(int op, const ImageParams& p, float mean_luma, F& r, F& g,
                                     F& b) {
  switch (op) {
    case kBrightness: adjust_brightness(r, g, b, p.factor[kBrightness]); break;
    case kContrast: adjust_contrast(r, g, b, p.factor[kContrast], mean_luma); break;
    case kSaturation: adjust_saturation(r, g, b, p.factor[kSaturation]); break;
    case kHue: adjust_hue(r, g, b, p.factor[kHue]); break;
    default: break;
  }
}

}  // namespace color
}  // namespace simclr_ext
