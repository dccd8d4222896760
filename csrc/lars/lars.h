// Fused multi-tensor LARS step (docs/architecture.md, section 3): the entry bound in
// csrc/bindings.cpp and the per-backend kernels it dispatches to.
//
// One call updates one bucket: every tensor on one device with one dtype.
//   params[i]:           w, any shape, fp64/fp32/bf16/fp16, updated in place
//   grads[i]:            g, same shape, strides and dtype as params[i]
//   momentum_buffers[i]: v, same shape and strides, fp32 (fp64 for fp64 params), in place
//   per tensor (host scalars, one per params[i]): lrs, weight_decays, momentums, etas,
//   lars_adaptation (bool), nesterov (bool).
// Kernel launches per call: a fixed number (norms, then the update), whatever the tensor count.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace simclr_ext {
namespace lars {

// Per-tensor hyperparameters, as the backends receive them.
struct TensorHyper {
  double lr;
  double weight_decay;
  double momentum;
  double eta;
  bool adaptation;
  bool nesterov;
};

void lars_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
               const std::vector<at::Tensor>& momentum_buffers, const std::vector<double>& lrs,
               const std::vector<double>& weight_decays, const std::vector<double>& momentums,
               const std::vector<double>& etas, const std::vector<bool>& lars_adaptation,
               const std::vector<bool>& nesterov);

// Backends: inputs validated (one device, one dtype, matching shapes/strides, dense), empty
// tensors already dropped.
void lars_step_cpu(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                   const std::vector<at::Tensor>& momentum_buffers,
                   const std::vector<TensorHyper>& hyper);
#ifdef WITH_CUDA
void lars_step_cuda(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                    const std::vector<at::Tensor>& momentum_buffers,
                    const std::vector<TensorHyper>& hyper);
#endif

}  // namespace lars
}  // namespace simclr_ext
