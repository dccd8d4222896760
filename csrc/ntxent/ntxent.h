// NT-Xent loss op (docs/architecture.md section 2.1): entry points bound in csrc/bindings.cpp
// and the per-backend kernels they dispatch to.
//
// Layout shared by every function here:
//   u_rows: [R, D] this rank's L2-normalized rows, [view 1; view 2], R even (R = 2n)
//   u_cols: [C, D] all normalized columns (the gathered rows of every rank; u_rows itself in one
//           process). Row i is column row_offset + i; its positive is column
//           row_offset + (i + R/2) % R (ntxent_math.h: positive_col).
//   row_lse: [R] fp32 (fp64 for fp64 inputs), col_lse: [C], the log-sum-exp of each row over its
//           columns except itself.
//   row_weight: [R], col_weight: [C], upstream gradient of each row's loss (1/2N for "mean").
//   symmetric: set by the caller that knows it holds the single-process case, where the rows
//           are their own columns: u_cols is u_rows, row_offset = 0, and in the backward col_lse
//           is row_lse and col_weight is row_weight (checked). The CPU kernels then compute each
//           similarity tile of the upper triangle once, for both of its sides; with false they
//           sweep every column tile for every row tile. The CUDA kernels have one schedule.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace simclr_ext {
namespace ntxent {

// The dtype the kernels accumulate in, and return row_loss, row_lse and norms in: fp64 for fp64
// inputs, else fp32 (bf16 and fp16 are only a storage format here).
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// (u, norm): u = z / max(||z||, eps) in z's dtype (computed in fp32/fp64), norm [R] = ||z|| in
// the accumulation dtype (fp32, or fp64 for fp64 z).
std::tuple<at::Tensor, at::Tensor> normalize(const at::Tensor& z);

// Whether fp32 inputs take the CUDA TF32 tensor-core path: exactly when cuBLAS would use TF32
// for an fp32 matmul on this thread. A caller decides once, for a forward, and passes the same
// decision to its backward (which may run on another thread, under other settings).
bool tf32_enabled();

// (row_loss, row_lse), both [R] in the accumulation dtype: row_loss = lse - s_{i,pos(i)}.
// tf32: the decision above (default: tf32_enabled() now); only fp32 CUDA inputs use it.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                           int64_t row_offset, double temperature, bool symmetric,
                                           std::optional<bool> tf32 = std::nullopt);

// grad_z [R, D] in u's dtype: the exact gradient of sum_k w_k loss_k (over all C rows) with
// respect to this rank's z rows, the normalization backward included:
//   grad_u_i = 1/tau [ sum_{m != i} (w_i P_im + w_m P_mi) u_m - (w_i + w_pos(i)) u_pos(i) ]
// tf32: the forward's decision (default: tf32_enabled() now).
at::Tensor backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                      const at::Tensor& norm_rows, const at::Tensor& row_lse,
                      const at::Tensor& col_lse, const at::Tensor& row_weight,
                      const at::Tensor& col_weight, int64_t row_offset, double temperature,
                      bool symmetric, std::optional<bool> tf32 = std::nullopt);

// Backends: inputs already validated (same device, contiguous, shapes checked).
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                               int64_t row_offset, double temperature,
                                               bool symmetric);
at::Tensor backward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                        const at::Tensor& norm_rows, const at::Tensor& row_lse,
                        const at::Tensor& col_lse, const at::Tensor& row_weight,
                        const at::Tensor& col_weight, int64_t row_offset, double temperature,
                        bool symmetric);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& u_rows,
                                                const at::Tensor& u_cols, int64_t row_offset,
                                                double temperature, bool tf32);
at::Tensor backward_cuda(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_lse,
                         const at::Tensor& col_lse, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset, double temperature,
                         bool tf32);
#endif

}  // namespace ntxent
}  // namespace simclr_ext
