// The CPU tile loop of the contrastive losses (docs/architecture.md sections 2.2 and 2.5),
// written once: tile ranges, self/positive masking, the parallel hand-out, the per-thread
// [kTile, kTile] buffers, the logits GEMM of a row tile against a column tile, and the backward's
// G_I += M_IJ u_J. A loss is a policy of it: in the forward, what a tile adds to each row's
// statistics; in the backward, each logit's coefficient M_kl (and, in finalize_rows, the
// positive's). NT-Xent (ntxent_cpu.cpp) and the pair losses (pair_loss_cpu.cpp) use it.
//
// Two schedules, both exact:
//  - symmetric (one process: the rows are their own columns): the tiles J >= I of the upper
//    triangle, each GEMM serving the rows of I and of J; static hand-out over P chunks, each
//    chunk adding into its own accumulator, so results are bitwise reproducible for a given
//    thread count;
//  - general (gathered columns, and any case the symmetric one does not cover): each row tile
//    sweeps every column tile, row tiles handed to threads as they free up; each row tile is
//    written by one thread only, so the result does not depend on the hand-out.
// Only [kTile, kTile] buffers and O(rows * D) vectors are allocated: never a [R, C] matrix.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "ntxent/ntxent_math.h"

namespace simclr_ext {
namespace ntxent {
namespace tile_loop {

// 256 x 256 tiles: a [256, D] x [D, 256] GEMM is large enough for MKL to run near peak on one
// core and the fp32 tile (256 KiB) stays in L2 for the elementwise passes that follow.
constexpr int64_t kTile = 256;

// Upper bound on the per-chunk gradient accumulators of the symmetric backward; above it the
// general schedule (no accumulators) is used instead.
constexpr int64_t kAccumulatorBudget = 96ll << 20;

// Whether the symmetric backward's P accumulators [R, D] of `elem` bytes fit the budget.
inline bool symmetric_grad_fits(int64_t P, int64_t R, int64_t D, int64_t elem) {
  return P == 1 || P * R * D * elem <= kAccumulatorBudget;
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
// columns rj: row i is column row_offset + i. A tile off the diagonal band has no self cell
// (the range below is empty).
template <typename acc_t>
inline void mask_self(acc_t* s, TileRange ri, TileRange rj, int64_t row_offset, acc_t value) {
  const int64_t lo = std::max(ri.begin + row_offset, rj.begin);
  const int64_t hi = std::min(ri.begin + row_offset + ri.size, rj.begin + rj.size);
  for (int64_t c = lo; c < hi; ++c)
    s[(c - row_offset - ri.begin) * rj.size + (c - rj.begin)] = value;
}

// mask_self, plus each row's positive column (rows are [view 1; view 2], R of them). In the
// symmetric schedule the cell (i, pos i) of an upper tile stands for both rows of the pair, so
// masking it by its row masks both.
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

// Logits of a row tile against a column tile into S: S = alpha (a b^T) (1/tau for NT-Xent, 1
// for the cosines of the pair losses; beta = 0: S's previous content is ignored).
inline void logits_tile(at::Tensor& S, const at::Tensor& a, const at::Tensor& b, double alpha) {
  S.addmm_(a, b.t(), /*beta=*/0, /*alpha=*/alpha);
}

// A [rows, cols] contiguous view of a flat per-thread buffer.
inline at::Tensor tile_view(at::Tensor& buf, int64_t rows, int64_t cols) {
  return buf.narrow(0, 0, rows * cols).view({rows, cols});
}

// ---- forward ---------------------------------------------------------------------------------

// Symmetric forward: for every upper tile (I, J), S = alpha u_I u_J^T, then
// tile(p, S, ri, rj, I != J) with p the chunk (its accumulator). P = num_chunks(#tiles).
template <typename Tile>
void forward_symmetric(const at::Tensor& u, double alpha, int64_t P, const Tile& tile) {
  const int64_t R = u.size(0);
  const auto pairs = upper_triangle_tiles(R);
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  parallel_items(npairs, P, HandOut::kStatic, [&](int64_t p, const auto& next) {
    at::Tensor buf = at::empty({kTile * kTile}, u.options());
    for (int64_t q = next(); q >= 0; q = next()) {
      const auto [I, J] = pairs[q];
      const TileRange ri = tile_range(I, R), rj = tile_range(J, R);
      at::Tensor S = tile_view(buf, ri.size, rj.size);
      logits_tile(S, u.narrow(0, ri.begin, ri.size), u.narrow(0, rj.begin, rj.size), alpha);
      tile(p, S, ri, rj, I != J);
    }
  });
}

// General forward: each row tile I sweeps every column tile J. make_worker() gives each thread
// its row statistics (a policy object with begin(ri), tile(S, ri, rj), end(ri)); S holds
// alpha u_I cols_J^T, unmasked (the policy masks what it must).
template <typename MakeWorker>
void forward_general(const at::Tensor& rows, const at::Tensor& cols, double alpha,
                     const MakeWorker& make_worker) {
  const int64_t R = rows.size(0), C = cols.size(0);
  const int64_t nti = num_tiles(R), ntj = num_tiles(C);
  parallel_items(nti, num_chunks(nti), HandOut::kDynamic, [&](int64_t, const auto& next) {
    at::Tensor buf = at::empty({kTile * kTile}, rows.options());
    auto worker = make_worker();
    for (int64_t I = next(); I >= 0; I = next()) {
      const TileRange ri = tile_range(I, R);
      worker.begin(ri);
      for (int64_t J = 0; J < ntj; ++J) {
        const TileRange rj = tile_range(J, C);
        at::Tensor S = tile_view(buf, ri.size, rj.size);
        logits_tile(S, rows.narrow(0, ri.begin, ri.size), cols.narrow(0, rj.begin, rj.size),
                    alpha);
        worker.tile(S, ri, rj);
      }
      worker.end(ri);
    }
  });
}

// ---- backward --------------------------------------------------------------------------------
// G = sum over the negatives m of M_km u_m, M_km = (row k's coefficient of logit (k, m)) +
// (row m's coefficient of the same logit): s and c are symmetric, so one tile gives both. The
// policy's coeff(S, tmp, ri, rj) turns the logits S into M in place (tmp: a scratch tile); the
// loop then zeroes the self and positive cells (the positive's term is finalize_rows') and adds
// M u into G.

// Symmetric backward: per chunk a [R, D] accumulator (the caller checks their budget), summed
// in chunk order at the end.
template <typename acc_t, typename Coeff>
at::Tensor grad_symmetric(const at::Tensor& u, double alpha, int64_t P, const Coeff& coeff) {
  const int64_t R = u.size(0), D = u.size(1);
  const auto pairs = upper_triangle_tiles(R);
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  std::vector<at::Tensor> accs(P);
  for (auto& t : accs) t = at::zeros({R, D}, u.options());
  parallel_items(npairs, P, HandOut::kStatic, [&](int64_t p, const auto& next) {
    at::Tensor buf = at::empty({kTile * kTile}, u.options());
    at::Tensor tmp_buf = at::empty({kTile * kTile}, u.options());
    at::Tensor G = accs[p];
    for (int64_t q = next(); q >= 0; q = next()) {
      const auto [I, J] = pairs[q];
      const TileRange ri = tile_range(I, R), rj = tile_range(J, R);
      at::Tensor S = tile_view(buf, ri.size, rj.size);
      at::Tensor tmp = tile_view(tmp_buf, ri.size, rj.size);
      const at::Tensor u_i = u.narrow(0, ri.begin, ri.size);
      const at::Tensor u_j = u.narrow(0, rj.begin, rj.size);
      logits_tile(S, u_i, u_j, alpha);
      coeff(S, tmp, ri, rj);
      mask_self_and_positive(S.data_ptr<acc_t>(), ri, rj, R, 0, acc_t(0));
      G.narrow(0, ri.begin, ri.size).addmm_(S, u_j);
      if (I != J) G.narrow(0, rj.begin, rj.size).addmm_(S.t(), u_i);
    }
  });
  at::Tensor G = accs[0];
  for (int64_t p = 1; p < P; ++p) {
    G.add_(accs[p]);
    accs[p].reset();  // free each accumulator as soon as it is summed
  }
  return G;
}

// General backward: each row tile sweeps all column tiles; G_I = sum_J M_IJ u_J.
template <typename acc_t, typename Coeff>
at::Tensor grad_general(const at::Tensor& rows, const at::Tensor& cols, int64_t row_offset,
                        double alpha, const Coeff& coeff) {
  const int64_t R = rows.size(0), C = cols.size(0), D = rows.size(1);
  const int64_t nti = num_tiles(R), ntj = num_tiles(C);
  at::Tensor G = at::zeros({R, D}, rows.options());
  parallel_items(nti, num_chunks(nti), HandOut::kDynamic, [&](int64_t, const auto& next) {
    at::Tensor buf = at::empty({kTile * kTile}, rows.options());
    at::Tensor tmp_buf = at::empty({kTile * kTile}, rows.options());
    for (int64_t I = next(); I >= 0; I = next()) {
      const TileRange ri = tile_range(I, R);
      at::Tensor G_i = G.narrow(0, ri.begin, ri.size);
      for (int64_t J = 0; J < ntj; ++J) {
        const TileRange rj = tile_range(J, C);
        at::Tensor S = tile_view(buf, ri.size, rj.size);
        at::Tensor tmp = tile_view(tmp_buf, ri.size, rj.size);
        const at::Tensor u_j = cols.narrow(0, rj.begin, rj.size);
        logits_tile(S, rows.narrow(0, ri.begin, ri.size), u_j, alpha);
        coeff(S, tmp, ri, rj);
        mask_self_and_positive(S.data_ptr<acc_t>(), ri, rj, R, row_offset, acc_t(0));
        G_i.addmm_(S, u_j);
      }
    }
  });
  return G;
}

// grad_u_i = (G_i - b_i u_pos(i)) * scale, then the normalization backward, written as grad_z
// in out_dtype (in G's storage). b_i = pos_coeff(i, pos_col): minus the positive's coefficient
// w_i f_i + w_pos f_pos, from the two rows' states (the policy's).
template <typename acc_t, typename PosCoeff>
at::Tensor finalize_rows(const at::Tensor& G, const at::Tensor& rows, const at::Tensor& cols,
                         const at::Tensor& norm_rows, int64_t row_offset, acc_t scale,
                         const PosCoeff& pos_coeff, at::ScalarType out_dtype) {
  const int64_t R = rows.size(0), D = rows.size(1);
  at::Tensor grad = G;  // written in place: each row reads its G_i before overwriting it
  const acc_t* g = G.data_ptr<acc_t>();
  const acc_t* u = rows.data_ptr<acc_t>();
  const acc_t* v = cols.data_ptr<acc_t>();
  const acc_t* nrm = norm_rows.data_ptr<acc_t>();
  acc_t* out = grad.data_ptr<acc_t>();
  at::parallel_for(0, R, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t pc = positive_col(i, R, row_offset);
      const acc_t wpos = pos_coeff(i, pc);
      const acc_t* gi = g + i * D;
      const acc_t* up = v + pc * D;
      const acc_t* ui = u + i * D;
      acc_t* oi = out + i * D;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) {
        oi[d] = (gi[d] - wpos * up[d]) * scale;
        dot += ui[d] * oi[d];
      }
      const acc_t n = nrm[i];
      for (int64_t d = 0; d < D; ++d) oi[d] = normalize_backward(oi[d], ui[d], dot, n);
    }
  });
  return grad.to(out_dtype);
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

// c_k,pos(k) * scale for every row (an O(R D) dot product per row), in acc_t.
template <typename acc_t>
at::Tensor positive_dots(const at::Tensor& rows, const at::Tensor& cols, int64_t row_offset,
                         acc_t scale) {
  const int64_t R = rows.size(0), D = rows.size(1);
  at::Tensor out = at::empty({R}, rows.options());
  const acc_t* u = rows.data_ptr<acc_t>();
  const acc_t* v = cols.data_ptr<acc_t>();
  acc_t* o = out.data_ptr<acc_t>();
  at::parallel_for(0, R, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const acc_t* a = u + i * D;
      const acc_t* p = v + positive_col(i, R, row_offset) * D;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += a[d] * p[d];
      o[i] = dot * scale;
    }
  });
  return out;
}

}  // namespace tile_loop
}  // namespace ntxent
}  // namespace simclr_ext
