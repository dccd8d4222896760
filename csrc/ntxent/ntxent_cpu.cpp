// NT-Xent CPU kernels (docs/architecture.md section 2.2): the FlashAttention pattern on the CPU.
// Rows in tiles, the similarity of a row tile and a column tile computed by one small GEMM into a
// per-thread buffer, log-sum-exp accumulated in fp32 (fp64 for fp64 inputs); the backward
// recomputes the tiles. Only [tile, tile] buffers and O(rows * D) vectors are allocated: never a
// [R, C] matrix.
//
// Two tile schedules, both exact:
//  - symmetric (the single-process case, flagged by the caller: `symmetric` in ntxent.h): only
//    the tiles J >= I of the upper triangle are computed; s_IJ = s_JI^T gives the rows of I and
//    the rows of J from one GEMM (forward: row and column sums; backward: M_IJ u_J for I and
//    M_IJ^T u_I for J, M being symmetric);
//  - general (gathered columns; also the symmetric case's forward at a temperature too small for
//    the fixed shift, and its backward when the per-thread accumulators would exceed their
//    budget): each row tile sweeps every column tile; row tiles go to threads as they free up.
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

namespace simclr_ext {
namespace ntxent {

namespace {

// 256 x 256 tiles: a [256, D] x [D, 256] GEMM is large enough for MKL to run near peak on one
// core and the fp32 tile (256 KiB) stays in L2 for the elementwise passes that follow.
constexpr int64_t kTile = 256;
// Upper bound on the per-thread gradient accumulators of the symmetric backward; above it the
// general schedule (no accumulators) is used instead.
constexpr int64_t kAccumulatorBudget = 96ll << 20;

// For unit vectors s <= 1/tau, so c = 1/tau is a safe shift for every row: exp(s - c) <= 1 never
// overflows, and the smallest term exp(-2/tau) stays a normal number as long as 2/tau is below
// ~87 (fp32) / ~708 (fp64). With margin: 80 and 700. Below those temperatures the online
// log-sum-exp (running max per row) is used instead.
template <typename acc_t>
bool fixed_shift_ok(double temperature) {
  const double limit = sizeof(acc_t) == 4 ? 80.0 : 700.0;
  return 2.0 / temperature <= limit;
}

struct TileRange {
  int64_t begin, size;
};

inline TileRange tile_range(int64_t tile, int64_t n) {
  const int64_t b = tile * kTile;
  return {b, std::min(kTile, n - b)};
}

inline int64_t num_tiles(int64_t n) { return (n + kTile - 1) / kTile; }

// The symmetric schedule's work items: the tiles (I, J), J >= I, of the upper triangle of the
// [R, R] similarity matrix, row by row.
inline std::vector<std::pair<int64_t, int64_t>> upper_triangle_tiles(int64_t R) {
  const int64_t nt = num_tiles(R);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(nt * (nt + 1) / 2);
  for (int64_t I = 0; I < nt; ++I)
    for (int64_t J = I; J < nt; ++J) pairs.emplace_back(I, J);
  return pairs;
}

// Writes `value` into the self cells of the [ri.size, rj.size] tile s of rows ri against
// columns rj: row i is column row_offset + i. -inf before the exp excludes self from the sums
// exactly; 0 in the coefficients excludes it from the gradient. A tile off the diagonal band
// has no self cell (the range below is empty).
template <typename acc_t>
inline void mask_self(acc_t* s, TileRange ri, TileRange rj, int64_t row_offset, acc_t value) {
  const int64_t lo = std::max(ri.begin + row_offset, rj.begin);
  const int64_t hi = std::min(ri.begin + row_offset + ri.size, rj.begin + rj.size);
  for (int64_t c = lo; c < hi; ++c)
    s[(c - row_offset - ri.begin) * rj.size + (c - rj.begin)] = value;
}

// mask_self, plus each row's positive column (rows are [view 1; view 2], R of them): the sums
// run over the negatives only, the positive is added back exactly (loss_from_negatives,
// finalize_grad). In the symmetric schedule the cell (i, pos i) of an upper tile stands for
// both rows of the pair, so masking it by its row masks both.
template <typename acc_t>
inline void mask_self_and_positive(acc_t* s, TileRange ri, TileRange rj, int64_t R,
                                   int64_t row_offset, acc_t value) {
  mask_self(s, ri, rj, row_offset, value);
  for (int64_t i = 0; i < ri.size; ++i) {
    const int64_t c = positive_col(ri.begin + i, R, row_offset);
    if (c >= rj.begin && c < rj.begin + rj.size) s[i * rj.size + (c - rj.begin)] = value;
  }
}

// Runs body(chunk, next) on `chunks` threads; next() yields that chunk's items of [0, n), then -1.
// Static (items chunk, chunk + chunks, ...): which accumulator an item adds into is fixed, so
// results are bitwise reproducible for a given thread count. Dynamic (a shared counter): a
// thread the OS preempts delays only the item it holds; used where each item writes its own
// rows, so the result does not depend on the hand-out.
enum class HandOut { kStatic, kDynamic };

template <typename F>
void parallel_items(int64_t n, int64_t chunks, HandOut mode, const F& body) {
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int64_t mine = c;
      auto next = [&]() -> int64_t {
        int64_t q;
        if (mode == HandOut::kDynamic) {
          q = counter.fetch_add(1, std::memory_order_relaxed);
        } else {
          q = mine;
          mine += chunks;
        }
        return q < n ? q : int64_t(-1);
      };
      body(c, next);
    }
  });
}

inline int64_t num_chunks(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
}

// Logits of a row tile against a column tile into S: S = (a b^T) / tau, the 1/tau folded into
// the GEMM's alpha (beta = 0: S's previous content is ignored).
inline void logits_tile(at::Tensor& S, const at::Tensor& a, const at::Tensor& b, double inv_tau) {
  S.addmm_(a, b.t(), /*beta=*/0, /*alpha=*/inv_tau);
}

// A [rows, cols] contiguous view of a flat per-thread buffer.
inline at::Tensor tile_view(at::Tensor& buf, int64_t rows, int64_t cols) {
  return buf.narrow(0, 0, rows * cols).view({rows, cols});
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
  const int64_t R = rows.size(0), D = rows.size(1);
  at::Tensor out = at::empty({R}, rows.options());
  const acc_t* u = rows.data_ptr<acc_t>();
  const acc_t* v = cols.data_ptr<acc_t>();
  acc_t* o = out.data_ptr<acc_t>();
  const acc_t inv_tau = acc_t(1.0 / temperature);
  at::parallel_for(0, R, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const acc_t* a = u + i * D;
      const acc_t* p = v + positive_col(i, R, row_offset) * D;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += a[d] * p[d];
      o[i] = dot * inv_tau;
    }
  });
  return out;
}

// ----------------------------------------------------------------------------------------------
// Forward
// ----------------------------------------------------------------------------------------------

// Symmetric schedule with the fixed shift c = 1/tau: sum_k = sum_{l != k, pos(k)} exp(s_kl - c).
template <typename acc_t>
at::Tensor row_sums_symmetric(const at::Tensor& u, double temperature) {
  const int64_t R = u.size(0);
  const auto pairs = upper_triangle_tiles(R);
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  const int64_t P = num_chunks(npairs);
  at::Tensor sums = at::zeros({P, R}, u.options());
  const acc_t shift = acc_t(1.0 / temperature);

  parallel_items(npairs, P, HandOut::kStatic, [&](int64_t p, const auto& next) {
    {
      at::Tensor buf = at::empty({kTile * kTile}, u.options());
      acc_t* acc = sums.data_ptr<acc_t>() + p * R;
      for (int64_t q = next(); q >= 0; q = next()) {
        const auto [I, J] = pairs[q];
        const TileRange ri = tile_range(I, R), rj = tile_range(J, R);
        at::Tensor S = tile_view(buf, ri.size, rj.size);
        logits_tile(S, u.narrow(0, ri.begin, ri.size), u.narrow(0, rj.begin, rj.size),
                    1.0 / temperature);
        // Self excluded exactly: the diagonal of a diagonal tile is -inf, exp gives 0.
        mask_self_and_positive(S.data_ptr<acc_t>(), ri, rj, R, 0,
                               -std::numeric_limits<acc_t>::infinity());
        // The transposed tile s_JI: its row sums are this tile's column sums. A diagonal tile
        // is its own transpose, counted once.
        exp_shift_sums<acc_t>(S, shift, acc + ri.begin, I != J ? acc + rj.begin : nullptr);
      }
    }
  });
  return sums.sum(0);
}

// General schedule: rows [R] against columns [C]; row i is column row_offset + i (excluded, and
// so is its positive). Returns the negatives' lse [R] (-inf without negatives). With the fixed
// shift one exp per logit; otherwise the online log-sum-exp (a running max per row, the sum
// rescaled when it grows).
template <typename acc_t>
at::Tensor lse_general(const at::Tensor& us, const at::Tensor& cols, int64_t row_offset,
                       double temperature) {
  const double inv_tau = 1.0 / temperature;
  const int64_t R = us.size(0), C = cols.size(0);
  const int64_t nti = num_tiles(R), ntj = num_tiles(C);
  at::Tensor lse = at::empty({R}, us.options());
  const bool fixed = fixed_shift_ok<acc_t>(temperature);
  const acc_t shift = acc_t(1.0 / temperature);
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();

  parallel_items(nti, num_chunks(nti), HandOut::kDynamic, [&](int64_t, const auto& next) {
    at::Tensor buf = at::empty({kTile * kTile}, us.options());
    std::vector<acc_t> run_max(kTile), run_sum(kTile);
    for (int64_t I = next(); I >= 0; I = next()) {
      const TileRange ri = tile_range(I, R);
      for (int64_t i = 0; i < ri.size; ++i) lse_init(run_max[i], run_sum[i]);
      for (int64_t J = 0; J < ntj; ++J) {
        const TileRange rj = tile_range(J, C);
        at::Tensor S = tile_view(buf, ri.size, rj.size);
        logits_tile(S, us.narrow(0, ri.begin, ri.size), cols.narrow(0, rj.begin, rj.size),
                    inv_tau);
        acc_t* s = S.data_ptr<acc_t>();
        mask_self_and_positive(s, ri, rj, R, row_offset, kNegInf);
        if (fixed) {
          exp_shift_sums<acc_t>(S, shift, run_sum.data(), nullptr);
        } else {
          std::vector<acc_t> tile_max(ri.size);
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
      }
      acc_t* out = lse.data_ptr<acc_t>() + ri.begin;
      for (int64_t i = 0; i < ri.size; ++i)
        out[i] = fixed ? shift + log_acc(run_sum[i]) : lse_value(run_max[i], run_sum[i]);
    }
  });
  return lse;
}

// Rows and columns in the accumulation dtype. Under `symmetric` (ntxent.h: the entry checked
// that u_cols is u_rows and row_offset is 0) the columns are the rows: one conversion, one tensor.
template <typename acc_t>
std::pair<at::Tensor, at::Tensor> rows_cols_acc(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                                bool symmetric) {
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor rows = u_rows.to(acc).contiguous();
  at::Tensor cols = symmetric ? rows : u_cols.to(acc).contiguous();
  return {rows, cols};
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
  const int64_t R = rows.size(0), D = rows.size(1);
  at::Tensor q;
  if (row_loss.defined()) {
    q = row_loss.to(rows.scalar_type(), /*non_blocking=*/false, /*copy=*/true).contiguous();
  } else {
    q = row_lse - positive_logits<acc_t>(rows, cols, row_offset, temperature);
  }
  acc_t* qp = q.data_ptr<acc_t>();
  for (int64_t i = 0; i < R; ++i) qp[i] = positive_deficit(qp[i]);
  at::Tensor grad = G;  // written in place: each row reads its G_i before overwriting it
  const acc_t* g = G.data_ptr<acc_t>();
  const acc_t* u = rows.data_ptr<acc_t>();
  const acc_t* v = cols.data_ptr<acc_t>();
  const acc_t* nrm = norm_rows.data_ptr<acc_t>();
  const acc_t* wr = row_weight.data_ptr<acc_t>();
  const acc_t* wc = col_weight.data_ptr<acc_t>();
  acc_t* out = grad.data_ptr<acc_t>();
  const acc_t inv_tau = acc_t(1.0 / temperature);
  at::parallel_for(0, R, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t pc = positive_col(i, R, row_offset);
      const acc_t wpos = wr[i] * qp[i] + wc[pc] * qp[(i + R / 2) % R];
      const acc_t* gi = g + i * D;
      const acc_t* up = v + pc * D;
      const acc_t* ui = u + i * D;
      acc_t* oi = out + i * D;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) {
        oi[d] = (gi[d] - wpos * up[d]) * inv_tau;
        dot += ui[d] * oi[d];
      }
      const acc_t n = nrm[i];
      for (int64_t d = 0; d < D; ++d) oi[d] = normalize_backward(oi[d], ui[d], dot, n);
    }
  });
  return grad.to(out_dtype);
}

// Symmetric schedule: G = M u with M symmetric, each upper tile used for both of its sides.
// Returns G, or an undefined tensor when the per-thread accumulators would exceed the budget.
template <typename acc_t>
at::Tensor grad_symmetric(const at::Tensor& u, const at::Tensor& lse, const at::Tensor& w,
                          double temperature) {
  const int64_t R = u.size(0), D = u.size(1);
  const auto pairs = upper_triangle_tiles(R);
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  const int64_t P = num_chunks(npairs);
  if (P > 1 && P * R * D * static_cast<int64_t>(sizeof(acc_t)) > kAccumulatorBudget) return {};
  std::vector<at::Tensor> accs(P);
  for (auto& t : accs) t = at::zeros({R, D}, u.options());
  const bool shifted = fixed_shift_ok<acc_t>(temperature);
  const acc_t shift = acc_t(1.0 / temperature);
  acc_t w_scale = acc_t(1);
  at::Tensor a;
  if (shifted) {
    w_scale = w.abs().max().item<acc_t>();
    if (!(w_scale > acc_t(0)) || std::isinf(w_scale)) w_scale = acc_t(1);  // 0, inf, NaN
    a = (w / w_scale) * (shift - lse).exp();
  }

  parallel_items(npairs, P, HandOut::kStatic, [&](int64_t p, const auto& next) {
    {
      at::Tensor buf = at::empty({kTile * kTile}, u.options());
      at::Tensor tmp_buf = shifted ? buf : at::empty({kTile * kTile}, u.options());
      at::Tensor G = accs[p];
      for (int64_t q = next(); q >= 0; q = next()) {
        const auto [I, J] = pairs[q];
        const TileRange ri = tile_range(I, R), rj = tile_range(J, R);
        at::Tensor S = tile_view(buf, ri.size, rj.size);
        at::Tensor tmp = tile_view(tmp_buf, ri.size, rj.size);
        const at::Tensor u_i = u.narrow(0, ri.begin, ri.size);
        const at::Tensor u_j = u.narrow(0, rj.begin, rj.size);
        logits_tile(S, u_i, u_j, 1.0 / temperature);
        if (shifted) {
          const acc_t* a_ptr = a.data_ptr<acc_t>();
          pair_coeff_tile_shifted<acc_t>(S, a_ptr + ri.begin, a_ptr + rj.begin, shift);
        } else {
          pair_coeff_tile<acc_t>(S, tmp, lse.narrow(0, ri.begin, ri.size),
                                 w.narrow(0, ri.begin, ri.size),
                                 lse.narrow(0, rj.begin, rj.size), w.narrow(0, rj.begin, rj.size));
        }
        mask_self_and_positive(S.data_ptr<acc_t>(), ri, rj, R, 0, acc_t(0));
        G.narrow(0, ri.begin, ri.size).addmm_(S, u_j);
        if (I != J) G.narrow(0, rj.begin, rj.size).addmm_(S.t(), u_i);
      }
    }
  });
  at::Tensor G = accs[0];
  for (int64_t p = 1; p < P; ++p) {
    G.add_(accs[p]);
    accs[p].reset();  // free each accumulator as soon as it is summed
  }
  return w_scale == acc_t(1) ? G : G.mul_(w_scale);
}

// General schedule: each row tile sweeps all column tiles; G_I = sum_J M_IJ u_J.
template <typename acc_t>
at::Tensor grad_general(const at::Tensor& us, const at::Tensor& cols, const at::Tensor& row_lse,
                        const at::Tensor& col_lse, const at::Tensor& row_weight,
                        const at::Tensor& col_weight, int64_t row_offset, double temperature) {
  const int64_t R = us.size(0), C = cols.size(0), D = us.size(1);
  const int64_t nti = num_tiles(R), ntj = num_tiles(C);
  at::Tensor G = at::zeros({R, D}, us.options());
  parallel_items(nti, num_chunks(nti), HandOut::kDynamic, [&](int64_t, const auto& next) {
    at::Tensor buf = at::empty({kTile * kTile}, us.options());
    at::Tensor tmp_buf = at::empty({kTile * kTile}, us.options());
    for (int64_t I = next(); I >= 0; I = next()) {
      const TileRange ri = tile_range(I, R);
      at::Tensor G_i = G.narrow(0, ri.begin, ri.size);
      for (int64_t J = 0; J < ntj; ++J) {
        const TileRange rj = tile_range(J, C);
        at::Tensor S = tile_view(buf, ri.size, rj.size);
        at::Tensor tmp = tile_view(tmp_buf, ri.size, rj.size);
        const at::Tensor u_j = cols.narrow(0, rj.begin, rj.size);
        logits_tile(S, us.narrow(0, ri.begin, ri.size), u_j, 1.0 / temperature);
        pair_coeff_tile<acc_t>(S, tmp, row_lse.narrow(0, ri.begin, ri.size),
                               row_weight.narrow(0, ri.begin, ri.size),
                               col_lse.narrow(0, rj.begin, rj.size),
                               col_weight.narrow(0, rj.begin, rj.size));
        mask_self_and_positive(S.data_ptr<acc_t>(), ri, rj, R, row_offset, acc_t(0));
        G_i.addmm_(S, u_j);
      }
    }
  });
  return G;
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
    G = grad_symmetric<acc_t>(rows, row_lse, row_weight, temperature);
  if (!G.defined())
    G = grad_general<acc_t>(rows, cols, row_lse, col_lse, row_weight, col_weight, row_offset,
                            temperature);
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
    return grad_general<double>(rows, cols, row_lse, col_lse, row_weight, col_weight, K,
                                temperature);
  }
  const auto [rows, cols] = rows_cols_acc<float>(u_rows, bank, false);
  return grad_general<float>(rows, cols, row_lse, col_lse, row_weight, col_weight, K,
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
