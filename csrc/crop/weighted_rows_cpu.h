// CPU helper shared by the crop and blur kernels: out[x] = sum_j w[j] * rows[j][x], the inner
// loop of every separable pass that runs along whole rows (the crop's vertical pass, both blur
// passes). x advances in blocks of kLanes whose partial sums stay in registers across all taps
// (one load and one multiply-add per tap and element, no store per tap), compiled for AVX2 and
// the baseline ISA and picked at load time. The taps are added in order j = 0, 1, ..., the
// order of ATen's per-element loops.
#pragma once
#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SIMCLR_ROWS_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define SIMCLR_ROWS_CLONES
#endif

namespace simclr_ext {
namespace {

template <typename T>
inline void weighted_rows_impl(T* __restrict out, const T* const* rows, const T* w, int k,
                               int64_t n) {
  constexpr int kLanes = 64 / sizeof(T);  // two AVX2 registers of partial sums
  int64_t x = 0;
  for (; x + kLanes <= n; x += kLanes) {
    T acc[kLanes];
    const T* r0 = rows[0] + x;
    for (int i = 0; i < kLanes; ++i) acc[i] = r0[i] * w[0];
    for (int j = 1; j < k; ++j) {
      const T* r = rows[j] + x;
      const T wj = w[j];
      for (int i = 0; i < kLanes; ++i) acc[i] += r[i] * wj;
    }
    for (int i = 0; i < kLanes; ++i) out[x + i] = acc[i];
  }
  for (; x < n; ++x) {
    T v = rows[0][x] * w[0];
    for (int j = 1; j < k; ++j) v += rows[j][x] * w[j];
    out[x] = v;
  }
}

[[maybe_unused]] SIMCLR_ROWS_CLONES void weighted_rows(float* out, const float* const* rows,
                                                       const float* w, int k, int64_t n) {
  weighted_rows_impl(out, rows, w, k, n);
}

[[maybe_unused]] SIMCLR_ROWS_CLONES void weighted_rows(double* out, const double* const* rows,
                                                       const double* w, int k, int64_t n) {
  weighted_rows_impl(out, rows, w, k, n);
}

}  // namespace
}  // namespace simclr_ext
