// NT-Logistic and margin-triplet op entries (docs/architecture.md sections 2.5 and 5): check the
// kernels' invariants once, then dispatch to the CPU or CUDA kernel.
#include "ntxent/pair_loss.h"

#include <cmath>

#include "common/checks.h"
#include "common/numeric.h"
#include "ntxent/entry_checks.h"
#include "ntxent/ntxent.h"

namespace simclr_ext {
namespace ntxent {

namespace {

void check_params(const PairLossParams& p, const char* op) {
  TORCH_CHECK(p.kind == PairLossKind::kLogistic || p.kind == PairLossKind::kMarginTriplet, op,
              ": kind must be 1 (NT-Logistic) or 2 (margin triplet), got ",
              static_cast<int64_t>(p.kind));
  if (p.kind == PairLossKind::kLogistic) {
    TORCH_CHECK(p.temperature > 0 && std::isfinite(p.temperature), op,
                ": temperature must be a finite number > 0, got ", p.temperature);
  } else {
    TORCH_CHECK(p.margin >= 0 && std::isfinite(p.margin), op,
                ": margin must be a finite number >= 0, got ", p.margin);
  }
}

void check_rows_cols(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                     const PairLossParams& p, bool symmetric, const char* op) {
  check_layout(u_rows, u_cols, row_offset, symmetric, op);
  check_params(p, op);
}

void check_state(const at::Tensor& t, int64_t n, const at::Tensor& like, const char* name,
                 const char* op) {
  TORCH_CHECK(t.defined() && t.dim() == 2 && t.size(0) == n && t.size(1) == kPairStateCols, op,
              ": ", name, " must be a [", n, ", ", kPairStateCols,
              "] tensor (c_pos, |M_k|, active count per row), got ",
              t.defined() ? t.sizes() : at::IntArrayRef{});
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
              ", got ", t.device());
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating, got ", t.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, const PairLossParams& params,
                                                bool symmetric, std::optional<bool> tf32) {
  check_rows_cols(u_rows, u_cols, row_offset, params, symmetric, "pair_loss forward");
  const at::Tensor rows = u_rows.contiguous();
  const at::Tensor cols = symmetric ? rows : u_cols.contiguous();
#ifdef WITH_CUDA
  if (rows.is_cuda())
    return pair_forward_cuda(rows, cols, row_offset, params, tf32.value_or(tf32_enabled()));
#else
  (void)tf32;
#endif
  return pair_forward_cpu(rows, cols, row_offset, params, symmetric);
}

std::tuple<at::Tensor, at::Tensor> pair_forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, const PairLossParams& params,
                                                bool symmetric) {
  return pair_forward(u_rows, u_cols, row_offset, params, symmetric, std::nullopt);
}

at::Tensor pair_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_state,
                         const at::Tensor& col_state, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset,
                         const PairLossParams& params, bool symmetric, std::optional<bool> tf32) {
  const char* op = "pair_loss backward";
  check_rows_cols(u_rows, u_cols, row_offset, params, symmetric, op);
  const int64_t R = u_rows.size(0), C = u_cols.size(0);
  check_vector(norm_rows, R, u_rows, "norm_rows", op);
  check_state(row_state, R, u_rows, "row_state", op);
  check_state(col_state, C, u_rows, "col_state", op);
  check_vector(row_weight, R, u_rows, "row_weight", op);
  check_vector(col_weight, C, u_rows, "col_weight", op);
  TORCH_CHECK(!symmetric || (col_state.is_same(row_state) && col_weight.is_same(row_weight)), op,
              ": symmetric=True means the rows are their own columns: pass col_state = "
              "row_state and col_weight = row_weight");
  const auto acc = accumulation_dtype(u_rows.scalar_type());
  auto prep = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  const at::Tensor rows = u_rows.contiguous();
  const at::Tensor cols = symmetric ? rows : u_cols.contiguous();
  const at::Tensor state = prep(row_state), weight = prep(row_weight);
  const at::Tensor c_state = symmetric ? state : prep(col_state);
  const at::Tensor c_weight = symmetric ? weight : prep(col_weight);
#ifdef WITH_CUDA
  if (rows.is_cuda())
    return pair_backward_cuda(rows, cols, prep(norm_rows), state, c_state, weight, c_weight,
                              row_offset, params, tf32.value_or(tf32_enabled()));
#else
  (void)tf32;
#endif
  return pair_backward_cpu(rows, cols, prep(norm_rows), state, c_state, weight, c_weight,
                           row_offset, params, symmetric);
}

at::Tensor pair_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_state,
                         const at::Tensor& col_state, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset,
                         const PairLossParams& params, bool symmetric) {
  return pair_backward(u_rows, u_cols, norm_rows, row_state, col_state, row_weight, col_weight,
                       row_offset, params, symmetric, std::nullopt);
}

}  // namespace ntxent
}  // namespace simclr_ext
