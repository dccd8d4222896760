// LARS op entry: check the bucket once, then dispatch to the CPU or CUDA kernel
// (docs/architecture.md, 3.2; the checks follow section 5).
#include "lars/lars.h"

#include "common/checks.h"
#include "common/numeric.h"

namespace simclr_ext {
namespace lars {

void lars_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
               const std::vector<at::Tensor>& momentum_buffers, const std::vector<double>& lrs,
               const std::vector<double>& weight_decays, const std::vector<double>& momentums,
               const std::vector<double>& etas, const std::vector<bool>& lars_adaptation,
               const std::vector<bool>& nesterov) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && momentum_buffers.size() == n,
              "lars_step: params, grads and momentum_buffers must have the same length, got ", n,
              ", ", grads.size(), " and ", momentum_buffers.size());
  TORCH_CHECK(lrs.size() == n && weight_decays.size() == n && momentums.size() == n &&
                  etas.size() == n && lars_adaptation.size() == n && nesterov.size() == n,
              "lars_step: lrs, weight_decays, momentums, etas, lars_adaptation and nesterov "
              "need one entry per parameter (", n, ")");
  if (n == 0) return;

  const at::Tensor& first = params[0];
  SIMCLR_CHECK_DEFINED(first);
  check_backend_available(first, "lars_step");
  TORCH_CHECK(first.scalar_type() == at::kDouble || first.scalar_type() == at::kFloat ||
                  first.scalar_type() == at::kBFloat16 || first.scalar_type() == at::kHalf,
              "lars_step: params must be float64, float32, bfloat16 or float16, got ",
              first.scalar_type());
  const at::ScalarType buf_dtype = accumulation_dtype(first.scalar_type());

  std::vector<at::Tensor> p_live, g_live, v_live;
  std::vector<TensorHyper> hyper;
  p_live.reserve(n);
  g_live.reserve(n);
  v_live.reserve(n);
  hyper.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& v = momentum_buffers[i];
    TORCH_CHECK(p.defined() && g.defined() && v.defined(), "lars_step: params[", i,
                "], grads[", i, "] and momentum_buffers[", i, "] must be tensors");
    TORCH_CHECK(p.device() == first.device() && g.device() == first.device() &&
                    v.device() == first.device(),
                "lars_step: all tensors of one call must be on one device (", first.device(),
                "), params[", i, "] is on ", p.device(), ", grads[", i, "] on ", g.device(),
                ", momentum_buffers[", i, "] on ", v.device());
    TORCH_CHECK(p.scalar_type() == first.scalar_type(), "lars_step: all params of one call "
                "must have one dtype (", first.scalar_type(), "), params[", i, "] is ",
                p.scalar_type());
    TORCH_CHECK(g.scalar_type() == p.scalar_type(), "lars_step: grads[", i,
                "] must have its parameter's dtype ", p.scalar_type(), ", got ", g.scalar_type());
    TORCH_CHECK(v.scalar_type() == buf_dtype, "lars_step: momentum_buffers[", i, "] must be ",
                buf_dtype, " for ", p.scalar_type(), " params, got ", v.scalar_type());
    TORCH_CHECK(!g.is_sparse(), "lars_step: grads[", i, "] is sparse; LARS needs dense "
                "gradients (its trust ratio uses the full gradient norm)");
    TORCH_CHECK(g.sizes() == p.sizes() && v.sizes() == p.sizes(), "lars_step: params[", i,
                "] has shape ", p.sizes(), " but its grad has ", g.sizes(),
                " and its momentum buffer ", v.sizes());
    if (p.numel() == 0) continue;
    // The kernels walk w, g and v as flat arrays with one index: they must be dense and laid
    // out alike (contiguous or channels_last alike).
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "lars_step: params[", i,
                "] must be dense (non-overlapping, no gaps); got strides ", p.strides());
    TORCH_CHECK(g.strides() == p.strides() && v.strides() == p.strides(), "lars_step: grads[",
                i, "] and momentum_buffers[", i, "] must have the strides of params[", i, "] ",
                p.strides(), ", got ", g.strides(), " and ", v.strides());
    TORCH_CHECK(lrs[i] >= 0.0, "lars_step: lrs[", i, "] must be >= 0, got ", lrs[i]);
    TORCH_CHECK(momentums[i] >= 0.0 && momentums[i] < 1.0, "lars_step: momentums[", i,
                "] must be in [0, 1), got ", momentums[i]);
    TORCH_CHECK(etas[i] > 0.0, "lars_step: etas[", i, "] must be > 0, got ", etas[i]);
    TORCH_CHECK(weight_decays[i] >= 0.0, "lars_step: weight_decays[", i, "] must be >= 0, got ",
                weight_decays[i]);
    p_live.push_back(p);
    g_live.push_back(g);
    v_live.push_back(v);
    hyper.push_back(TensorHyper{lrs[i], weight_decays[i], momentums[i], etas[i],
                                static_cast<bool>(lars_adaptation[i]),
                                static_cast<bool>(nesterov[i])});
  }
  if (p_live.empty()) return;

  if (first.is_cuda()) {
#ifdef WITH_CUDA
    lars_step_cuda(p_live, g_live, v_live, hyper);
#endif
  } else {
    lars_step_cpu(p_live, g_live, v_live, hyper);
  }
  // In-place updates bump the version counters, as torch's in-place ops do, so autograd still
  // detects a parameter changed after it was saved for backward.
  for (size_t i = 0; i < p_live.size(); ++i) {
    p_live[i].unsafeGetTensorImpl()->bump_version();
    v_live[i].unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace lars
}  // namespace simclr_ext
