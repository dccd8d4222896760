// Per-axis math of the antialiased resized crop, shared by the CPU and CUDA kernels: the
// interpolation weights of ATen's separable bilinear resize with antialias=True on float
// tensors (what torchvision's resized_crop(..., antialias=True) runs), reproduced with the
// same float/double promotions so the spans and weights come out bit for bit the same
// (docs/architecture.md section 10.1).
//
// One output index i of an axis that maps in_size source samples to out_size outputs reads the
// source samples [xmin, xmin + xsize) with normalized triangle-filter weights. Downscaling
// (scale = in / out > 1) widens the triangle to `scale` source samples on each side, which is
// the antialiasing; upscaling keeps support 1 (plain bilinear, edges clamped by renormalizing).
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

// Inlined into the CUDA kernel (a call would cost registers and stack for the returned structs).
#if defined(__CUDACC__)
#define SIMCLR_CROP_FN C10_HOST_DEVICE __forceinline__
#else
#define SIMCLR_CROP_FN inline
#endif

namespace simclr_ext {
namespace crop {

// The bilinear (triangle) filter of ATen's HelperInterpLinear::aa_filter.
SIMCLR_CROP_FN float triangle(float x) {
  x = x < 0.f ? -x : x;
  return x < 1.f ? 1.f - x : 0.f;
}

// Scale, support and the largest tap count of one axis of one crop.
struct Axis {
  int64_t in_size;
  float scale;     // in_size / out_size, in float as area_pixel_compute_scale<float>
  float support;   // filter half-width in source samples: max(scale, 1) (interp_size 2 x 0.5)
  float invscale;  // 1 / scale when downscaling, else 1 (the filter's argument scale)
  int max_taps;    // ceil(support) * 2 + 1: the span never exceeds it (ATen clamps to it)
};

SIMCLR_CROP_FN Axis make_axis(int64_t in_size, int64_t out_size) {
  Axis a;
  a.in_size = in_size;
  a.scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  // ATen writes (interp_size * 0.5) * scale in double and stores it as float; 1.0 * scale is
  // exact, so the float product below is the same value.
  a.support = a.scale >= 1.f ? a.scale : 1.f;
  // 1.0 / scale in double, then rounded to float, as ATen's `scalar_t invscale = 1.0 / scale`.
  a.invscale = a.scale >= 1.f ? static_cast<float>(1.0 / static_cast<double>(a.scale)) : 1.f;
  a.max_taps = static_cast<int>(::ceilf(a.support)) * 2 + 1;
  return a;
}

// Upper bound of max_taps over every crop of an axis of at most `max_in` samples (the host sizes
// shared buffers with it without reading the boxes): the float division is monotonic in in_size.
inline int max_taps_bound(int64_t max_in, int64_t out_size) {
  return make_axis(max_in > out_size ? max_in : out_size, out_size).max_taps;
}

// Source span of output index i. center is the output sample's position in source coordinates,
// rounded to float as ATen stores it (float scale times the double i + 0.5).
struct Span {
  int64_t start;
  int count;
  float center;
};

SIMCLR_CROP_FN Span make_span(const Axis& a, int64_t i) {
  Span s;
  s.center = static_cast<float>(static_cast<double>(a.scale) * (static_cast<double>(i) + 0.5));
  // (float center -+ float support) + double 0.5, truncated toward zero, as ATen's
  // static_cast<int64_t>(center - support + 0.5).
  int64_t lo = static_cast<int64_t>(static_cast<double>(s.center - a.support) + 0.5);
  int64_t hi = static_cast<int64_t>(static_cast<double>(s.center + a.support) + 0.5);
  lo = lo > 0 ? lo : 0;
  hi = hi < a.in_size ? hi : a.in_size;
  int64_t n = hi - lo;
  // Rounding can make the span one longer than max_taps; ATen clips it the same way.
  n = n < 0 ? 0 : (n > a.max_taps ? a.max_taps : n);
  s.start = lo;
  s.count = static_cast<int>(n);
  return s;
}

// Normalized weights w[0 .. span.count) of the span. The filter argument follows ATen's
// promotions: (float(j + xmin) - center) in float, + 0.5 in double, times invscale in double,
// rounded to float for the filter. Weights are summed and divided in float.
SIMCLR_CROP_FN void span_weights(const Axis& a, const Span& s, float* w) {
  float total = 0.f;
  for (int j = 0; j < s.count; ++j) {
    const float d = static_cast<float>(s.start + j) - s.center;
    const float x = static_cast<float>((static_cast<double>(d) + 0.5) *
                                       static_cast<double>(a.invscale));
    w[j] = triangle(x);
    total += w[j];
  }
  if (total != 0.f) {
    for (int j = 0; j < s.count; ++j) w[j] /= total;
  }
}

// A crop box (top, left, height, width) in source pixels of an H x W image.
struct Box {
  int64_t top, left, height, width;
};

SIMCLR_CROP_FN bool box_inside(const Box& b, int64_t H, int64_t W) {
  return b.top >= 0 && b.left >= 0 && b.height >= 1 && b.width >= 1 && b.top <= H - b.height &&
         b.left <= W - b.width;
}

// The CUDA kernel cannot raise on a bad box without a host synchronization; it clamps the box
// into the image instead (so it never reads outside it). Valid boxes are returned unchanged.
SIMCLR_CROP_FN Box clamp_box(Box b, int64_t H, int64_t W) {
  b.height = b.height < 1 ? 1 : (b.height > H ? H : b.height);
  b.width = b.width < 1 ? 1 : (b.width > W ? W : b.width);
  b.top = b.top < 0 ? 0 : (b.top > H - b.height ? H - b.height : b.top);
  b.left = b.left < 0 ? 0 : (b.left > W - b.width ? W - b.width : b.left);
  return b;
}

}  // namespace crop
}  // namespace simclr_ext
