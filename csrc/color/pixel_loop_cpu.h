// The CPU color passes' pixel loop, shared by the color kernel and the fused augmentation
// (docs/architecture.md section 4.2): planar r, g, b float rows, 8 lanes at a time where the
// GCC vector extension is available (color_math.h: float8), then a scalar tail.
#pragma once
#include <cstdint>
#include <cstring>

#include "color/color_math.h"

namespace simclr_ext {
namespace color {

// op(r, g, b) on every pixel, in place; op takes float8& or float& (a generic lambda).
template <typename Op>
inline void for_each_pixel(float* __restrict r, float* __restrict g, float* __restrict b,
                           int64_t n, const Op& op) {
  int64_t i = 0;
#ifdef SIMCLR_COLOR_HAVE_FLOAT8
  for (; i + 8 <= n; i += 8) {
    float8 rr, gg, bb;
    std::memcpy(&rr, r + i, sizeof(rr));
    std::memcpy(&gg, g + i, sizeof(gg));
    std::memcpy(&bb, b + i, sizeof(bb));
    op(rr, gg, bb);
    std::memcpy(r + i, &rr, sizeof(rr));
    std::memcpy(g + i, &gg, sizeof(gg));
    std::memcpy(b + i, &bb, sizeof(bb));
  }
#endif
  for (; i < n; ++i) {
    float rr = r[i], gg = g[i], bb = b[i];
    op(rr, gg, bb);
    r[i] = rr;
    g[i] = gg;
    b[i] = bb;
  }
}

}  // namespace color
}  // namespace simclr_ext
