// NT-Xent per-row math, written once for the CPU and the CUDA kernels (docs/architecture.md,
// 2.1).
// `acc_t` is the accumulation type: float for fp32/bf16/fp16 inputs, double for the fp64 path.
#pragma once
#include <c10/macros/Macros.h>
#include <math.h>

#include "common/numeric.h"  // kNormEps

namespace simclr_ext {
namespace ntxent {

C10_HOST_DEVICE inline float exp_acc(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp_acc(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float log_acc(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double log_acc(double x) { return ::log(x); }
C10_HOST_DEVICE inline float log1p_acc(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double log1p_acc(double x) { return ::log1p(x); }
C10_HOST_DEVICE inline float expm1_acc(float x) { return ::expm1f(x); }
C10_HOST_DEVICE inline double expm1_acc(double x) { return ::expm1(x); }

// Online log-sum-exp state of one row: running max and the sum of exp(x - max).
// Start: max = -inf, sum = 0.
template <typename acc_t>
C10_HOST_DEVICE inline void lse_init(acc_t& run_max, acc_t& run_sum) {
  run_max = -INFINITY;
  run_sum = acc_t(0);
}

// Push one logit. When a new maximum arrives the old sum is rescaled by exp(old - new) so every
// term stays <= 1: no overflow even at temperature 0.01 (logits up to 100). A NaN logit fails
// the comparison and turns the sum into NaN, so NaN in gives NaN out.
template <typename acc_t>
C10_HOST_DEVICE inline void lse_push(acc_t& run_max, acc_t& run_sum, acc_t x) {
  if (x > run_max) {
    run_sum = run_sum * exp_acc(run_max - x) + acc_t(1);
    run_max = x;
  } else {
    run_sum += exp_acc(x - run_max);
  }
}

// Merge another partial state (a tile's max and sum) into the running one.
template <typename acc_t>
C10_HOST_DEVICE inline void lse_merge(acc_t& run_max, acc_t& run_sum, acc_t tile_max,
                                      acc_t tile_sum) {
  if (tile_sum == acc_t(0) && tile_max == -INFINITY) return;  // empty tile (all self-masked)
  if (tile_max > run_max) {
    run_sum = run_sum * exp_acc(run_max - tile_max) + tile_sum;
    run_max = tile_max;
  } else {
    run_sum += tile_sum * exp_acc(tile_max - run_max);
  }
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t lse_value(acc_t run_max, acc_t run_sum) {
  return run_max + log_acc(run_sum);
}

// Row loss relative to the positive logit (docs/architecture.md, 2.1). lse_neg is the
// log-sum-exp over the negatives only (the positive column masked like self; -inf when there
// are none, N = 1). loss = log(exp(s_pos) + exp(lse_neg)) - s_pos = log(1 + exp(lse_neg - s_pos)):
// why: lse - s_pos would subtract two ~1/tau-sized numbers whose difference is tiny for nearly
// identical views (1e-6 absolute error in fp32 at tau = 0.07); this form has no cancellation
// and gives exactly 0 without negatives. The full lse = s_pos + loss, for the backward.
template <typename acc_t>
C10_HOST_DEVICE inline void loss_from_negatives(acc_t lse_neg, acc_t s_pos, acc_t& loss,
                                                acc_t& lse) {
  const acc_t x = lse_neg - s_pos;
  loss = x > acc_t(0) ? x + log1p_acc(exp_acc(-x)) : log1p_acc(exp_acc(x));
  lse = s_pos + loss;
}

// 1 - P_pos = 1 - exp(-loss), the positive's softmax deficit, without cancellation: the
// backward's positive coefficient is -(w_i q_i + w_pos q_pos) (docs/architecture.md, 2.1).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t positive_deficit(acc_t loss) {
  return -expm1_acc(-loss);
}

// The backward's coefficient of u_m in row k's gradient, w_k P_km + w_m P_mk, where
// P_km = exp(s_km - lse_k) and, because s is symmetric, P_mk = exp(s_km - lse_m): one similarity
// and the two saved row LSEs give both. w_k, w_m are the upstream gradients of loss_k and loss_m
// (1/2N each for "mean").
template <typename acc_t>
C10_HOST_DEVICE inline acc_t pair_coeff(acc_t s_km, acc_t lse_k, acc_t lse_m, acc_t w_k,
                                        acc_t w_m) {
  return w_k * exp_acc(s_km - lse_k) + w_m * exp_acc(s_km - lse_m);
}

// Backward of u = z / max(||z||, eps) for one element, given dot = u . grad_u over the row:
// grad_z = (grad_u - u (u . grad_u)) / ||z|| above eps; below it u = z / eps is linear in z.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t normalize_backward(acc_t grad_u, acc_t u, acc_t u_dot_grad,
                                                acc_t norm) {
  return norm > acc_t(kNormEps) ? (grad_u - u * u_dot_grad) / norm : grad_u / acc_t(kNormEps);
}

// Column of row i's positive: rows are [view 1; view 2] of this rank (R rows, R even) and sit at
// columns [row_offset, row_offset + R) of the gathered columns.
C10_HOST_DEVICE inline int64_t positive_col(int64_t i, int64_t rows, int64_t row_offset) {
  return row_offset + (i + rows / 2) % rows;
}

// The same formula in 32-bit integers for the CUDA kernels, where a 64-bit % is a called
// subroutine (it forced a stack frame in the fp64 backward kernel). Callers ensure
// row_offset + rows fits in int.
C10_HOST_DEVICE inline int positive_col_i32(int i, int rows, int row_offset) {
  return row_offset + (i + rows / 2) % rows;
}

}  // namespace ntxent
}  // namespace simclr_ext
