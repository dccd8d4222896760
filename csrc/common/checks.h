// Entry checks shared by every op: each names the argument and what was expected, so a user
// mistake surfaces as a readable RuntimeError instead of a crash inside a kernel.
#pragma once
#include <ATen/ATen.h>

#define SIMCLR_CHECK_DEFINED(x) TORCH_CHECK((x).defined(), #x " must be a tensor, got None")
// The four floating dtypes the kernels are compiled for; float8 and other floating types are
// rejected here by name rather than failing later inside a dtype dispatch.
#define SIMCLR_CHECK_FLOATING(x)                                                            \
  TORCH_CHECK((x).scalar_type() == at::kDouble || (x).scalar_type() == at::kFloat ||        \
                  (x).scalar_type() == at::kBFloat16 || (x).scalar_type() == at::kHalf,     \
              #x " must be a floating tensor (float64, float32, bfloat16 or float16), got ", \
              (x).scalar_type())
#define SIMCLR_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), #x " must have ", d, " dimensions, got shape ", (x).sizes())
#define SIMCLR_CHECK_SAME_DEVICE(x, y)                                                      \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
              (x).device(), " and ", (y).device())
#define SIMCLR_CHECK_SAME_DTYPE(x, y)                                                    \
  TORCH_CHECK((x).scalar_type() == (y).scalar_type(), #x " and " #y                      \
              " must have the same dtype, got ", (x).scalar_type(), " and ", (y).scalar_type())

namespace simclr_ext {

// A CUDA tensor reaching a build without the CUDA kernels gets this message, never a silent
// fallback to a slow path (DESIGN 3.4).
inline void check_backend_available(const at::Tensor& t, const char* op) {
#ifndef WITH_CUDA
  TORCH_CHECK(!t.is_cuda(), op, ": simclr_ext was built without CUDA support, but got a ",
              t.device(), " tensor. Rebuild with a CUDA toolkit (see README: FORCE_CUDA=1) "
              "or move the inputs to the CPU.");
#endif
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": expected CPU or CUDA tensors, got device ",
              t.device());
}

}  // namespace simclr_ext
