// NT-Logistic and margin-triplet losses (docs/architecture.md section 2.5): the two other
// contrastive losses of the SimCLR paper's loss study, run by the same tile loop as NT-Xent
// (a loss is a policy of that loop: what a tile adds to a row's statistics in the forward, and
// each logit's gradient coefficient in the backward). No [R, C] matrix is ever allocated.
//
// Layout as in ntxent.h: u_rows [R, D] this rank's normalized rows [view 1; view 2], u_cols
// [C, D] all normalized columns, row i is column row_offset + i, its positive is column
// positive_col(i, R, row_offset); `symmetric` as in ntxent.h.
//
// With c_kl = u_k . u_l, s_kl = c_kl / temperature, Neg_k = every column except k and pos(k):
//   logistic: loss_k = -log sigmoid(s_k,pos) - (1/|M_k|) sum_{l in M_k} log sigmoid(-s_kl),
//             M_k = Neg_k, or with semi_hard {l in Neg_k : c_kl < c_k,pos};
//             an empty M_k leaves only the positive term.
//   margin triplet: loss_k = (1/|M_k|) sum_{l in M_k} max(0, c_kl - c_k,pos + margin),
//             M_k = Neg_k, or with semi_hard {l in Neg_k : c_k,pos - margin < c_kl < c_k,pos};
//             an empty M_k gives 0.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace simclr_ext {
namespace ntxent {

enum class PairLossKind : int64_t { kLogistic = 1, kMarginTriplet = 2 };

struct PairLossParams {
  PairLossKind kind;
  double temperature;  // logistic only (> 0)
  double margin;       // margin triplet only (>= 0)
  bool semi_hard;
};

// Columns of the per-row state [R, kPairStateCols] (accumulation dtype, common/numeric.h):
// what the backward needs of each row, gathered across ranks like NT-Xent's row LSE.
constexpr int64_t kPairStateCols = 3;
constexpr int64_t kStateCosPos = 0;  // c_k,pos(k)
constexpr int64_t kStateCount = 1;   // |M_k|
constexpr int64_t kStateActive = 2;  // margin triplet: #{l in M_k : hinge > 0}; logistic: 0

// (row_loss [R], row_state [R, kPairStateCols]), both in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> pair_forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, const PairLossParams& params,
                                                bool symmetric);

// grad_z [R, D] in u's dtype: the exact gradient of sum_k w_k loss_k over all C rows with respect
// to this rank's z rows (normalization backward included; the semi-hard sets are held fixed,
// their membership being piecewise constant in c). col_state [C, kPairStateCols] and col_weight
// [C] are the gathered row_state and row_weight of every rank (the rows' own in one process).
at::Tensor pair_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_state,
                         const at::Tensor& col_state, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset,
                         const PairLossParams& params, bool symmetric);

// The same entries with the TF32 decision of ntxent.h (tf32_enabled): nullopt decides now; a
// backward takes its forward's decision. Only fp32 CUDA inputs use it. The overloads above
// decide now.
std::tuple<at::Tensor, at::Tensor> pair_forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, const PairLossParams& params,
                                                bool symmetric, std::optional<bool> tf32);
at::Tensor pair_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_state,
                         const at::Tensor& col_state, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset,
                         const PairLossParams& params, bool symmetric, std::optional<bool> tf32);

// Backends: inputs already validated by the entries above. The CPU kernels run the symmetric
// schedule of tile_loop_cpu.h under `symmetric` (the backward within its accumulator budget),
// else the general one.
std::tuple<at::Tensor, at::Tensor> pair_forward_cpu(const at::Tensor& u_rows,
                                                    const at::Tensor& u_cols, int64_t row_offset,
                                                    const PairLossParams& params, bool symmetric);
at::Tensor pair_backward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                             const at::Tensor& norm_rows, const at::Tensor& row_state,
                             const at::Tensor& col_state, const at::Tensor& row_weight,
                             const at::Tensor& col_weight, int64_t row_offset,
                             const PairLossParams& params, bool symmetric);
#ifdef WITH_CUDA
// tf32: the caller's decision (ntxent.h: tf32_enabled), made once for the forward and passed
// unchanged to its backward.
std::tuple<at::Tensor, at::Tensor> pair_forward_cuda(const at::Tensor& u_rows,
                                                     const at::Tensor& u_cols, int64_t row_offset,
                                                     const PairLossParams& params, bool tf32);
at::Tensor pair_backward_cuda(const at::Tensor& u_rows, const at::Tensor& u_cols,
                              const at::Tensor& norm_rows, const at::Tensor& row_state,
                              const at::Tensor& col_state, const at::Tensor& row_weight,
                              const at::Tensor& col_weight, int64_t row_offset,
                              const PairLossParams& params, bool tf32);
#endif

}  // namespace ntxent
}  // namespace simclr_ext
