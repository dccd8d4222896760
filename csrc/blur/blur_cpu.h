// CPU building block of the Gaussian blur, shared by the blur kernel (blur_cpu.cpp) and the fused
// per-view pipeline (csrc/augment/augment_cpu.cpp): one plane blurred separably
// (docs/architecture.md section 10.3). Each row, reflect-padded into a small buffer, is
// convolved along x into a plane buffer in the accumulation dtype (k shifted views of the padded
// row through weighted_rows), then each output row is weighted_rows of the k reflected buffer
// rows. The source plane is read completely before the destination is written, so src and dst
// may be the same plane (in place).
#pragma once
#include <cstdint>
#include <vector>

#include "blur/blur_math.h"
#include "crop/weighted_rows_cpu.h"

namespace simclr_ext {
namespace blur {

template <typename acc_t>
struct CpuBlurrer {
  std::vector<acc_t> weights, padded, plane, acc;
  std::vector<const acc_t*> taps;
  int64_t weights_for = -1;

  // Weights of sigma for kernel size k, computed once per `key` (an image).
  void set_sigma(int64_t key, acc_t sigma, int k) {
    if (weights_for == key) return;
    weights.resize(k);
    gaussian_weights<acc_t>(sigma, k, weights.data());
    weights_for = key;
  }

  template <typename in_t, typename out_t>
  void run(const in_t* src, int64_t src_h, int64_t src_w, out_t* dst, int64_t dst_h,
           int64_t dst_w, int64_t h, int64_t w) {
    const int k = static_cast<int>(weights.size());
    const int64_t r = k / 2;
    padded.resize(w + 2 * r);
    plane.resize(h * w);
    acc.resize(w);
    taps.resize(k);
    // Horizontal: the row with r reflected samples on each side, then k taps along x.
    for (int64_t y = 0; y < h; ++y) {
      const in_t* row = src + y * src_h;
      for (int64_t x = 0; x < w; ++x) padded[r + x] = static_cast<acc_t>(row[x * src_w]);
      for (int64_t i = 1; i <= r; ++i) {
        padded[r - i] = padded[r + i];                  // x = -i reflects to i
        padded[r + w - 1 + i] = padded[r + w - 1 - i];  // x = w - 1 + i reflects to w - 1 - i
      }
      for (int j = 0; j < k; ++j) taps[j] = padded.data() + j;
      weighted_rows(plane.data() + y * w, taps.data(), weights.data(), k, w);
    }
    // Vertical: output row y is sum_j weights[j] * plane row reflect(y + j - r).
    for (int64_t y = 0; y < h; ++y) {
      for (int j = 0; j < k; ++j) taps[j] = plane.data() + reflect(y + j - r, h) * w;
      weighted_rows(acc.data(), taps.data(), weights.data(), k, w);
      out_t* out_row = dst + y * dst_h;
      for (int64_t x = 0; x < w; ++x) out_row[x * dst_w] = static_cast<out_t>(acc[x]);
    }
  }
};

}  // namespace blur
}  // namespace simclr_ext
