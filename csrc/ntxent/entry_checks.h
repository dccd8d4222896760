// Checks shared by the NT-Xent and pair-loss entries (docs/architecture.md sections 2.1, 2.5
// and 5): the rows / columns layout of ntxent.h and its per-row vectors, checked once per call
// before any kernel runs.
#pragma once
#include <ATen/ATen.h>

#include "common/checks.h"

namespace simclr_ext {
namespace ntxent {

// u_rows [R, D] (R = 2N > 0), u_cols [C, D] on one device and dtype, the rows at columns
// [row_offset, row_offset + R); under `symmetric` the columns are the rows themselves.
inline void check_layout(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                         bool symmetric, const char* op) {
  SIMCLR_CHECK_DEFINED(u_rows);
  SIMCLR_CHECK_DEFINED(u_cols);
  check_backend_available(u_rows, op);
  SIMCLR_CHECK_FLOATING(u_rows);
  SIMCLR_CHECK_DIM(u_rows, 2);
  SIMCLR_CHECK_DIM(u_cols, 2);
  SIMCLR_CHECK_SAME_DEVICE(u_rows, u_cols);
  SIMCLR_CHECK_SAME_DTYPE(u_rows, u_cols);
  const int64_t R = u_rows.size(0), C = u_cols.size(0);
  TORCH_CHECK(R > 0 && R % 2 == 0, op, ": u_rows must hold 2N > 0 rows ([view 1; view 2]), got ",
              R);
  TORCH_CHECK(u_rows.size(1) > 0, op, ": the embedding dimension D must be > 0, got shape ",
              u_rows.sizes());
  TORCH_CHECK(u_cols.size(1) == u_rows.size(1), op, ": u_cols must have D = ", u_rows.size(1),
              " columns like u_rows, got shape ", u_cols.sizes());
  TORCH_CHECK(row_offset >= 0 && row_offset + R <= C, op, ": row_offset ", row_offset,
              " with ", R, " rows does not fit in ", C, " columns");
  TORCH_CHECK(!symmetric || (u_cols.is_same(u_rows) && row_offset == 0), op,
              ": symmetric=True means the rows are their own columns: pass u_cols = u_rows and "
              "row_offset = 0 (got row_offset ", row_offset, ")");
}

// A per-row (or per-column) floating vector of n elements on `like`'s device.
inline void check_vector(const at::Tensor& t, int64_t n, const at::Tensor& like, const char* name,
                         const char* op) {
  TORCH_CHECK(t.defined() && t.dim() == 1 && t.size(0) == n, op, ": ", name,
              " must be a 1-d tensor of ", n, " elements, got ",
              t.defined() ? t.sizes() : at::IntArrayRef{});
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
              ", got ", t.device());
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating, got ", t.scalar_type());
}

}  // namespace ntxent
}  // namespace simclr_ext
