// NT-Xent CPU kernels (docs/architecture.md section 2.2): the FlashAttention pattern on the CPU,
// as the NT-Xent policy of the shared tile loop (tile_loop_cpu.h: tiles, schedules, GEMMs,
// masking, G += M u). Log-sum-exp accumulated in fp32 (fp64 for fp64 inputs); the backward
// recomputes the tiles. Never a [R, C] matrix.
//
// Schedules (tile_loop_cpu.h): symmetric (the single-process case, flagged by the caller:
// `symmetric` in ntxent.h; forward: row and column sums of each upper tile; backward: M_IJ u_J
// for I and M_IJ^T u_I for J, M being symmetric); general (gathered columns; also the symmetric
// case's forward at a temperature too small for the fixed shift, and its backward when the
// per-chunk accumulators would exceed their budget).
// Results are bitwise reproducible for a given thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "ntxent/ntxent.h"
#include "ntxent/ntxent_math.h"
#include "ntxent/tile_loop_cpu.h"

namespace simclr_ext {
namespace ntxent {

namespace {

using namespace tile_loop;  // kTile, TileRange, the schedules (tile_loop_cpu.h)


// For unit vectors s <= 1/tau, so c = 1/tau is a safe shift for every row: exp(s - c) <= 1 never
// overflows, and the smallest term exp(-2/tau) stays a normal number as long as 2/tau is below
// ~87 (fp32) / ~708 (fp64). With margin: 80 and 700. Below those temperatures the online
// log-sum-exp (running max per row) is used instead.
template <typename acc_t>
bool fixed_shift_ok(double temperature) {
  const double limit = sizeof(acc_t) == 4 ? 80.0 : 700.0;
  return 2.0 / temperature <= limit;
}

// ---- fp32 elementwise passes over a tile: exp fused with what follows it ----------------------
// ATen's exp_ is a separate pass (~0.8 ns per element here); these loops do exp and the sums or
// the coefficient product in one pass, compiled once per ISA and picked at run time
// (elementwise_isa). They are written on explicit GCC vectors of the ISA's native width (16
// floats under AVX-512, 8 under AVX2, 4 on baseline x86-64) rather than left to the
// auto-vectorizer: GCC vectorized the scalar form only for AVX-512 (mask registers); under AVX2
// the clamps and the NaN select stayed branches and the loop scalar, ~7x slower
// (benchmarks/NOTES.md). Wider-than-native vectors fare no better: GCC splits them with spills
// and scalar selects.
template <int W>
struct Vec {
  typedef float f __attribute__((vector_size(4 * W)));
  typedef int32_t i __attribute__((vector_size(4 * W)));
};

template <int W>
__attribute__((always_inline)) inline typename Vec<W>::f splat(float x) {
  return typename Vec<W>::f{} + x;
}

template <int W>
__attribute__((always_inline)) inline typename Vec<W>::f load_v(const float* p) {
  typename Vec<W>::f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int W>
__attribute__((always_inline)) inline void store_v(float* p, typename Vec<W>::f v) {
  std::memcpy(p, &v, sizeof(v));
}

// The first n (< W) lanes from p, the others `fill`; and their store back.
template <int W>
__attribute__((always_inline)) inline typename Vec<W>::f load_part(const float* p, int64_t n,
                                                                  float fill) {
  alignas(64) float t[W];
  for (int64_t k = 0; k < W; ++k) t[k] = k < n ? p[k] : fill;
  return load_v<W>(t);
}

template <int W>
__attribute__((always_inline)) inline void store_part(float* p, int64_t n, typename Vec<W>::f v) {
  alignas(64) float t[W];
  store_v<W>(t, v);
  for (int64_t k = 0; k < n; ++k) p[k] = t[k];
}

// Sum of the lanes in a fixed pairwise order (deterministic run to run).
template <int W>
__attribute__((always_inline)) inline float lane_sum(typename Vec<W>::f v) {
  alignas(64) float t[W];
  store_v<W>(t, v);
  for (int64_t w = W / 2; w >= 1; w /= 2)
    for (int64_t k = 0; k < w; ++k) t[k] += t[k + w];
  return t[0];
}

// exp(x) for the shifted logits (x <= ~0), per lane: x = n ln2 + r with |r| <= ln2/2 (Cephes'
// two-part ln2), exp(r) by Cephes' degree-6 polynomial (~2 ulp), 2^n written into the exponent
// bits. Below -87 the result is 0 (it would be subnormal); -inf gives 0 (the self mask); NaN
// stays NaN.
template <int W>
__attribute__((always_inline)) inline typename Vec<W>::f exp_shifted_v(typename Vec<W>::f x) {
  using f = typename Vec<W>::f;
  using i = typename Vec<W>::i;
  const f lo = splat<W>(-87.0f), hi = splat<W>(88.0f);
  f xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;  // NaN compares false twice and stays NaN
  // round-to-nearest by the 1.5 * 2^23 trick: no float->int rounding mode needed
  const f n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const f r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  f y = splat<W>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const i bits = (__builtin_convertvector(n, i) + 127) << 23;
  const f e = y * __builtin_bit_cast(f, bits);
  const f zero = splat<W>(0.0f);
  return x < lo ? zero : (x != x ? x : e);
}

template <int W>
__attribute__((always_inline)) inline void exp_shift_sums_f32_body(float* s, int64_t rows,
                                                                   int64_t cols, float shift,
                                                                   float* row_acc,
                                                                   float* col_acc) {
  using f = typename Vec<W>::f;
  const int64_t full = cols - cols % W, tail = cols - full;
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    float* sr = s + i * cols;
    f sum = splat<W>(0.0f);
    // The column sums ride along in the same pass (the tile row is read once).
    for (int64_t j = 0; j < full; j += W) {
      const f e = exp_shifted_v<W>(load_v<W>(sr + j) - shift);
      store_v<W>(sr + j, e);
      sum += e;
      if (col_acc != nullptr) store_v<W>(col_acc + j, load_v<W>(col_acc + j) + e);
    }
    if (tail != 0) {  // -inf in the unused lanes: exp gives 0 there
      const f e = exp_shifted_v<W>(load_part<W>(sr + full, tail, kNegInf) - shift);
      store_part<W>(sr + full, tail, e);
      sum += e;
      if (col_acc != nullptr)
        store_part<W>(col_acc + full, tail, load_part<W>(col_acc + full, tail, 0.0f) + e);
    }
    row_acc[i] += lane_sum<W>(sum);
  }
}

template <int W>
__attribute__((always_inline)) inline void pair_coeff_shifted_f32_body(float* s, int64_t rows,
                                                                       int64_t cols, float shift,
                                                                       const float* a_i,
                                                                       const float* a_j) {
  const int64_t full = cols - cols % W, tail = cols - full;
  for (int64_t i = 0; i < rows; ++i) {
    float* sr = s + i * cols;
    const float ai = a_i[i];
    for (int64_t j = 0; j < full; j += W)
      store_v<W>(sr + j, exp_shifted_v<W>(load_v<W>(sr + j) - shift) * (load_v<W>(a_j + j) + ai));
    if (tail != 0)
      store_part<W>(sr + full, tail,
                    exp_shifted_v<W>(load_part<W>(sr + full, tail, 0.0f) - shift) *
                        (load_part<W>(a_j + full, tail, 0.0f) + ai));
  }
}

// The ISA of the fp32 passes: the best the CPU has, capped by the environment variable
// SIMCLR_EXT_CPU_ISA=avx2 or =baseline (read once). The cap lets an AVX-512 machine measure
// what an AVX2-only CPU runs (benchmarks/NOTES.md); MKL's GEMM is not affected by it.
enum class Isa { kBaseline, kAvx2, kAvx512 };

[[maybe_unused]] Isa elementwise_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kBaseline;
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
      best = Isa::kAvx512;
    else if (__builtin_cpu_supports("x86-64-v3"))
      best = Isa::kAvx2;
#endif
    const char* cap = std::getenv("SIMCLR_EXT_CPU_ISA");
    if (cap != nullptr) {
      const std::string c(cap);
      if (c == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
      if (c == "baseline") best = Isa::kBaseline;
    }
    return best;
  }();
  return isa;
}

// One copy of each pass per ISA; the body is inlined into each and vectorized for its target.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SIMCLR_ISA_VARIANTS(name, params, args)                                            \
  __attribute__((target("arch=x86-64-v4"))) void name##_avx512 params {                     \
    name##_body<16> args;                                                                    \
  }                                                                                          \
  __attribute__((target("arch=x86-64-v3"))) void name##_avx2 params { name##_body<8> args; } \
  void name##_baseline params { name##_body<4> args; }                                       \
  void name params {                                                                         \
    switch (elementwise_isa()) {                                                             \
      case Isa::kAvx512: return name##_avx512 args;                                          \
      case Isa::kAvx2: return name##_avx2 args;                                              \
      default: return name##_baseline args;                                                  \
    }                                                                                        \
  }
#else
#define SIMCLR_ISA_VARIANTS(name, params, args) \
  void name params { name##_body<4> args; }
#endif

SIMCLR_ISA_VARIANTS(exp_shift_sums_f32,
                    (float* s, int64_t rows, int64_t cols, float shift, float* row_acc,
                     float* col_acc),
                    (s, rows, cols, shift, row_acc, col_acc))

SIMCLR_ISA_VARIANTS(pair_coeff_shifted_f32,
                    (float* s, int64_t rows, int64_t cols, float shift, const float* a_i,
                     const float* a_j),
                    (s, rows, cols, shift, a_i, a_j))

// e = exp(S - shift) in place (masked cells hold -inf and give 0); row_acc[i] += sum_j e_ij,
// and col_acc[j] += sum_i e_ij when col_acc is given.
template <typename acc_t>
void exp_shift_sums(at::Tensor& S, acc_t shift, acc_t* row_acc, acc_t* col_acc) {
  S.sub_(shift).exp_();
  const acc_t* e = S.data_ptr<acc_t>();
  const int64_t rows = S.size(0), cols = S.size(1);
  for (int64_t i = 0; i < rows; ++i) {
    const acc_t* er = e + i * cols;
    acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) sum += er[j];
    row_acc[i] += sum;
    if (col_acc != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) col_acc[j] += er[j];
    }
  }
}

template <>
void exp_shift_sums<float>(at::Tensor& S, float shift, float* row_acc, float* col_acc) {
  exp_shift_sums_f32(S.data_ptr<float>(), S.size(0), S.size(1), shift, row_acc, col_acc);
}

// s_pos[i] = u_i . u_pos(i) / tau, in acc_t.
template <typename acc_t>
at::Tensor positive_logits(const at::Tensor& rows, const at::Tensor& cols, int64_t row_offset,
                           double temperature) {
  return positive_dots<acc_t>(rows, cols, row_offset, acc_t(1.0 / temperature));
}

// ----------------------------------------------------------------------------------------------
// Forward
// ----------------------------------------------------------------------------------------------

// Symmetric schedule with the fixed shift c = 1/tau: sum_k = sum_{l != k, pos(k)} exp(s_kl - c).
template <typename acc_t>
at::Tensor row_sums_symmetric(const at::Tensor& u, double temperature) {
  const int64_t R = u.size(0);
  const int64_t npairs = num_tiles(R) * (num_tiles(R) + 1) / 2;
  const int64_t P = num_chunks(npairs);
  at::Tensor sums = at::zeros({P, R}, u.options());
  const acc_t shift = acc_t(1.0 / temperature);
  forward_symmetric(u, 1.0 / temperature, P,
                    [&](int64_t p, at::Tensor& S, TileRange ri, TileRange rj, bool off_diag) {
                      acc_t* acc = sums.data_ptr<acc_t>() + p * R;
                      // Self excluded exactly: the diagonal of a diagonal tile is -inf, exp
                      // gives 0.
                      mask_self_and_positive(S.data_ptr<acc_t>(), ri, rj, R, 0,
                                             -std::numeric_limits<acc_t>::infinity());
                      // The transposed tile s_JI: its row sums are this tile's column sums. A
                      // diagonal tile is its own transpose, counted once.
                      exp_shift_sums<acc_t>(S, shift, acc + ri.begin,
                                            off_diag ? acc + rj.begin : nullptr);
                    });
  return sums.sum(0);
}

// General schedule, the NT-Xent policy's row statistics: the negatives' log-sum-exp of each row
// of a row tile (-inf without negatives). With the fixed shift one exp per logit; otherwise the
// online log-sum-exp (a running max per row, the sum rescaled when it grows).
template <typename acc_t>
struct LseWorker {
  static constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  int64_t R, row_offset;
  bool fixed;
  acc_t shift;
  acc_t* out;
  std::vector<acc_t> run_max, run_sum, tile_max;

  LseWorker(int64_t R_, int64_t row_offset_, bool fixed_, acc_t shift_, acc_t* out_)
      : R(R_), row_offset(row_offset_), fixed(fixed_), shift(shift_), out(out_),
        run_max(kTile), run_sum(kTile), tile_max(kTile) {}

  void begin(TileRange ri) {
    for (int64_t i = 0; i < ri.size; ++i) lse_init(run_max[i], run_sum[i]);
  }

  void tile(at::Tensor& S, TileRange ri, TileRange rj) {
    acc_t* s = S.data_ptr<acc_t>();
    mask_self_and_positive(s, ri, rj, R, row_offset, kNegInf);
    if (fixed) {
      exp_shift_sums<acc_t>(S, shift, run_sum.data(), nullptr);
      return;
    }
    for (int64_t i = 0; i < ri.size; ++i) {
      acc_t* sr = s + i * rj.size;
      acc_t m = kNegInf;
      bool nan = false;
      for (int64_t j = 0; j < rj.size; ++j) {
        nan |= std::isnan(sr[j]);
        m = sr[j] > m ? sr[j] : m;
      }
      // NaN in, NaN out: a NaN max poisons the row's sum below.
      tile_max[i] = nan ? std::numeric_limits<acc_t>::quiet_NaN() : m;
      // An all-self row (only possible with a one-column tile) keeps -inf - 0 = -inf.
      const acc_t sub = m == kNegInf ? acc_t(0) : tile_max[i];
#pragma omp simd
      for (int64_t j = 0; j < rj.size; ++j) sr[j] -= sub;
    }
    S.exp_();
    for (int64_t i = 0; i < ri.size; ++i) {
      const acc_t* er = s + i * rj.size;
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < rj.size; ++j) sum += er[j];
      lse_merge(run_max[i], run_sum[i], tile_max[i], sum);
    }
  }

  void end(TileRange ri) {
    acc_t* o = out + ri.begin;
    for (int64_t i = 0; i < ri.size; ++i)
      o[i] = fixed ? shift + log_acc(run_sum[i]) : lse_value(run_max[i], run_sum[i]);
  }
};

// General schedule: rows [R] against columns [C]; row i is column row_offset + i (excluded, and
// so is its positive). Returns the negatives' lse [R].
template <typename acc_t>
at::Tensor lse_general(const at::Tensor& us, const at::Tensor& cols, int64_t row_offset,
                       double temperature) {
  const int64_t R = us.size(0);
  at::Tensor lse = at::empty({R}, us.options());
  const bool fixed = fixed_shift_ok<acc_t>(temperature);
  const acc_t shift = acc_t(1.0 / temperature);
  acc_t* out = lse.data_ptr<acc_t>();
  forward_general(us, cols, 1.0 / temperature, [&] {
    return LseWorker<acc_t>(R, row_offset, fixed, shift, out);
  });
  return lse;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                int64_t row_offset, double temperature,
                                                bool symmetric) {
  const auto [rows, cols] = rows_cols_acc<acc_t>(u_rows, u_cols, symmetric);
  at::Tensor lse_neg;
  // The symmetric sums share one shift for rows and columns: the fixed shift only.
  if (symmetric && fixed_shift_ok<acc_t>(temperature)) {
    lse_neg = row_sums_symmetric<acc_t>(rows, temperature).log_().add_(1.0 / temperature);
  } else {
    lse_neg = lse_general<acc_t>(rows, cols, row_offset, temperature);
  }
  const at::Tensor s_pos = positive_logits<acc_t>(rows, cols, row_offset, temperature);
  at::Tensor row_loss = at::empty_like(lse_neg), lse = at::empty_like(lse_neg);
  const acc_t* ln = lse_neg.data_ptr<acc_t>();
  const acc_t* sp = s_pos.data_ptr<acc_t>();
  acc_t* lo = row_loss.data_ptr<acc_t>();
  acc_t* ls = lse.data_ptr<acc_t>();
  for (int64_t i = 0; i < lse_neg.size(0); ++i) loss_from_negatives(ln[i], sp[i], lo[i], ls[i]);
  return {row_loss, lse};
}

// ----------------------------------------------------------------------------------------------
// Backward
// ----------------------------------------------------------------------------------------------

// M = w_I P_IJ + w_J P_JI^T on the tile S (logits), in place:
//   M_ij = w_i exp(s_ij - lse_i) + w_j exp(s_ij - lse_j)   (pair_coeff, ntxent_math.h)
// Both exponents are <= 0 (lse_i >= s_ij for j != i), so nothing overflows at any temperature.
template <typename acc_t>
void pair_coeff_tile(at::Tensor& S, at::Tensor& tmp, const at::Tensor& lse_i,
                     const at::Tensor& w_i, const at::Tensor& lse_j, const at::Tensor& w_j) {
  at::sub_out(tmp, S, lse_i.unsqueeze(1));
  tmp.exp_().mul_(w_i.unsqueeze(1));
  S.sub_(lse_j.unsqueeze(0)).exp_().mul_(w_j.unsqueeze(0)).add_(tmp);
}

// Same M with one exp per logit, for the symmetric schedule under the fixed shift c = 1/tau:
//   M_ij = exp(s_ij - c) (a_i + a_j),   a_k = (w_k / w_scale) exp(c - lse_k)
// exp(c - lse_k) <= exp(2/tau) stays finite where fixed_shift_ok holds; dividing the weights by
// w_scale = max |w| keeps a_k finite for any upstream scale (e.g. a loss scaler's 2^16), and
// the caller multiplies G by w_scale back.
template <typename acc_t>
void pair_coeff_tile_shifted(at::Tensor& S, const acc_t* a_i, const acc_t* a_j, acc_t shift) {
  if constexpr (std::is_same_v<acc_t, float>) {
    pair_coeff_shifted_f32(S.data_ptr<float>(), S.size(0), S.size(1), shift, a_i, a_j);
    return;
  }
  S.sub_(shift).exp_();
  acc_t* m = S.data_ptr<acc_t>();
  const int64_t rows = S.size(0), cols = S.size(1);
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* mr = m + i * cols;
    const acc_t ai = a_i[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) mr[j] *= ai + a_j[j];
  }
}

// grad_u_i = 1/tau [G_i - (w_i q_i + w_pos(i) q_pos(i)) u_pos(i)], then the normalization
// backward, written as grad_z in the input dtype, in G's storage. G = sum over the negatives m
// of M_im u_m (the positive masked); q_k = 1 - P_{k,pos(k)} = positive_deficit(loss_k), so the
// positive's coefficient w_i (P_i,pos - 1) + w_pos (P_pos,i - 1) is formed without cancellation.
// Without row_loss (an older caller) loss_k = lse_k - s_pos_k is recomputed here.
template <typename acc_t>
at::Tensor finalize_grad(const at::Tensor& G, const at::Tensor& rows, const at::Tensor& cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, const at::Tensor& row_lse,
                         const at::Tensor& row_loss, int64_t row_offset, double temperature,
                         at::ScalarType out_dtype) {
  const int64_t R = rows.size(0);
  at::Tensor q;
  if (row_loss.defined()) {
    q = row_loss.to(rows.scalar_type(), /*non_blocking=*/false, /*copy=*/true).contiguous();
  } else {
    q = row_lse - positive_logits<acc_t>(rows, cols, row_offset, temperature);
  }
  acc_t* qp = q.data_ptr<acc_t>();
  for (int64_t i = 0; i < R; ++i) qp[i] = positive_deficit(qp[i]);
  const acc_t* wr = row_weight.data_ptr<acc_t>();
  const acc_t* wc = col_weight.data_ptr<acc_t>();
  return finalize_rows<acc_t>(
      G, rows, cols, norm_rows, row_offset, acc_t(1.0 / temperature),
      [&](int64_t i, int64_t pc) { return wr[i] * qp[i] + wc[pc] * qp[(i + R / 2) % R]; },
      out_dtype);
}

// Symmetric schedule: G = M u with M symmetric, each upper tile used for both of its sides.
// Returns G, or an undefined tensor when the per-chunk accumulators would exceed the budget.
template <typename acc_t>
at::Tensor grad_symmetric_ntxent(const at::Tensor& u, const at::Tensor& lse, const at::Tensor& w,
                                 double temperature) {
  const int64_t R = u.size(0), D = u.size(1);
  const int64_t npairs = num_tiles(R) * (num_tiles(R) + 1) / 2;
  const int64_t P = num_chunks(npairs);
  if (P > 1 && P * R * D * static_cast<int64_t>(sizeof(acc_t)) > kAccumulatorBudget) return {};
  const bool shifted = fixed_shift_ok<acc_t>(temperature);
  const acc_t shift = acc_t(1.0 / temperature);
  acc_t w_scale = acc_t(1);
  at::Tensor a;
  if (shifted) {
    w_scale = w.abs().max().item<acc_t>();
    if (!(w_scale > acc_t(0)) || std::isinf(w_scale)) w_scale = acc_t(1);  // 0, inf, NaN
    a = (w / w_scale) * (shift - lse).exp();
  }
  at::Tensor G = grad_symmetric<acc_t>(
      u, 1.0 / temperature, P, [&](at::Tensor& S, at::Tensor& tmp, TileRange ri, TileRange rj) {
        if (shifted) {
          const acc_t* a_ptr = a.data_ptr<acc_t>();
          pair_coeff_tile_shifted<acc_t>(S, a_ptr + ri.begin, a_ptr + rj.begin, shift);
        } else {
          pair_coeff_tile<acc_t>(S, tmp, lse.narrow(0, ri.begin, ri.size),
                                 w.narrow(0, ri.begin, ri.size),
                                 lse.narrow(0, rj.begin, rj.size), w.narrow(0, rj.begin, rj.size));
        }
      });
  return w_scale == acc_t(1) ? G : G.mul_(w_scale);
}

// General schedule: each row tile sweeps all column tiles; G_I = sum_J M_IJ u_J.
template <typename acc_t>
at::Tensor grad_general_ntxent(const at::Tensor& us, const at::Tensor& cols,
                               const at::Tensor& row_lse, const at::Tensor& col_lse,
                               const at::Tensor& row_weight, const at::Tensor& col_weight,
                               int64_t row_offset, double temperature) {
  return grad_general<acc_t>(
      us, cols, row_offset, 1.0 / temperature,
      [&](at::Tensor& S, at::Tensor& tmp, TileRange ri, TileRange rj) {
        pair_coeff_tile<acc_t>(S, tmp, row_lse.narrow(0, ri.begin, ri.size),
                               row_weight.narrow(0, ri.begin, ri.size),
                               col_lse.narrow(0, rj.begin, rj.size),
                               col_weight.narrow(0, rj.begin, rj.size));
      });
}

template <typename acc_t>
at::Tensor backward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_lse,
                         const at::Tensor& col_lse, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, const at::Tensor& row_loss,
                         int64_t row_offset, double temperature, bool symmetric) {
  const auto [rows, cols] = rows_cols_acc<acc_t>(u_rows, u_cols, symmetric);
  at::Tensor G;
  // Symmetric: one lse and one weight per row serve it as a row and as a column.
  if (symmetric)
    G = grad_symmetric_ntxent<acc_t>(rows, row_lse, row_weight, temperature);
  if (!G.defined())
    G = grad_general_ntxent<acc_t>(rows, cols, row_lse, col_lse, row_weight, col_weight,
                                   row_offset, temperature);
  return finalize_grad<acc_t>(G, rows, cols, norm_rows, row_weight, col_weight, row_lse, row_loss,
                              row_offset, temperature, u_rows.scalar_type());
}

}  // namespace

// Memory bank: the general schedule with row_offset = K (the rows sit past the last bank column,
// so mask_self masks nothing), and in the backward a zero column weight with column LSE +inf
// (exp(s - inf) = 0: the columns' own softmax terms vanish exactly).
at::Tensor bank_forward_cpu(const at::Tensor& u_rows, const at::Tensor& bank, double temperature) {
  const int64_t K = bank.size(0);
  if (accumulation_dtype(u_rows.scalar_type()) == at::kDouble) {
    const auto [rows, cols] = rows_cols_acc<double>(u_rows, bank, false);
    return lse_general<double>(rows, cols, K, temperature);
  }
  const auto [rows, cols] = rows_cols_acc<float>(u_rows, bank, false);
  return lse_general<float>(rows, cols, K, temperature);
}

at::Tensor bank_backward_cpu(const at::Tensor& u_rows, const at::Tensor& bank,
                             const at::Tensor& row_lse, const at::Tensor& row_weight,
                             double temperature) {
  const int64_t K = bank.size(0);
  const at::Tensor col_lse = at::full({K}, std::numeric_limits<double>::infinity(),
                                      row_lse.options());
  const at::Tensor col_weight = at::zeros({K}, row_weight.options());
  if (accumulation_dtype(u_rows.scalar_type()) == at::kDouble) {
    const auto [rows, cols] = rows_cols_acc<double>(u_rows, bank, false);
    return grad_general_ntxent<double>(rows, cols, row_lse, col_lse, row_weight, col_weight, K,
                                temperature);
  }
  const auto [rows, cols] = rows_cols_acc<float>(u_rows, bank, false);
  return grad_general_ntxent<float>(rows, cols, row_lse, col_lse, row_weight, col_weight, K,
                             temperature);
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                               int64_t row_offset, double temperature,
                                               bool symmetric) {
  if (accumulation_dtype(u_rows.scalar_type()) == at::kDouble)
    return forward_impl<double>(u_rows, u_cols, row_offset, temperature, symmetric);
  return forward_impl<float>(u_rows, u_cols, row_offset, temperature, symmetric);
}

at::Tensor backward_cpu(const at::Tensor& u_rows, const at::Tensor& u_cols,
                        const at::Tensor& norm_rows, const at::Tensor& row_lse,
                        const at::Tensor& col_lse, const at::Tensor& row_weight,
                        const at::Tensor& col_weight, const at::Tensor& row_loss,
                        int64_t row_offset, double temperature, bool symmetric) {
  if (accumulation_dtype(u_rows.scalar_type()) == at::kDouble)
    return backward_impl<double>(u_rows, u_cols, norm_rows, row_lse, col_lse, row_weight,
                                 col_weight, row_loss, row_offset, temperature, symmetric);
  return backward_impl<float>(u_rows, u_cols, norm_rows, row_lse, col_lse, row_weight,
                              col_weight, row_loss, row_offset, temperature, symmetric);
}

}  // namespace ntxent
}  // namespace simclr_ext
