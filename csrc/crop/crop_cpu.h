// CPU building blocks of the resized crop, shared by the crop kernel (crop_cpu.cpp) and the fused
// per-view pipeline (csrc/augment/augment_cpu.cpp): the axis tables, the two separable passes
// over one channel of one crop, and the store with flip and scale (docs/architecture.md 10.2).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "crop/crop.h"
#include "crop/crop_math.h"
#include "crop/weighted_rows_cpu.h"

namespace simclr_ext {
namespace crop {

// Spans and weights of every output index of one axis of one crop: weights of index i at
// w[i * taps, i * taps + count[i]).
struct AxisTable {
  std::vector<int64_t> start;
  std::vector<int> count;
  std::vector<float> w;
  int taps = 0;

  void build(int64_t in_size, int64_t out_size) {
    const Axis a = make_axis(in_size, out_size);
    taps = a.max_taps;
    start.resize(out_size);
    count.resize(out_size);
    w.assign(out_size * taps, 0.f);  // zero past each span's count (the fixed-tap path reads them)
    for (int64_t i = 0; i < out_size; ++i) {
      const Span s = make_span(a, i);
      start[i] = s.start;
      count[i] = s.count;
      span_weights(a, s, w.data() + i * taps);
    }
  }
};

// out[x] = sum_j w[x][j] * row[start[x] - first + j]: the horizontal pass of one row, whose
// buffer starts at box column `first`.
inline void resample_row(const float* __restrict row, int64_t first, const AxisTable& t, int64_t n,
                  float* __restrict out) {
  const int taps = t.taps;
  for (int64_t x = 0; x < n; ++x) {
    const float* src = row + (t.start[x] - first);
    const float* w = t.w.data() + x * taps;
    const int count = t.count[x];
    float v = count > 0 ? src[0] * w[0] : 0.f;
    for (int j = 1; j < count; ++j) v += src[j] * w[j];
    out[x] = v;
  }
}

// The same with a fixed tap count K = t.taps (weights past a span's count are 0, and the row
// buffer holds K - 1 zeros past its end): no per-pixel trip count. Exact only for finite
// samples (0 * inf is NaN), so it serves uint8 sources; the result is bitwise the same.
template <int K>
void resample_row_fixed(const float* __restrict row, int64_t first, const AxisTable& t, int64_t n,
                        float* __restrict out) {
  for (int64_t x = 0; x < n; ++x) {
    const float* src = row + (t.start[x] - first);
    const float* w = t.w.data() + x * K;
    float v = src[0] * w[0];
    for (int j = 1; j < K; ++j) v += src[j] * w[j];
    out[x] = v;
  }
}

template <typename in_t>
void resample_row_any(const float* row, int64_t first, const AxisTable& t, int64_t n,
                      float* out) {
  if (std::is_same<in_t, uint8_t>::value) {
    switch (t.taps) {
      case 3: return resample_row_fixed<3>(row, first, t, n, out);
      case 5: return resample_row_fixed<5>(row, first, t, n, out);
      case 7: return resample_row_fixed<7>(row, first, t, n, out);
      default: break;
    }
  }
  resample_row(row, first, t, n, out);
}

template <typename in_t>
void load_row(const in_t* src, int64_t stride, int64_t n, float* __restrict dst) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i * stride]);
  }
}

// One output row of one channel, flipped or not, scaled, into its (strided) destination.
inline void store_row(const float* acc, int64_t n, bool flip, float scale, float* dst, int64_t stride) {
  if (!flip) {
    for (int64_t x = 0; x < n; ++x) dst[x * stride] = acc[x] * scale;
  } else {
    for (int64_t x = 0; x < n; ++x) dst[(n - 1 - x) * stride] = acc[x] * scale;
  }
}

// Per-thread state of the CPU crop: the axis tables of the crop last seen (its channels reuse
// them) and the row buffers.
struct CpuCropper {
  AxisTable tx, ty;
  std::vector<float> row, rows, acc;
  std::vector<const float*> taps;
  int64_t built_for = -1;

  // Channel c of crop `key` (box of source s) resampled to size x size, scaled, mirrored when
  // asked, into dst[y * dst_h + x * dst_w].
  template <typename in_t>
  void channel(const SourceImage& s, const Box& box, int64_t key, int64_t c, int64_t size,
               bool mirrored, float scale, float* dst, int64_t dst_h, int64_t dst_w) {
    if (built_for != key) {
      tx.build(box.width, size);
      ty.build(box.height, size);
      built_for = key;
    }
    // Source columns and rows the passes read, relative to the box.
    const int64_t x_lo = tx.start[0], x_hi = tx.start[size - 1] + tx.count[size - 1];
    const int64_t y_lo = ty.start[0], y_hi = ty.start[size - 1] + ty.count[size - 1];
    row.assign(x_hi - x_lo + tx.taps, 0.f);  // zero tail for the fixed-tap path
    rows.resize((y_hi - y_lo) * size);
    acc.resize(size);
    const in_t* plane = static_cast<const in_t*>(s.data) + c * s.stride_c +
                        box.top * s.stride_h + box.left * s.stride_w;
    for (int64_t r = y_lo; r < y_hi; ++r) {
      load_row(plane + r * s.stride_h + x_lo * s.stride_w, s.stride_w, x_hi - x_lo, row.data());
      resample_row_any<in_t>(row.data(), x_lo, tx, size, rows.data() + (r - y_lo) * size);
    }
    for (int64_t y = 0; y < size; ++y) {
      const int count = ty.count[y];
      taps.resize(count);
      for (int j = 0; j < count; ++j) taps[j] = rows.data() + (ty.start[y] - y_lo + j) * size;
      if (count == 0) {
        std::fill(acc.begin(), acc.end(), 0.f);
      } else {
        weighted_rows(acc.data(), taps.data(), ty.w.data() + y * ty.taps, count, size);
      }
      store_row(acc.data(), size, mirrored, scale, dst + y * dst_h, dst_w);
    }
  }
};

}  // namespace crop
}  // namespace simclr_ext
