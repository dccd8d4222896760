// Numeric conventions shared by every op (host and device code); their Python twins live in
// simclr_ext/_numeric.py (NORM_EPS, accumulation_dtype).
#pragma once
#include <c10/core/ScalarType.h>

#include <type_traits>

namespace simclr_ext {

// Floor of a row norm in u = z / max(||z||, kNormEps), as torch.nn.functional.normalize.
constexpr double kNormEps = 1e-12;

// Accumulation (and optimizer state) type of the kernels: fp64 for fp64 inputs, fp32 for fp32,
// bf16 and fp16 (the half types are only a storage format here).
template <typename scalar_t>
using accumulation_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace simclr_ext
