// NT-Xent op entries: check the kernels' invariants once, then dispatch to the CPU or CUDA
// kernel (docs/architecture.md sections 2.1 and 5).
#include "ntxent/ntxent.h"

#include <ATen/Context.h>

#include <limits>

#include "common/checks.h"
#include "ntxent/entry_checks.h"
#include "ntxent/ntxent_math.h"

namespace simclr_ext {
namespace ntxent {

namespace {

void check_rows_cols(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                     double temperature, bool symmetric, const char* op) {
  check_layout(u_rows, u_cols, row_offset, symmetric, op);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
}

}  // namespace

// The CUDA matmul precision is "tf32" (allow_tf32 = True, fp32_precision = "tf32" or
// set_float32_matmul_precision("high")) and no at::NoTF32Guard is active on this thread: the
// rule cuBLAS applies. Read through the new API: allowTF32CuBLAS() raises when legacy and new
// settings were mixed.
bool tf32_enabled() {
  return at::globalContext().float32Precision(at::Float32Backend::CUDA,
                                              at::Float32Op::MATMUL) ==
             at::Float32Precision::TF32 &&
         !at::NoTF32Guard::should_disable_tf32();
}

std::tuple<at::Tensor, at::Tensor> normalize(const at::Tensor& z) {
  SIMCLR_CHECK_DEFINED(z);
  SIMCLR_CHECK_FLOATING(z);
  SIMCLR_CHECK_DIM(z, 2);
  // Device-agnostic ATen: one reduction and one scale, in the accumulation dtype.
  const at::Tensor z_acc = z.to(accumulation_dtype(z.scalar_type()));
  at::Tensor norm = at::linalg_vector_norm(z_acc, 2, {1});
  at::Tensor u = (z_acc / norm.clamp_min(kNormEps).unsqueeze(1)).to(z.scalar_type());
  return {u.contiguous(), norm};
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                           int64_t row_offset, double temperature, bool symmetric,
                                           std::optional<bool> tf32) {
  check_rows_cols(u_rows, u_cols, row_offset, temperature, symmetric, "nt_xent forward");
  const at::Tensor rows = u_rows.contiguous();
  const at::Tensor cols = symmetric ? rows : u_cols.contiguous();
#ifdef WITH_CUDA
  if (rows.is_cuda())
    return forward_cuda(rows, cols, row_offset, temperature, tf32.value_or(tf32_enabled()));
#endif
  return forward_cpu(rows, cols, row_offset, temperature, symmetric);
}

at::Tensor backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                    const at::Tensor& norm_rows, const at::Tensor& row_lse,
                    const at::Tensor& col_lse, const at::Tensor& row_weight,
                    const at::Tensor& col_weight, int64_t row_offset, double temperature,
                    bool symmetric, std::optional<bool> tf32,
                    const std::optional<at::Tensor>& row_loss) {
  const char* op = "nt_xent backward";
  check_rows_cols(u_rows, u_cols, row_offset, temperature, symmetric, op);
  const int64_t R = u_rows.size(0), C = u_cols.size(0);
  check_vector(norm_rows, R, u_rows, "norm_rows", op);
  check_vector(row_lse, R, u_rows, "row_lse", op);
  check_vector(col_lse, C, u_rows, "col_lse", op);
  check_vector(row_weight, R, u_rows, "row_weight", op);
  check_vector(col_weight, C, u_rows, "col_weight", op);
  TORCH_CHECK(!symmetric || (col_lse.is_same(row_lse) && col_weight.is_same(row_weight)), op,
              ": symmetric=True means the rows are their own columns: pass col_lse = row_lse and "
              "col_weight = row_weight");
  if (row_loss.has_value() && row_loss->defined())
    check_vector(*row_loss, R, u_rows, "row_loss", op);
  const auto acc = accumulation_dtype(u_rows.scalar_type());
  auto prep = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  const at::Tensor loss = row_loss.has_value() && row_loss->defined() ? prep(*row_loss)
                                                                        : at::Tensor();
  const at::Tensor rows = u_rows.contiguous();
  const at::Tensor cols = symmetric ? rows : u_cols.contiguous();
  const at::Tensor lse = prep(row_lse), weight = prep(row_weight);
  const at::Tensor c_lse = symmetric ? lse : prep(col_lse);
  const at::Tensor c_weight = symmetric ? weight : prep(col_weight);
#ifdef WITH_CUDA
  if (rows.is_cuda())
    return backward_cuda(rows, cols, prep(norm_rows), lse, c_lse, weight, c_weight, loss,
                         row_offset, temperature, tf32.value_or(tf32_enabled()));
#endif
  return backward_cpu(rows, cols, prep(norm_rows), lse, c_lse, weight, c_weight, loss,
                      row_offset, temperature, symmetric);
}

namespace {

void check_bank(const at::Tensor& u_rows, const at::Tensor& bank, double temperature,
                const char* op) {
  SIMCLR_CHECK_DEFINED(u_rows);
  SIMCLR_CHECK_DEFINED(bank);
  check_backend_available(u_rows, op);
  SIMCLR_CHECK_FLOATING(u_rows);
  SIMCLR_CHECK_DIM(u_rows, 2);
  SIMCLR_CHECK_DIM(bank, 2);
  SIMCLR_CHECK_SAME_DEVICE(u_rows, bank);
  SIMCLR_CHECK_SAME_DTYPE(u_rows, bank);
  TORCH_CHECK(u_rows.size(0) > 0 && u_rows.size(1) > 0, op,
              ": u_rows must be a non-empty [R, D] tensor, got shape ", u_rows.sizes());
  TORCH_CHECK(bank.size(0) > 0 && bank.size(1) == u_rows.size(1), op,
              ": bank must be [K >= 1, D = ", u_rows.size(1), "], got shape ", bank.sizes());
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
}

}  // namespace

// The memory bank reuses the general schedule: with row_offset = K (the rows placed past the
// last column) no column is a row's self or positive, so nothing is masked and no positive
// term is added; the row_loss the kernels also produce is meaningless there and dropped.
at::Tensor bank_forward(const at::Tensor& u_rows, const at::Tensor& bank, double temperature,
                        std::optional<bool> tf32) {
  const char* op = "nt_xent bank forward";
  check_bank(u_rows, bank, temperature, op);
  const at::Tensor rows = u_rows.contiguous(), cols = bank.contiguous();
#ifdef WITH_CUDA
  if (rows.is_cuda())
    return std::get<1>(forward_cuda(rows, cols, cols.size(0), temperature,
                                    tf32.value_or(tf32_enabled())));
#endif
  return bank_forward_cpu(rows, cols, temperature);
}

at::Tensor bank_backward(const at::Tensor& u_rows, const at::Tensor& bank,
                         const at::Tensor& row_lse, const at::Tensor& row_weight,
                         double temperature, std::optional<bool> tf32) {
  const char* op = "nt_xent bank backward";
  check_bank(u_rows, bank, temperature, op);
  const int64_t R = u_rows.size(0), K = bank.size(0);
  check_vector(row_lse, R, u_rows, "row_lse", op);
  check_vector(row_weight, R, u_rows, "row_weight", op);
  const auto acc = accumulation_dtype(u_rows.scalar_type());
  const at::Tensor lse = row_lse.to(acc).contiguous(), w = row_weight.to(acc).contiguous();
#ifdef WITH_CUDA
  if (u_rows.is_cuda()) {
    // The CUDA backward always ends in the normalization backward; a zero norm selects its
    // linear branch, grad / eps, which is scaled back here. Half rows go in as fp32 so that
    // grad / eps stays in range.
    const at::Tensor rows = u_rows.to(acc).contiguous(), cols = bank.to(acc).contiguous();
    const at::Tensor col_lse = at::full({K}, std::numeric_limits<double>::infinity(),
                                        lse.options());
    const at::Tensor g = backward_cuda(rows, cols, at::zeros({R}, lse.options()), lse, col_lse,
                                       w, at::zeros({K}, w.options()), at::Tensor(), K,
                                       temperature, tf32.value_or(tf32_enabled()));
    return g.mul_(kNormEps * temperature);
  }
#endif
  return bank_backward_cpu(u_rows.contiguous(), bank.contiguous(), lse, w, temperature);
}

}  // namespace ntxent
}  // namespace simclr_ext
