// NT-Xent op entries: validate once, then dispatch to the CPU or CUDA kernel (DESIGN 3.1).
#include "ntxent/ntxent.h"

#include "common/checks.h"
#include "ntxent/ntxent_math.h"

namespace simclr_ext {
namespace ntxent {

namespace {

at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> normalize(const at::Tensor& z) {
  SIMCLR_CHECK_DEFINED(z);
  check_backend_available(z, "nt_xent normalize");
  SIMCLR_CHECK_FLOATING(z);
  SIMCLR_CHECK_DIM(z, 2);
  // Device-agnostic ATen: one reduction and one scale, in the accumulation dtype.
  const at::Tensor z_acc = z.to(acc_dtype(z));
  at::Tensor norm = at::linalg_vector_norm(z_acc, 2, {1});
  at::Tensor u = (z_acc / norm.clamp_min(kNormEps).unsqueeze(1)).to(z.scalar_type());
  return {u.contiguous(), norm};
}

}  // namespace ntxent
}  // namespace simclr_ext
