// The losses of the CUDA tile loop (docs/architecture.md, 2.3): ntxent_cuda.cu writes each
// kernel (tensor-core and SIMT forward, fused and two-stage backward) once, as a template over a
// loss policy, and the policies here say what a loss does with the similarity tile:
//   forward policies: the per-row statistics a tile contributes, how partial statistics merge,
//     and what a finished row writes (NT-Xent: the online log-sum-exp; NT-Logistic and margin
//     triplet: a sum over M_k, |M_k| and the active count, pair_loss.h);
//   coefficient policies: each logit's coefficient in the backward's second product,
//     coef_kl = w_k dloss_k/ds_kl + w_l dloss_l/ds_lk (up to the factor grad_scale), from one
//     similarity value and per-row data of both sides (a Side of row k and of column l).
// No policy ever sees more than one tile: no [R, C] matrix exists on any path.
// A policy travels as one kernel argument; nvcc ignores __restrict__ on its members, so its
// read-only per-row data is loaded with __ldg (the read-only path the kernels' own __restrict__
// pointers get).
#pragma once
#include <c10/macros/Macros.h>
#include <math.h>

#include <cstdint>

#include "ntxent/ntxent_math.h"
#include "ntxent/pair_loss.h"  // the row-state layout

namespace simclr_ext {
namespace ntxent {

// ============================================================================================
// NT-Xent (docs/architecture.md, 2.1)
// ============================================================================================

// Tensor-core forward: per split, each row's partial LSE state (max, sum) over the negatives,
// and the positive logit from the one split that holds it (lse_finish_kernel merges them).
struct XentTcForward {
  float inv_tau;
  float* __restrict__ part_max;  // [splits, R]
  float* __restrict__ part_sum;  // [splits, R]
  float* __restrict__ pos_logit;  // [R]; null for the memory bank (no positive column)
  struct Row {
    float run_max, run_sum;
  };
  __device__ __forceinline__ void init(Row& st, int /*row*/, int /*R*/) const {
    lse_init(st.run_max, st.run_sum);
  }
  // Online log-sum-exp over this tile, in fp32 registers. The tile max is reduced over the 4
  // threads of a row (a quad), so they always share run_max and their partial sums can simply
  // be added at the end. Masked logits are -inf; an all-masked tile has max -inf, and its
  // terms are taken relative to 0 (not to -inf, which would give exp(nan)) so its sum is 0
  // and lse_merge skips it. NaN logits are skipped by fmaxf but make the sum NaN: NaN out.
  __device__ __forceinline__ void tile(Row& st, const float (&acc)[8][4], int h, int col0,
                                       int t4, int c_end, int row, int self_col, int pos_col,
                                       int R) const {
    float s[16];
    float tile_max = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = col0 + nt * 8 + 2 * t4 + e;
        float v = acc[nt][2 * h + e] * inv_tau;
        // The positive is in exactly one split: one writer per row.
        if (c == pos_col && c < c_end && row < R) pos_logit[row] = v;
        // self and positive excluded exactly: the sum runs over the negatives, and
        // lse_finish_kernel adds the positive back (loss_from_negatives)
        if (c >= c_end || c == self_col || c == pos_col) v = -INFINITY;
        s[2 * nt + e] = v;
        tile_max = fmaxf(tile_max, v);
      }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float ref = tile_max == -INFINITY ? 0.f : tile_max;
    float tile_sum = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) tile_sum += exp_acc(s[i] - ref);
    lse_merge(st.run_max, st.run_sum, tile_max, tile_sum);
  }
  __device__ __forceinline__ void write(const Row& st, int t4, int row, int R) const {
    float total = st.run_sum + __shfl_xor_sync(0xffffffffu, st.run_sum, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    if (t4 == 0 && row < R) {
      const int64_t at = static_cast<int64_t>(blockIdx.y) * R + row;
      part_max[at] = st.run_max;
      part_sum[at] = total;
    }
  }
};

// SIMT forward: lse_push per logit, a shuffle merge of a row's 16 partial states, then the
// finished row (loss relative to the positive, whose logit a thread parks in shared memory).
template <typename acc_t>
struct XentSimtForward {
  acc_t inv_tau;
  acc_t* __restrict__ row_loss;
  acc_t* __restrict__ row_lse;
  struct Row {
    acc_t run_max, run_sum;
  };
  __device__ __forceinline__ void init(Row& st, int /*row*/, int /*R*/) const {
    lse_init(st.run_max, st.run_sum);
  }
  __device__ __forceinline__ void logit(Row& st, acc_t dot, int c, int self_col, int pos_col,
                                        acc_t* s_pos) const {
    const acc_t s = dot * inv_tau;
    if (c == pos_col) *s_pos = s;
    // self and positive excluded exactly; the positive is added back in finish
    if (c != self_col && c != pos_col) lse_push(st.run_max, st.run_sum, s);
  }
  __device__ __forceinline__ void merge(Row& st, int off) const {
    const acc_t other_max = __shfl_xor_sync(0xffffffffu, st.run_max, off);
    const acc_t other_sum = __shfl_xor_sync(0xffffffffu, st.run_sum, off);
    lse_merge(st.run_max, st.run_sum, other_max, other_sum);
  }
  __device__ __forceinline__ void finish(const Row& st, int r, int R, int C, int row_offset,
                                         const acc_t* s_pos) const {
    // No positive column (the memory bank): the lse over the columns is the result.
    acc_t loss, lse = lse_value(st.run_max, st.run_sum);
    if (row_offset + R <= C)
      loss_from_negatives(lse, *s_pos, loss, lse);
    else
      loss = lse;
    row_lse[r] = lse;
    row_loss[r] = loss;
  }
};

// Backward coefficient w_k P_kl + w_l P_lk (ntxent_math.h: pair_coeff); grad_scale 1/tau.
template <typename acc_t>
struct XentCoef {
  acc_t inv_tau;
  const acc_t* __restrict__ row_lse;
  const acc_t* __restrict__ col_lse;
  const acc_t* __restrict__ row_weight;
  const acc_t* __restrict__ col_weight;
  struct Side {
    acc_t lse, w;
  };
  __device__ __forceinline__ Side row(int r) const {
    return {__ldg(row_lse + r), __ldg(row_weight + r)};
  }
  __device__ __forceinline__ Side col(int c) const {
    return {__ldg(col_lse + c), __ldg(col_weight + c)};
  }
  __device__ __forceinline__ acc_t coeff(acc_t dot, const Side& k, const Side& l) const {
    return pair_coeff(dot * inv_tau, k.lse, l.lse, k.w, l.w);
  }
  __device__ __forceinline__ acc_t grad_scale() const { return inv_tau; }
};

// ============================================================================================
// NT-Logistic and margin triplet (pair_loss.h; docs/architecture.md, 2.5)
// ============================================================================================
// A rule holds one loss's per-logit math in terms of the cosine c (the similarity tile before
// any 1/tau): its forward statistic (push), the row's loss from the merged statistics (loss),
// and the backward coefficient of one logit (coeff). Membership in M_k is decided by c against
// the row's c_pos, with the same expression in the forward and the backward; the backward
// recomputes c with the forward's own tile product (same operands, same order), so the sets
// the backward holds fixed are the forward's.

C10_HOST_DEVICE inline float sigmoid_acc(float x) {
  // why: exp of a non-positive argument only, so neither branch overflows
  const float e = ::expf(-::fabsf(x));
  return x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}
C10_HOST_DEVICE inline double sigmoid_acc(double x) {
  const double e = ::exp(-::fabs(x));
  return x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}
// softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow at any x, and no
// cancellation for large negative x (log1p of a tiny number).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t softplus_acc(acc_t x) {
  return (x > acc_t(0) ? x : acc_t(0)) + log1p_acc(exp_acc(-(x < acc_t(0) ? -x : x)));
}

// Per-row forward statistics of a pair loss: c_pos (loaded once), and over this thread's
// columns of M_k the sum of the loss terms, |M_k| and the active count (margin: hinge > 0).
// The counts are integers so they merge exactly across threads and splits.
template <typename acc_t>
struct PairRow {
  acc_t cpos, sum;
  int count, active;
};

// NT-Logistic: loss_k = softplus(-s_k,pos) + (1/|M_k|) sum_{l in M_k} softplus(s_kl)
// (-log sigmoid(-s) = softplus(s)); M_k: every negative, or with semi_hard {c_kl < c_k,pos}.
template <typename acc_t_>
struct LogisticRule {
  using acc_t = acc_t_;
  acc_t inv_tau;
  bool semi_hard;
  __device__ __forceinline__ bool member(acc_t c, acc_t cpos) const {
    return !semi_hard || c < cpos;
  }
  __device__ __forceinline__ void push(PairRow<acc_t>& st, acc_t c) const {
    const bool in = member(c, st.cpos);
    st.count += in ? 1 : 0;
    // why c - c: 0 for any finite c and NaN for NaN, so a NaN similarity reaches the loss even
    // where semi_hard's comparison would drop it (NaN in, NaN out)
    st.sum += in ? softplus_acc(c * inv_tau) : c - c;
  }
  // An empty M_k leaves only the positive term.
  __device__ __forceinline__ acc_t loss(acc_t cpos, acc_t sum, int count) const {
    const acc_t neg = count > 0 ? sum / static_cast<acc_t>(count) : acc_t(0);
    return softplus_acc(-cpos * inv_tau) + neg;
  }
  // d/dc_kl of (1/|M_k|) softplus(s_kl) is sigmoid(s_kl) / (tau |M_k|): with a_k = w_k / |M_k|
  // the coefficient is (a_k [l in M_k] + a_l [k in M_l]) sigmoid(s_kl), times grad_scale 1/tau.
  __device__ __forceinline__ acc_t coeff(acc_t c, acc_t cpos_k, acc_t a_k, acc_t cpos_l,
                                         acc_t a_l) const {
    const acc_t a = (member(c, cpos_k) ? a_k : acc_t(0)) + (member(c, cpos_l) ? a_l : acc_t(0));
    return a * sigmoid_acc(c * inv_tau);
  }
  __device__ __forceinline__ acc_t grad_scale() const { return inv_tau; }
};

// Margin triplet: loss_k = (1/|M_k|) sum_{l in M_k} max(0, c_kl - c_k,pos + margin);
// M_k: every negative, or with semi_hard the band c_k,pos - margin < c_kl < c_k,pos, whose
// lower bound is tested as hinge > 0 (the same expression as the active test, so every member
// of the band is active). An empty M_k gives 0.
template <typename acc_t_>
struct MarginRule {
  using acc_t = acc_t_;
  acc_t margin;
  bool semi_hard;
  __device__ __forceinline__ acc_t hinge(acc_t c, acc_t cpos) const { return (c - cpos) + margin; }
  __device__ __forceinline__ void push(PairRow<acc_t>& st, acc_t c) const {
    const acc_t h = hinge(c, st.cpos);
    const bool in = !semi_hard || (h > acc_t(0) && c < st.cpos);
    const bool on = in && h > acc_t(0);
    st.count += in ? 1 : 0;
    st.active += on ? 1 : 0;
    st.sum += on ? h : c - c;  // c - c: as in LogisticRule::push (NaN in, NaN out)
  }
  __device__ __forceinline__ acc_t loss(acc_t cpos, acc_t sum, int count) const {
    const acc_t mean = count > 0 ? sum / static_cast<acc_t>(count) : acc_t(0);
    return mean + (cpos - cpos);  // a NaN c_pos gives NaN even when M_k came out empty
  }
  // d/dc_kl of the row's mean hinge is [hinge_kl > 0] / |M_k| on l in M_k: the coefficient is
  // a_k [l in M_k, active] + a_l [k in M_l, active], a = w / |M|; grad_scale 1 (no tau).
  __device__ __forceinline__ bool active(acc_t c, acc_t cpos) const {
    const acc_t h = hinge(c, cpos);
    return h > acc_t(0) && (!semi_hard || c < cpos);
  }
  __device__ __forceinline__ acc_t coeff(acc_t c, acc_t cpos_k, acc_t a_k, acc_t cpos_l,
                                         acc_t a_l) const {
    return (active(c, cpos_k) ? a_k : acc_t(0)) + (active(c, cpos_l) ? a_l : acc_t(0));
  }
  __device__ __forceinline__ acc_t grad_scale() const { return acc_t(1); }
};

// A finished row: its loss and state [c_pos, |M_k|, active] (pair_loss.h: kStateCosPos, ...).
// |M_k| and the active count are exact in the state up to 2^24 columns (fp32).
template <typename Rule, typename acc_t = typename Rule::acc_t>
__device__ __forceinline__ void pair_write_row(const Rule& rule, int r, acc_t cpos, acc_t sum,
                                               int count, int active, acc_t* __restrict__ row_loss,
                                               acc_t* __restrict__ row_state) {
  row_loss[r] = rule.loss(cpos, sum, count);
  acc_t* st = row_state + static_cast<int64_t>(r) * kPairStateCols;
  st[kStateCosPos] = cpos;
  st[kStateCount] = static_cast<acc_t>(count);
  st[kStateActive] = static_cast<acc_t>(active);
}

// Tensor-core forward of a pair loss: per split, each row's partial (sum, count, active);
// pair_finish_kernel merges the splits in order. c_pos comes from pair_cos_pos_kernel.
template <typename Rule>
struct PairTcForward {
  Rule rule;
  const float* __restrict__ cos_pos;  // [R]
  float* __restrict__ part_sum;       // [splits, R]
  int* __restrict__ part_count;       // [splits, R]
  int* __restrict__ part_active;      // [splits, R]
  using Row = PairRow<float>;
  __device__ __forceinline__ void init(Row& st, int row, int R) const {
    st.cpos = row < R ? __ldg(cos_pos + row) : 0.f;
    st.sum = 0.f;
    st.count = 0;
    st.active = 0;
  }
  __device__ __forceinline__ void tile(Row& st, const float (&acc)[8][4], int h, int col0,
                                       int t4, int c_end, int /*row*/, int self_col, int pos_col,
                                       int /*R*/) const {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = col0 + nt * 8 + 2 * t4 + e;
        // Neg_k: self, the positive and the zero-filled columns past c_end are not candidates
        if (c < c_end && c != self_col && c != pos_col) rule.push(st, acc[nt][2 * h + e]);
      }
  }
  // The 4 threads of a row (a quad) hold disjoint columns: their statistics add.
  __device__ __forceinline__ void write(const Row& st, int t4, int row, int R) const {
    float sum = st.sum + __shfl_xor_sync(0xffffffffu, st.sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    int count = st.count + __shfl_xor_sync(0xffffffffu, st.count, 1);
    count += __shfl_xor_sync(0xffffffffu, count, 2);
    int active = st.active + __shfl_xor_sync(0xffffffffu, st.active, 1);
    active += __shfl_xor_sync(0xffffffffu, active, 2);
    if (t4 == 0 && row < R) {
      const int64_t at = static_cast<int64_t>(blockIdx.y) * R + row;
      part_sum[at] = sum;
      part_count[at] = count;
      part_active[at] = active;
    }
  }
};

// SIMT forward of a pair loss: one launch over all columns, so a finished row writes its loss
// and state directly.
template <typename Rule>
struct PairSimtForward {
  using acc_t = typename Rule::acc_t;
  Rule rule;
  const acc_t* __restrict__ cos_pos;  // [R]
  acc_t* __restrict__ row_loss;       // [R]
  acc_t* __restrict__ row_state;      // [R, 3]
  using Row = PairRow<acc_t>;
  __device__ __forceinline__ void init(Row& st, int row, int R) const {
    st.cpos = row < R ? __ldg(cos_pos + row) : acc_t(0);
    st.sum = acc_t(0);
    st.count = 0;
    st.active = 0;
  }
  __device__ __forceinline__ void logit(Row& st, acc_t dot, int c, int self_col, int pos_col,
                                        acc_t* /*s_pos*/) const {
    if (c != self_col && c != pos_col) rule.push(st, dot);
  }
  __device__ __forceinline__ void merge(Row& st, int off) const {
    st.sum += __shfl_xor_sync(0xffffffffu, st.sum, off);
    st.count += __shfl_xor_sync(0xffffffffu, st.count, off);
    st.active += __shfl_xor_sync(0xffffffffu, st.active, off);
  }
  __device__ __forceinline__ void finish(const Row& st, int r, int /*R*/, int /*C*/,
                                         int /*row_offset*/, const acc_t* /*s_pos*/) const {
    pair_write_row(rule, r, st.cpos, st.sum, st.count, st.active, row_loss, row_state);
  }
};

// Backward coefficient of a pair loss. A Side is (c_pos, a = w / |M|) of a row or column,
// prepared on the host from the saved states and the weights (a = 0 for an empty M).
template <typename Rule>
struct PairCoef {
  using acc_t = typename Rule::acc_t;
  Rule rule;
  const acc_t* __restrict__ row_cpos;
  const acc_t* __restrict__ col_cpos;
  const acc_t* __restrict__ row_a;
  const acc_t* __restrict__ col_a;
  struct Side {
    acc_t cpos, a;
  };
  __device__ __forceinline__ Side row(int r) const {
    return {__ldg(row_cpos + r), __ldg(row_a + r)};
  }
  __device__ __forceinline__ Side col(int c) const {
    return {__ldg(col_cpos + c), __ldg(col_a + c)};
  }
  __device__ __forceinline__ acc_t coeff(acc_t dot, const Side& k, const Side& l) const {
    return rule.coeff(dot, k.cpos, k.a, l.cpos, l.a);
  }
  __device__ __forceinline__ acc_t grad_scale() const { return rule.grad_scale(); }
};

}  // namespace ntxent
}  // namespace simclr_ext
