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

#include "common/numeric.h"

#include <optional>
#include <tuple>

namespace simclr_ext {
namespace ntxent {

// row_loss, row_lse and norms come back in accumulation_dtype (common/numeric.h) of the input.

// (u, norm): u = z / max(||z||, eps) in z's dtype (computed in fp32/fp64), norm [R] = ||z|| in
// the accumulation dtype (fp32, or fp64 for fp64 z).
std::tuple<at::Tensor, at::Tensor> normalize(const at::Tensor& z);

// Whether fp32 inputs take the CUDA TF32 tensor-core path: exactly when cuBLAS would use TF32
// for an fp32 matmul on this thread. A caller decides once, for a forward, and passes the same
// decision to its backward (which may run on another thread, under other settings).
bool tf32_enabled();

// (row_loss, row_lse), both [R] in the accumulation dtype: row_loss = lse - s_{i,pos(i)},
// computed relative to the positive (ntxent_math.h: loss_from_negatives).
// tf32: the decision above (default: tf32_enabled() now); only fp32 CUDA inputs use it.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                           int64_t row_offset, double temperature, bool symmetric,
                                           std::optional<bool> tf32 = std::nullopt);

// grad_z [R, D] in u's dtype: the exact gradient of sum_k w_k loss_k (over all C rows) with
// respect to this rank's z rows, the normalization backward included:
//   grad_u_i = 1/tau [ sum_{m != i} (w_i P_im + w_m P_mi) u_m - (w_i + w_pos(i)) u_pos(i) ]
// computed with the positive's term apart, -(w_i q_i + w_pos q_pos) u_pos, q_k = 1 - P_k,pos
// from row_loss [R] (the forward's, ntxent_math.h: positive_deficit); without row_loss it is
// recomputed as lse - s_pos (less precise for nearly identical views).
// tf32: the forward's decision (default: tf32_enabled() now).
at::Tensor backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                      const at::Tensor& norm_rows, const at::Tensor& row_lse,
                      const at::Tensor& col_lse, const at::Tensor& row_weight,
                      const at::Tensor& col_weight, int64_t row_offset, double temperature,
                      bool symmetric, std::optional<bool> tf32 = std::nullopt,
                      const std::optional<at::Tensor>& row_loss = std::nullopt);

// Memory bank (docs/architecture.md, 2.1): rows [R, D] (any R >= 1) against bank columns [K, D],
// none of which is a row's self or positive. Both run the general schedule with the rows placed
// past the last column (row_offset = K), so no column index matches a self or positive column.
//   bank_forward:  lse_bank [R], lse_bank_k = log sum_b exp(u_k . bank_b / tau)
//   bank_backward: G [R, D] in the accumulation dtype, G_k = w_k sum_b exp(s_kb - row_lse_k) bank_b
//                  (the 1/tau of ds/du and the positive's share are the caller's)
at::Tensor bank_forward(const at::Tensor& u_rows, const at::Tensor& bank, double temperature,
                        std::optional<bool> tf32 = std::nullopt);
at::Tensor bank_backward(const at::Tensor& u_rows, const at::Tensor& bank,
                         const at::Tensor& row_lse, const at::Tensor& row_weight,
                         double temperature, std::optional<bool> tf32 = std::nullopt);

// Backends: inputs already validated (same device, contiguous, shapes checked).
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                               int64_t row_offset, double temperature,
                                               bool symmetric);
at::Tensor backward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                        const at::Tensor& norm_rows, const at::Tensor& row_lse,
                        const at::Tensor& col_lse, const at::Tensor& row_weight,
                        const at::Tensor& col_weight, const at::Tensor& row_loss,
                        int64_t row_offset, double temperature, bool symmetric);
at::Tensor bank_forward_cpu(const at::Tensor& u_rows, const at::Tensor& bank, double temperature);
at::Tensor bank_backward_cpu(const at::Tensor& u_rows, const at::Tensor& bank,
                             const at::Tensor& row_lse, const at::Tensor& row_weight,
                             double temperature);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& u_rows,
                                                const at::Tensor& u_cols, int64_t row_offset,
                                                double temperature, bool tf32);
at::Tensor backward_cuda(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_lse,
                         const at::Tensor& col_lse, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, const at::Tensor& row_loss,
                         int64_t row_offset, double temperature, bool tf32);
#endif

}  // namespace ntxent
}  // namespace simclr_ext
