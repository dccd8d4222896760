// NT-Logistic and margin-triplet CPU kernels (docs/architecture.md section 2.5): two policies of
// the shared tile loop (tile_loop_cpu.h). The tiles hold cosines (the GEMM's alpha is 1): the
// semi-hard sets are defined on c, and 1/tau is applied in the elementwise passes. Sums in fp32
// (fp64 for fp64 inputs). One process: the symmetric schedule (the backward within its
// accumulator budget); gathered columns: the general one. The backward holds the
// semi-hard sets fixed: membership is recomputed from the recomputed c and the forward's c_pos
// (pair_loss.h: the per-row state).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ntxent/ntxent_math.h"
#include "ntxent/pair_loss.h"
#include "ntxent/tile_loop_cpu.h"

namespace simclr_ext {
namespace ntxent {

namespace {

using namespace tile_loop;

// softplus(x) = log(1 + exp(x)) = -log sigmoid(-x), without overflow or cancellation.
template <typename acc_t>
inline acc_t softplus_acc(acc_t x) {
  return (x > acc_t(0) ? x : acc_t(0)) + log1p_acc(exp_acc(-std::abs(x)));
}

// sigmoid(x) = 1 / (1 + exp(-x)), each branch's exp <= 1.
template <typename acc_t>
inline acc_t sigmoid_acc(acc_t x) {
  if (x >= acc_t(0)) return acc_t(1) / (acc_t(1) + exp_acc(-x));
  const acc_t e = exp_acc(x);
  return e / (acc_t(1) + e);
}

// ATen's softplus(x, beta, threshold) = log1p(exp(beta x)) / beta, or x once beta x > threshold,
// where the two agree to the last bit (exp(-threshold) below half an ulp of 1).
template <typename acc_t>
constexpr double softplus_threshold() {
  return sizeof(acc_t) == 4 ? 20.0 : 40.0;
}

// The membership band of row k: l is in M_k iff !(c >= hi_k) and !(c <= lo_k), evaluated with
// `&`, not `&&`: no branch, so the loops vectorize and a random membership costs no branch
// mispredictions (it did: semi-hard ran 2x slower with `&&`). Without semi-hard hi = +inf and lo = -inf: every negative. The masked cells (self, positive) hold +inf,
// which no band admits; a NaN c is a member, so NaN in gives NaN out.
template <typename acc_t>
struct Band {
  acc_t lo, hi;
};

template <typename acc_t>
inline Band<acc_t> band(acc_t c_pos, const PairLossParams& p) {
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  if (!p.semi_hard) return {-inf, inf};
  if (p.kind == PairLossKind::kLogistic) return {-inf, c_pos};
  return {c_pos - acc_t(p.margin), c_pos};
}

// ---- forward: what a tile adds to each row's statistics ---------------------------------------

// Row k's loss and state from its totals (sum: of softplus(s) * tau or of the hinge; n = |M_k|;
// act: the active hinges).
template <typename acc_t>
inline void finish_row(const PairLossParams& p, int64_t k, const acc_t* c_pos, acc_t sum, acc_t n,
                       acc_t act, acc_t* loss, acc_t* state) {
  const acc_t inv_tau = acc_t(1.0 / p.temperature);
  acc_t l;
  if (p.kind == PairLossKind::kLogistic) {
    // -log sigmoid(s_pos) = softplus(-s_pos); an empty M_k leaves only this term.
    l = softplus_acc(-c_pos[k] * inv_tau);
    if (n > acc_t(0)) l += sum * inv_tau / n;
  } else {
    l = n > acc_t(0) ? sum / n : acc_t(0);  // an empty M_k gives 0
  }
  loss[k] = l;
  acc_t* st = state + k * kPairStateCols;
  st[kStateCosPos] = c_pos[k];
  st[kStateCount] = n;
  st[kStateActive] = p.kind == PairLossKind::kLogistic ? acc_t(0) : act;
}
// Per row of the row tile: sum (of softplus(s) / tau-scaled, or of the hinge), |M_k| and the
// active hinges, over this tile's columns; end() turns them into row_loss and the state.
template <typename acc_t>
struct PairForwardWorker {
  PairLossParams p;
  int64_t R, row_offset;
  const acc_t* c_pos;  // [R]
  acc_t* loss;         // [R]
  acc_t* state;        // [R, kPairStateCols]
  at::Tensor tbuf;     // logistic: softplus of a tile
  std::vector<acc_t> sum, cnt, act;

  PairForwardWorker(const PairLossParams& p_, int64_t R_, int64_t off, const acc_t* cp, acc_t* l,
                    acc_t* st, const at::TensorOptions& opt)
      : p(p_), R(R_), row_offset(off), c_pos(cp), loss(l), state(st),
        tbuf(p_.kind == PairLossKind::kLogistic ? at::empty({kTile * kTile}, opt) : at::Tensor()),
        sum(kTile), cnt(kTile), act(kTile) {}

  void begin(TileRange ri) {
    for (int64_t i = 0; i < ri.size; ++i) sum[i] = cnt[i] = act[i] = acc_t(0);
  }

  void tile(at::Tensor& S, TileRange ri, TileRange rj) {
    acc_t* c = S.data_ptr<acc_t>();
    mask_self_and_positive(c, ri, rj, R, row_offset, std::numeric_limits<acc_t>::infinity());
    if (p.kind == PairLossKind::kLogistic) {
      // t = softplus(c / tau) * tau (ATen's beta form, vectorized); the row sums are scaled
      // back by 1/tau in end().
      at::Tensor T = tile_view(tbuf, ri.size, rj.size);
      at::softplus_out(T, S, 1.0 / p.temperature, softplus_threshold<acc_t>());
      const acc_t* t = T.data_ptr<acc_t>();
      for (int64_t i = 0; i < ri.size; ++i) {
        const Band<acc_t> b = band(c_pos[ri.begin + i], p);
        const acc_t* cr = c + i * rj.size;
        const acc_t* tr = t + i * rj.size;
        acc_t s = 0, n = 0;
#pragma omp simd reduction(+ : s, n)
        for (int64_t j = 0; j < rj.size; ++j) {
          const bool m = !(cr[j] >= b.hi) & !(cr[j] <= b.lo);
          s += m ? tr[j] : acc_t(0);
          n += m ? acc_t(1) : acc_t(0);
        }
        sum[i] += s;
        cnt[i] += n;
      }
      return;
    }
    const acc_t margin = acc_t(p.margin);
    for (int64_t i = 0; i < ri.size; ++i) {
      const acc_t cp = c_pos[ri.begin + i];
      const Band<acc_t> b = band(cp, p);
      const acc_t* cr = c + i * rj.size;
      acc_t s = 0, n = 0, a = 0;
#pragma omp simd reduction(+ : s, n, a)
      for (int64_t j = 0; j < rj.size; ++j) {
        const bool m = !(cr[j] >= b.hi) & !(cr[j] <= b.lo);
        const acc_t h = (cr[j] - cp) + margin;
        // max(0, h) with NaN kept: NaN in, NaN out
        s += m ? (h < acc_t(0) ? acc_t(0) : h) : acc_t(0);
        n += m ? acc_t(1) : acc_t(0);
        a += (m & (h > acc_t(0))) ? acc_t(1) : acc_t(0);
      }
      sum[i] += s;
      cnt[i] += n;
      act[i] += a;
    }
  }

  void end(TileRange ri) {
    for (int64_t i = 0; i < ri.size; ++i)
      finish_row(p, ri.begin + i, c_pos, sum[i], cnt[i], act[i], loss, state);
  }
};

// Symmetric forward (one process): each upper tile (I, J) adds to the rows of I (row sums under
// each row's band) and, off the diagonal, to the rows of J (column sums under each column's
// band: c_ji = c_ij, and the softplus of the tile serves both). Per chunk [R, 3] totals (sum,
// |M|, active), summed in chunk order: bitwise reproducible for a given thread count.
template <typename acc_t>
void forward_symmetric_impl(const at::Tensor& u, const PairLossParams& p, const acc_t* c_pos,
                            acc_t* loss, acc_t* state) {
  const int64_t R = u.size(0);
  const int64_t P = num_chunks(num_tiles(R) * (num_tiles(R) + 1) / 2);
  at::Tensor totals = at::zeros({P, R, 3}, u.options());
  const bool logistic = p.kind == PairLossKind::kLogistic;
  const acc_t margin = acc_t(p.margin);
  std::vector<at::Tensor> tbufs(P);
  for (auto& t : tbufs) t = logistic ? at::empty({kTile * kTile}, u.options()) : at::Tensor();
  forward_symmetric(u, /*alpha=*/1.0, P,
                    [&](int64_t q, at::Tensor& S, TileRange ri, TileRange rj, bool off_diag) {
    acc_t* tot = totals.data_ptr<acc_t>() + q * R * 3;
    acc_t* c = S.data_ptr<acc_t>();
    // The cell (i, pos i) of an upper tile is also the cell (pos i, i): masking it masks both.
    mask_self_and_positive(c, ri, rj, R, 0, std::numeric_limits<acc_t>::infinity());
    const acc_t* t = c;
    if (logistic) {
      at::Tensor T = tile_view(tbufs[q], ri.size, rj.size);
      at::softplus_out(T, S, 1.0 / p.temperature, softplus_threshold<acc_t>());
      t = T.data_ptr<acc_t>();
    }
    // Column side: per column j its band, its sums over this tile's rows.
    std::vector<acc_t> lo_j(rj.size), hi_j(rj.size), cp_j(rj.size), cs(rj.size, acc_t(0)),
        cn(rj.size, acc_t(0)), ca(rj.size, acc_t(0));
    for (int64_t j = 0; j < rj.size; ++j) {
      const Band<acc_t> b = band(c_pos[rj.begin + j], p);
      lo_j[j] = b.lo;
      hi_j[j] = b.hi;
      cp_j[j] = c_pos[rj.begin + j];
    }
    for (int64_t i = 0; i < ri.size; ++i) {
      const acc_t cpi = c_pos[ri.begin + i];
      const Band<acc_t> bi = band(cpi, p);
      const acc_t* cr = c + i * rj.size;
      const acc_t* tr = t + i * rj.size;
      acc_t rs = 0, rn = 0, ra = 0;
      if (logistic) {
#pragma omp simd reduction(+ : rs, rn)
        for (int64_t j = 0; j < rj.size; ++j) {
          const acc_t x = cr[j], v = tr[j], hj = hi_j[j], lj = lo_j[j];
          const bool mi = !(x >= bi.hi) & !(x <= bi.lo);
          const bool mj = !(x >= hj) & !(x <= lj);
          rs += mi ? v : acc_t(0);
          rn += mi ? acc_t(1) : acc_t(0);
          cs[j] += mj ? v : acc_t(0);
          cn[j] += mj ? acc_t(1) : acc_t(0);
        }
      } else {
#pragma omp simd reduction(+ : rs, rn, ra)
        for (int64_t j = 0; j < rj.size; ++j) {
          const acc_t x = cr[j], hj = hi_j[j], lj = lo_j[j], cpj = cp_j[j];
          const bool mi = !(x >= bi.hi) & !(x <= bi.lo);
          const bool mj = !(x >= hj) & !(x <= lj);
          const acc_t hi_ = (x - cpi) + margin, hj_ = (x - cpj) + margin;
          // max(0, h) with NaN kept: NaN in, NaN out
          rs += mi ? (hi_ < acc_t(0) ? acc_t(0) : hi_) : acc_t(0);
          rn += mi ? acc_t(1) : acc_t(0);
          ra += (mi & (hi_ > acc_t(0))) ? acc_t(1) : acc_t(0);
          cs[j] += mj ? (hj_ < acc_t(0) ? acc_t(0) : hj_) : acc_t(0);
          cn[j] += mj ? acc_t(1) : acc_t(0);
          ca[j] += (mj & (hj_ > acc_t(0))) ? acc_t(1) : acc_t(0);
        }
      }
      acc_t* tr_i = tot + (ri.begin + i) * 3;
      tr_i[0] += rs;
      tr_i[1] += rn;
      tr_i[2] += ra;
    }
    // A diagonal tile is its own transpose: its row sums already cover its columns' rows.
    if (off_diag) {
      for (int64_t j = 0; j < rj.size; ++j) {
        acc_t* tc = tot + (rj.begin + j) * 3;
        tc[0] += cs[j];
        tc[1] += cn[j];
        tc[2] += ca[j];
      }
    }
  });
  const at::Tensor sum = totals.sum(0);
  const acc_t* tt = sum.data_ptr<acc_t>();
  for (int64_t k = 0; k < R; ++k)
    finish_row(p, k, c_pos, tt[k * 3], tt[k * 3 + 1], tt[k * 3 + 2], loss, state);
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, const PairLossParams& p,
                                                bool symmetric) {
  const auto [rows, cols] = rows_cols_acc<acc_t>(u_rows, u_cols, symmetric);
  const int64_t R = rows.size(0);
  const at::Tensor c_pos = positive_dots<acc_t>(rows, cols, row_offset, acc_t(1));
  at::Tensor loss = at::empty({R}, rows.options());
  at::Tensor state = at::empty({R, kPairStateCols}, rows.options());
  const acc_t* cp = c_pos.data_ptr<acc_t>();
  acc_t* l = loss.data_ptr<acc_t>();
  acc_t* st = state.data_ptr<acc_t>();
  if (symmetric) {
    forward_symmetric_impl<acc_t>(rows, p, cp, l, st);
  } else {
    forward_general(rows, cols, /*alpha=*/1.0, [&] {
      return PairForwardWorker<acc_t>(p, R, row_offset, cp, l, st, rows.options());
    });
  }
  return {loss, state};
}

// ---- backward: each logit's coefficient M_kl = w_k f(c_kl; state_k) + w_l f(c_kl; state_l) ---
//   logistic: f(c; k) = [l in M_k] sigmoid(c / tau) / (tau |M_k|)
//   triplet:  f(c; k) = [l in M_k] [c - c_k,pos + margin > 0] / |M_k|
// and the positive's coefficient w_k f_pos(k) + w_pos f_pos(pos), f_pos = d loss_k / d c_k,pos:
//   logistic: -sigmoid(-c_pos / tau) / tau;   triplet: -(active hinges) / |M_k|.

// Per row of a state [n, kPairStateCols]: a_k = w_k / |M_k| (/ tau for logistic; 0 for an
// empty M_k) and q_k = -f_pos(k).
template <typename acc_t>
void row_factors(const at::Tensor& state, const at::Tensor& weight, const PairLossParams& p,
                 std::vector<acc_t>& a, std::vector<acc_t>& q) {
  const int64_t n = state.size(0);
  a.resize(n);
  q.resize(n);
  const acc_t* st = state.data_ptr<acc_t>();
  const acc_t* w = weight.data_ptr<acc_t>();
  const acc_t inv_tau = acc_t(1.0 / p.temperature);
  for (int64_t k = 0; k < n; ++k) {
    const acc_t* s = st + k * kPairStateCols;
    const acc_t cnt = s[kStateCount];
    if (p.kind == PairLossKind::kLogistic) {
      a[k] = cnt > acc_t(0) ? w[k] * inv_tau / cnt : acc_t(0);
      q[k] = sigmoid_acc(-s[kStateCosPos] * inv_tau) * inv_tau;
    } else {
      a[k] = cnt > acc_t(0) ? w[k] / cnt : acc_t(0);
      q[k] = cnt > acc_t(0) ? s[kStateActive] / cnt : acc_t(0);
    }
  }
}

template <typename acc_t>
at::Tensor backward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_state,
                         const at::Tensor& col_state, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, int64_t row_offset,
                         const PairLossParams& p, bool symmetric) {
  const auto [rows, cols] = rows_cols_acc<acc_t>(u_rows, u_cols, symmetric);
  std::vector<acc_t> a_row, q_row, a_col, q_col;
  row_factors<acc_t>(row_state, row_weight, p, a_row, q_row);
  row_factors<acc_t>(col_state, col_weight, p, a_col, q_col);
  const acc_t* rs = row_state.data_ptr<acc_t>();
  const acc_t* cs = col_state.data_ptr<acc_t>();
  const bool logistic = p.kind == PairLossKind::kLogistic;
  const acc_t margin = acc_t(p.margin);
  const double inv_tau = 1.0 / p.temperature;

  auto coeff = [&](at::Tensor& S, at::Tensor& tmp, TileRange ri, TileRange rj) {
    const acc_t* c = S.data_ptr<acc_t>();
    // logistic: the membership-weighted factors into tmp, then M = sigmoid(c / tau) * tmp;
    // triplet: M written directly (no transcendental).
    acc_t* out = logistic ? tmp.data_ptr<acc_t>() : S.data_ptr<acc_t>();
    std::vector<acc_t> lo_j(rj.size), hi_j(rj.size), cp_j(rj.size);
    for (int64_t j = 0; j < rj.size; ++j) {
      const acc_t cpj = cs[(rj.begin + j) * kPairStateCols + kStateCosPos];
      const Band<acc_t> b = band(cpj, p);
      lo_j[j] = b.lo;
      hi_j[j] = b.hi;
      cp_j[j] = cpj;
    }
    const acc_t* aj = a_col.data() + rj.begin;
    for (int64_t i = 0; i < ri.size; ++i) {
      const acc_t cpi = rs[(ri.begin + i) * kPairStateCols + kStateCosPos];
      const Band<acc_t> bi = band(cpi, p);
      const acc_t ai = a_row[ri.begin + i];
      const acc_t* cr = c + i * rj.size;
      acc_t* orow = out + i * rj.size;
      if (logistic) {
#pragma omp simd
        for (int64_t j = 0; j < rj.size; ++j) {
          // every load unconditional, selects only: the loop vectorizes
          const acc_t x = cr[j], hj = hi_j[j], lj = lo_j[j], a = aj[j];
          const bool mi = !(x >= bi.hi) & !(x <= bi.lo);
          const bool mj = !(x >= hj) & !(x <= lj);
          orow[j] = (mi ? ai : acc_t(0)) + (mj ? a : acc_t(0));
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < rj.size; ++j) {
          const acc_t x = cr[j], hj = hi_j[j], lj = lo_j[j], cpj = cp_j[j], a = aj[j];
          const bool mi = !(x >= bi.hi) & !(x <= bi.lo) & ((x - cpi) + margin > acc_t(0));
          const bool mj = !(x >= hj) & !(x <= lj) & ((x - cpj) + margin > acc_t(0));
          orow[j] = (mi ? ai : acc_t(0)) + (mj ? a : acc_t(0));
        }
      }
    }
    if (logistic) S.mul_(inv_tau).sigmoid_().mul_(tmp);
  };
  // One process: M is symmetric (the rows' and the columns' states are the same), so each
  // upper tile serves both of its sides, as in NT-Xent's symmetric backward. The membership of
  // the cell (j, i) is then decided on c_ij of the tile (I, J); it may differ from the
  // forward's c_ji by rounding, which matters only for a c within an ulp of a band end.
  const int64_t R = rows.size(0), D = rows.size(1);
  const int64_t P = num_chunks(num_tiles(R) * (num_tiles(R) + 1) / 2);
  at::Tensor G;
  if (symmetric && symmetric_grad_fits(P, R, D, sizeof(acc_t)))
    G = grad_symmetric<acc_t>(rows, /*alpha=*/1.0, P, coeff);
  else
    G = grad_general<acc_t>(rows, cols, row_offset, /*alpha=*/1.0, coeff);
  const acc_t* wr = row_weight.data_ptr<acc_t>();
  const acc_t* wc = col_weight.data_ptr<acc_t>();
  return finalize_rows<acc_t>(
      G, rows, cols, norm_rows, row_offset, acc_t(1),
      [&](int64_t i, int64_t pc) { return wr[i] * q_row[i] + wc[pc] * q_col[pc]; },
      u_rows.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_forward_cpu(const at::Tensor& u_rows,
                                                    const at::Tensor& u_cols, int64_t row_offset,
                                                    const PairLossParams& params, bool symmetric) {
  if (accumulation_dtype(u_rows.scalar_type()) == at::kDouble)
    return forward_impl<double>(u_rows, u_cols, row_offset, params, symmetric);
  return forward_impl<float>(u_rows, u_cols, row_offset, params, symmetric);
}

at::Tensor pair_backward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                             const at::Tensor& norm_rows, const at::Tensor& row_state,
                             const at::Tensor& col_state, const at::Tensor& row_weight,
                             const at::Tensor& col_weight, int64_t row_offset,
                             const PairLossParams& params, bool symmetric) {
  if (accumulation_dtype(u_rows.scalar_type()) == at::kDouble)
    return backward_impl<double>(u_rows, u_cols, norm_rows, row_state, col_state, row_weight,
                                 col_weight, row_offset, params, symmetric);
  return backward_impl<float>(u_rows, u_cols, norm_rows, row_state, col_state, row_weight,
                              col_weight, row_offset, params, symmetric);
}

}  // namespace ntxent
}  // namespace simclr_ext
