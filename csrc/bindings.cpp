// The extension module simclr_ext._C: every op's C++ entry and build_info(). The Python side
// (simclr_ext/_ops.py) wraps these as torch.library custom ops with fake kernels and autograd.
#include <torch/extension.h>
#include <torch/headeronly/version.h>

#include <string>

#include "augment/augment.h"
#include "blur/blur.h"
#include "color/color.h"
#include "common/build_info.h"
#include "crop/crop.h"
#include "lars/lars.h"
#include "ntxent/ntxent.h"
#include "ntxent/pair_loss.h"

namespace simclr_ext {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef SIMCLR_EXT_VERSION
  info["version"] = SIMCLR_STR(SIMCLR_EXT_VERSION);
#else
  info["version"] = "unknown";
#endif
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#ifdef WITH_CUDA
  const int v = cuda_runtime_version_built();
  info["with_cuda"] = true;
  info["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  info["cuda_archs"] = cuda_arch_list();
#else
  info["with_cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
  return info;
}

namespace {

// kind: 1 NT-Logistic, 2 margin triplet (pair_loss.h: PairLossKind); the entries check it.
ntxent::PairLossParams pair_params(int64_t kind, double temperature, double margin,
                                   bool semi_hard) {
  return {static_cast<ntxent::PairLossKind>(kind), temperature, margin, semi_hard};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, int64_t kind,
                                                double temperature, double margin, bool semi_hard,
                                                bool symmetric, std::optional<bool> tf32) {
  return ntxent::pair_forward(u_rows, u_cols, row_offset,
                              pair_params(kind, temperature, margin, semi_hard), symmetric, tf32);
}

at::Tensor pair_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_state,
                         const at::Tensor& col_state, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset, int64_t kind,
                         double temperature, double margin, bool semi_hard, bool symmetric,
                         std::optional<bool> tf32) {
  return ntxent::pair_backward(u_rows, u_cols, norm_rows, row_state, col_state, row_weight,
                               col_weight, row_offset,
                               pair_params(kind, temperature, margin, semi_hard), symmetric,
                               tf32);
}

}  // namespace simclr_ext

PYBIND11_MODULE(_C, m) {
  m.doc() = "simclr_ext fused kernels (NT-Xent, LARS, color distortion)";
  m.def("build_info", &simclr_ext::build_info,
        "How this extension was built: version, with_cuda, cuda_archs, torch/CUDA versions");

  // NT-Xent (csrc/ntxent): see ntxent.h for the layout of rows, columns and weights.
  m.def("ntxent_normalize", &simclr_ext::ntxent::normalize, pybind11::arg("z"),
        "u = z / max(||z||, 1e-12) and the row norms");
  m.def("ntxent_forward", &simclr_ext::ntxent::forward, pybind11::arg("u_rows"),
        pybind11::arg("u_cols"), pybind11::arg("row_offset"), pybind11::arg("temperature"),
        pybind11::arg("symmetric"), pybind11::arg("tf32") = pybind11::none(),
        "(row_loss, row_lse) [R] of this rank's rows against all columns; tf32: None = "
        "ntxent_tf32_enabled() now");
  m.def("ntxent_backward", &simclr_ext::ntxent::backward, pybind11::arg("u_rows"),
        pybind11::arg("u_cols"), pybind11::arg("norm_rows"), pybind11::arg("row_lse"),
        pybind11::arg("col_lse"), pybind11::arg("row_weight"), pybind11::arg("col_weight"),
        pybind11::arg("row_offset"), pybind11::arg("temperature"), pybind11::arg("symmetric"),
        pybind11::arg("tf32") = pybind11::none(), pybind11::arg("row_loss") = pybind11::none(),
        "grad_z [R, D] of sum_k w_k loss_k (normalization backward fused); tf32: the "
        "forward's decision; row_loss: the forward's (the positive's term without "
        "cancellation)");
  m.def("ntxent_bank_forward", &simclr_ext::ntxent::bank_forward, pybind11::arg("u_rows"),
        pybind11::arg("bank"), pybind11::arg("temperature"),
        pybind11::arg("tf32") = pybind11::none(),
        "lse_bank [R]: log sum_b exp(u_k . bank_b / tau), no self or positive among the bank");
  m.def("ntxent_bank_backward", &simclr_ext::ntxent::bank_backward, pybind11::arg("u_rows"),
        pybind11::arg("bank"), pybind11::arg("row_lse"), pybind11::arg("row_weight"),
        pybind11::arg("temperature"), pybind11::arg("tf32") = pybind11::none(),
        "G [R, D] (accumulation dtype): w_k sum_b exp(s_kb - row_lse_k) bank_b");
  // NT-Logistic and margin triplet (csrc/ntxent/pair_loss.h): same layout, per-row state
  // [R, 3] = (c_pos, |M_k|, active hinges) instead of the row LSE.
  m.def("pair_forward", &simclr_ext::pair_forward, pybind11::arg("u_rows"),
        pybind11::arg("u_cols"), pybind11::arg("row_offset"), pybind11::arg("kind"),
        pybind11::arg("temperature"), pybind11::arg("margin"), pybind11::arg("semi_hard"),
        pybind11::arg("symmetric"), pybind11::arg("tf32") = pybind11::none(),
        "(row_loss [R], row_state [R, 3]); kind 1 NT-Logistic, 2 margin triplet");
  m.def("pair_backward", &simclr_ext::pair_backward, pybind11::arg("u_rows"),
        pybind11::arg("u_cols"), pybind11::arg("norm_rows"), pybind11::arg("row_state"),
        pybind11::arg("col_state"), pybind11::arg("row_weight"), pybind11::arg("col_weight"),
        pybind11::arg("row_offset"), pybind11::arg("kind"), pybind11::arg("temperature"),
        pybind11::arg("margin"), pybind11::arg("semi_hard"), pybind11::arg("symmetric"),
        pybind11::arg("tf32") = pybind11::none(),
        "grad_z [R, D] of sum_k w_k loss_k (semi-hard sets held fixed, normalization backward "
        "fused)");
  m.def("ntxent_tf32_enabled", &simclr_ext::ntxent::tf32_enabled,
        "Whether fp32 NT-Xent takes the CUDA TF32 path now (cuBLAS's rule, on this thread)");

  // Color distortion (csrc/color): see color.h for the parameter tensors' layout.
  m.def("color_distort", &simclr_ext::color::distort, pybind11::arg("images"),
        pybind11::arg("factors"), pybind11::arg("order"), pybind11::arg("apply_jitter"),
        pybind11::arg("apply_gray"), pybind11::arg("out"), pybind11::arg("mean"),
        pybind11::arg("std"),
        "Per-image SimCLR color distortion of images into out (returned); mean/std: [] or 3");

  // Resized crop + flip (csrc/crop) and per-image Gaussian blur (csrc/blur): see crop.h and
  // blur.h for the layouts.
  m.def("resized_crop", &simclr_ext::crop::resized_crop, pybind11::arg("images"),
        pybind11::arg("boxes"), pybind11::arg("flip"), pybind11::arg("size"),
        pybind11::arg("out_scale"), pybind11::arg("channels_last"),
        "Antialiased resized crops [N, C, size, size] float32 of a [B, C, H, W] batch");
  m.def("resized_crop_list", &simclr_ext::crop::resized_crop_list, pybind11::arg("images"),
        pybind11::arg("boxes"), pybind11::arg("flip"), pybind11::arg("size"),
        pybind11::arg("out_scale"), pybind11::arg("channels_last"),
        "Antialiased resized crops [N, C, size, size] float32 of a list of [C, H_i, W_i] images");
  m.def("image_sizes", &simclr_ext::crop::image_sizes, pybind11::arg("images"),
        pybind11::arg("pin_memory"), "[B, 2] int64 (height, width) of a list of [C, H, W] images");
  m.def("gaussian_blur", &simclr_ext::blur::gaussian_blur, pybind11::arg("images"),
        pybind11::arg("sigma"), pybind11::arg("kernel_size"), pybind11::arg("out"),
        "Per-image separable Gaussian blur into out (may be images: in place); sigma 0 = none");

  // SimCLR's whole view pipeline fused per view on the CPU (csrc/augment): see augment.h.
  m.def("simclr_views", &simclr_ext::augment::views, pybind11::arg("images"),
        pybind11::arg("boxes"), pybind11::arg("flip"), pybind11::arg("factors"),
        pybind11::arg("order"), pybind11::arg("apply_jitter"), pybind11::arg("apply_gray"),
        pybind11::arg("sigma"), pybind11::arg("kernel_size"), pybind11::arg("out_scale"),
        pybind11::arg("mean"), pybind11::arg("std"), pybind11::arg("out"),
        "Crop + flip, color + gray, blur, normalization of every view of a CPU batch into out");
  m.def("simclr_views_list", &simclr_ext::augment::views_list, pybind11::arg("images"),
        pybind11::arg("boxes"), pybind11::arg("flip"), pybind11::arg("factors"),
        pybind11::arg("order"), pybind11::arg("apply_jitter"), pybind11::arg("apply_gray"),
        pybind11::arg("sigma"), pybind11::arg("kernel_size"), pybind11::arg("out_scale"),
        pybind11::arg("mean"), pybind11::arg("std"), pybind11::arg("out"),
        "simclr_views for a list of [3, H_i, W_i] CPU images");

  // LARS (csrc/lars): one fused step for a bucket of tensors on one device with one dtype; the
  // per-tensor hyperparameters are host scalars (see lars.h).
  m.def("lars_step", &simclr_ext::lars::lars_step, pybind11::arg("params"),
        pybind11::arg("grads"), pybind11::arg("momentum_buffers"), pybind11::arg("lrs"),
        pybind11::arg("weight_decays"), pybind11::arg("momentums"), pybind11::arg("etas"),
        pybind11::arg("lars_adaptation"), pybind11::arg("nesterov"),
        "Fused multi-tensor LARS step, in place on params and momentum_buffers");
}
