// Fused NT-Xent on CUDA (docs/architecture.md, 2.3): forward (row LSE + loss) and backward
// (exact gradient of this rank's rows) that never hold the 2N x 2N similarity matrix.
//
// Paths, chosen per dtype at launch:
//   bf16 / fp16, and fp32 when TF32 was decided (ntxent.cpp: tf32_enabled, taken once for a
//     forward and its backward): tensor cores (mma.sync m16n8k16, or m16n8k8 .tf32), fp32
//     accumulation, 64-row x 128-byte tile chunks streamed through shared memory with cp.async,
//     double buffered.
//   fp32 without TF32 (exact) and fp64: a tiled SIMT path with FMA micro-tiles.
// Both apply the per-element formulas of ntxent_math.h (lse_merge/lse_push, pair_coeff,
// normalize_backward, positive_col): the code the CPU kernel runs.
//
// Each kernel is written once, as a template over a loss policy (loss_policy.cuh): NT-Xent is
// one policy, NT-Logistic and margin triplet (pair_loss.h; pair_forward_cuda and
// pair_backward_cuda at the end of this file) are the others. The policy decides what a
// similarity tile adds to a row's statistics (forward) and each logit's coefficient (backward);
// loading, the products, splits and the normalization backward are shared.
//
// Backward, small D (up to 2 x 128 of D on tensor cores, one SIMT tile): a fused kernel writes
// grad_u [R, D] in the accumulation dtype (one block per (row tile, D range), no atomics), then a
// per-row kernel applies the normalization backward (it needs u . grad_u over the whole row).
// Large D: two stages per wave of rows, so that every similarity tile is computed once: a kernel
// writes the coefficient tiles [rows, C] to a workspace bounded like grad_u, then one GEMM
// (at::mm, fp32 output) gives grad_u for the wave; the same normalization kernel follows.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "ntxent/ntxent.h"
#include "ntxent/loss_policy.cuh"
#include "ntxent/ntxent_math.h"
#include "ntxent/pair_loss.h"

namespace simclr_ext {
namespace ntxent {
namespace {

// ============================================================================================
// Tensor-core path
// ============================================================================================
// A block owns 64 rows (4 warps x 16 rows, the m16 of one mma) and sweeps all columns in tiles
// of 64. Every tile row is streamed in chunks of 128 bytes (64 bf16/fp16 or 32 fp32 elements of
// D); shared rows are padded to 144 bytes so the 8 row addresses of an ldmatrix fall in 8
// distinct 4-bank groups (144 B = 36 words, 36 r mod 32 = 4 r).
constexpr int kTcThreads = 128;
constexpr int kTcRows = 64;
constexpr int kTcCols = 64;
constexpr int kChunkBytes = 128;
constexpr int kRowStride = kChunkBytes + 16;
constexpr int kTileBytes = 64 * kRowStride;  // 9216 B; 2 operands x 2 buffers = 36 KiB static
// Register budgets, as resident blocks per SM (64K registers / (128 threads x blocks)): the
// backward's 64 gradient + 32 similarity accumulators fit 168 registers (3 blocks, 12 warps);
// without a bound ptxas takes ~190 and only 2 blocks fit. Forward: 128 registers (4 blocks)
// for 16-bit inputs; the tf32 variant spilled 8 B under that cap, so it gets the 3-block budget.
constexpr int kBackwardMinBlocks = 3;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination without reading src.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most one (the most recently committed) group is still in flight.
__device__ __forceinline__ void cp_async_wait_1() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

__device__ __forceinline__ uint32_t to_tf32(uint32_t bits) {
  uint32_t out;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(out) : "f"(__uint_as_float(bits)));
  return out;
}

// Per input type: the mma instruction, how an ldmatrix'd register becomes an operand, how two
// fp32 coefficients become one A-operand register in the backward's second product, and how one
// coefficient is stored in the two-stage backward's workspace (to_bits).
template <typename T>
struct TcTraits;

// bf16 and fp16 differ only in the mma type name and the float -> 16-bit conversion.
template <typename T>
struct TcTraits16 {
  static_assert(std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>);
  static constexpr bool kBf16 = std::is_same_v<T, at::BFloat16>;
  static constexpr int kChunk = 64;      // elements per 128-byte chunk
  static constexpr int kGradChunks = 2;  // a backward block covers 2 chunks = 128 of D
  static constexpr int kForwardMinBlocks = 4;
  using Bits = uint16_t;
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (kBf16) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }
  __device__ static uint32_t operand(uint32_t x) { return x; }
  __device__ static uint32_t pack(float lo, float hi) {  // the low 16 bits hold lo
    if constexpr (kBf16) {
      __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
      return *reinterpret_cast<uint32_t*>(&v);
    } else {
      __half2 v = __floats2half2_rn(lo, hi);
      return *reinterpret_cast<uint32_t*>(&v);
    }
  }
  __device__ static Bits to_bits(float x) {
    if constexpr (kBf16)
      return __bfloat16_as_ushort(__float2bfloat16_rn(x));
    else
      return __half_as_ushort(__float2half_rn(x));
  }
};

template <>
struct TcTraits<at::BFloat16> : TcTraits16<at::BFloat16> {};
template <>
struct TcTraits<at::Half> : TcTraits16<at::Half> {};

// fp32 through TF32 (only when the user allowed TF32 matmuls). One k-step of m16n8k8 covers 8
// floats = 32 bytes, the same bytes as a k16 step of 16-bit types, so ldmatrix addressing is
// shared: an 8x8 b16 ldmatrix of fp32 data hands thread (g, t) the float at (row g, column t),
// exactly the tf32 fragment layout.
template <>
struct TcTraits<float> {
  static constexpr int kChunk = 32;
  static constexpr int kGradChunks = 4;  // 4 x 32 = 128 of D, the same 64 accumulators
  static constexpr int kForwardMinBlocks = 3;
  using Bits = uint32_t;
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // Round to nearest instead of letting the tensor core truncate the low mantissa bits.
  __device__ static uint32_t operand(uint32_t x) { return to_tf32(x); }
  // The two-stage workspace keeps fp32 coefficients (cuBLAS applies the TF32 rounding).
  __device__ static Bits to_bits(float x) { return __float_as_uint(x); }
};

// Coefficient scaling. The backward's coefficients w_i P_im + w_m P_mi become 16-bit operands,
// and with "mean" weights (1/2N) and P ~ 1/2N they are ~1/(2N)^2: below fp16's smallest normal
// (2^-14) from 2N ~ 128 on. They are therefore multiplied by kCoefScale / max|w| in fp32 before
// rounding and the products by max|w| / kCoefScale after: |coefficient| <= 2 max|w| (each of the
// two terms and the positive's -(w_i + w_m) is at most max|w| in size and they do not add up
// beyond 2), so the scaled values stay <= 2^15 < 65504 (fp16's largest), while P ~ 1/2N keeps
// P * 2^14 normal up to 2N = 2^28. Powers of two: the scaling itself rounds nothing.
constexpr float kCoefScale = 16384.f;  // 2^14

// max|w| as the scaling unit; a NaN or zero max gives 1 (NaN weights then reach the
// coefficients directly: NaN out).
__device__ __forceinline__ float weight_unit(const float* __restrict__ weight_absmax) {
  const float wmax = *weight_absmax;
  return wmax > 0.f ? wmax : 1.f;
}

// Copies rows [row0, row0 + 64) x elements [k0, k0 + kChunk) of src [nrows, D] into a shared
// tile. Everything outside the matrix is zero-filled: padded rows, columns and D never
// contribute to a dot product, and never inject stale NaNs into a 0 * x product.
template <typename T>
__device__ __forceinline__ void load_chunk(unsigned char* tile, const T* __restrict__ src,
                                           int nrows, int D, int row0, int k0, bool vec_ok) {
  using Bits = typename TcTraits<T>::Bits;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kSegsPerRow = kChunkBytes / 16;
#pragma unroll
  for (int i = 0; i < 64 * kSegsPerRow / kTcThreads; ++i) {
    const int seg = threadIdx.x + i * kTcThreads;
    const int r = seg / kSegsPerRow, part = seg % kSegsPerRow;
    const int grow = row0 + r;
    const int k = k0 + part * kVec;
    unsigned char* dst = tile + r * kRowStride + part * 16;
    const bool inside = grow < nrows && k < D;
    if (vec_ok) {  // D % kVec == 0 and 16-byte aligned base: a segment is all in or all out
      const T* p = inside ? src + static_cast<int64_t>(grow) * D + k : src;
      cp_async16(smem_u32(dst), p, inside ? 16 : 0);
    } else {  // element by element, packed into one 16-byte shared store
      const Bits* row =
          reinterpret_cast<const Bits*>(src) + (inside ? static_cast<int64_t>(grow) * D : 0);
      uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const uint32_t bits = (inside && k + e < D) ? static_cast<uint32_t>(row[k + e]) : 0u;
        if constexpr (sizeof(Bits) == 2)
          w[e >> 1] |= bits << (16 * (e & 1));  // low half = lower index, like the global layout
        else
          w[e] = bits;
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// acc[nt] (n8 tile nt of the warp's 16 x 64 block) += A[16 rows of this warp, chunk] x
// B[64 columns, chunk]^T. Fragment layout (PTX mma m16n8k16 / m16n8k8): thread (g = lane / 4,
// t = lane % 4) holds acc[nt][0..1] at row g, columns 8 nt + 2t + {0, 1}, acc[nt][2..3] at row
// g + 8, same columns.
template <typename T>
__device__ __forceinline__ void warp_gemm1(float (&acc)[8][4], const unsigned char* a_tile,
                                           const unsigned char* b_tile, int warp, int lane) {
  using Tr = TcTraits<T>;
  // A (x4): matrices (rows 0-7, k lo), (rows 8-15, k lo), (rows 0-7, k hi), (rows 8-15, k hi)
  const uint32_t a_base =
      smem_u32(a_tile + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRowStride +
               (lane >> 4) * 16);
  // B (x4): matrices (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi)
  const uint32_t b_base =
      smem_u32(b_tile + ((lane & 7) + (lane >> 4) * 8) * kRowStride + ((lane >> 3) & 1) * 16);
#pragma unroll
  for (int ks = 0; ks < kChunkBytes / 32; ++ks) {
    uint32_t a[4];
    ldsm_x4(a, a_base + ks * 32);
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = Tr::operand(a[i]);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      uint32_t b[4];
      ldsm_x4(b, b_base + p * 16 * kRowStride + ks * 32);
#pragma unroll
      for (int i = 0; i < 4; ++i) b[i] = Tr::operand(b[i]);
      Tr::mma(acc[2 * p], a, b[0], b[1]);
      Tr::mma(acc[2 * p + 1], a, b[2], b[3]);
    }
  }
}

// Backward's second product, per type: grad[dn] (16 rows x 8 of D) += coef[16 x 64 columns] x
// V[64 columns x chunk of D]. The coefficients never leave registers: the accumulator layout of
// the first product is reused as the A operand (the FlashAttention-2 trick).
template <typename T>
struct Gemm2 {  // 16-bit types: m16n8k16, V^T fragments by ldmatrix.trans
  static constexpr int kDTiles = 8;  // 64 of D per chunk
  static constexpr int kCoefRegs = 16;
  // coef[2 nt + h] packs the two columns of n8 tile nt at row g + 8 h.
  __device__ static void make_coef(uint32_t (&coef)[kCoefRegs], const float (&c)[8][4]) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      coef[2 * nt] = TcTraits<T>::pack(c[nt][0], c[nt][1]);
      coef[2 * nt + 1] = TcTraits<T>::pack(c[nt][2], c[nt][3]);
    }
  }
  __device__ static void run(float (&grad)[kDTiles][4], const uint32_t (&coef)[kCoefRegs],
                             const unsigned char* v_tile, int lane) {
    // V^T (x4 .trans): matrices (m 0-7, d 0-7), (m 8-15, d 0-7), (m 0-7, d 8-15),
    // (m 8-15, d 8-15) of V stored [m][d] give b0, b1 of d tile 2q and b0, b1 of d tile 2q + 1.
    const uint32_t v_base =
        smem_u32(v_tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * kRowStride + (lane >> 4) * 16);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {  // k = columns m in steps of 16: n8 tiles 2 kk, 2 kk + 1
      const uint32_t a[4] = {coef[4 * kk], coef[4 * kk + 1], coef[4 * kk + 2],
                             coef[4 * kk + 3]};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint32_t b[4];
        ldsm_x4_trans(b, v_base + kk * 16 * kRowStride + q * 32);
        TcTraits<T>::mma(grad[2 * q], a, b[0], b[1]);
        TcTraits<T>::mma(grad[2 * q + 1], a, b[2], b[3]);
      }
    }
  }
};

template <>
struct Gemm2<float> {  // tf32 m16n8k8: the k order inside a step is permuted to fit the layout
  static constexpr int kDTiles = 4;  // 32 of D per chunk
  static constexpr int kCoefRegs = 32;
  __device__ static void make_coef(uint32_t (&coef)[kCoefRegs], const float (&c)[8][4]) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) coef[4 * nt + i] = to_tf32(__float_as_uint(c[nt][i]));
  }
  __device__ static void run(float (&grad)[kDTiles][4], const uint32_t (&coef)[kCoefRegs],
                             const unsigned char* v_tile, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const float* v = reinterpret_cast<const float*>(v_tile);
    constexpr int kStride = kRowStride / 4;  // 36 words: rows 2t, 2t+1 land in distinct banks
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {  // n8 tile kk of the coefficients = 8 columns m
      // Thread (g, t) holds columns m = 8 kk + 2t (regs 0, 2) and 8 kk + 2t + 1 (regs 1, 3).
      // Used as k = t and k = t + 4 of the tf32 A fragment; B reads the same two rows of V.
      const uint32_t a[4] = {coef[4 * kk], coef[4 * kk + 2], coef[4 * kk + 1],
                             coef[4 * kk + 3]};
      const float* v0 = v + (8 * kk + 2 * t) * kStride + g;
#pragma unroll
      for (int dn = 0; dn < kDTiles; ++dn) {
        const uint32_t b0 = to_tf32(__float_as_uint(v0[8 * dn]));
        const uint32_t b1 = to_tf32(__float_as_uint(v0[kStride + 8 * dn]));
        TcTraits<float>::mma(grad[dn], a, b0, b1);
      }
    }
  }
};

// Forward: one block per (64-row tile, column split); it sweeps the split's columns
// [c_begin, c_end) and hands each finished similarity tile to the loss policy (loss_policy.cuh:
// the statistics the tile adds to each row), which writes each row's partial statistics for the
// split at the end; a finish kernel merges the splits. Splitting the columns only adds blocks
// when the row tiles alone cannot fill the GPU.
template <typename T, typename Fwd>
__global__ void __launch_bounds__(kTcThreads, TcTraits<T>::kForwardMinBlocks)
    tc_forward_kernel(const T* __restrict__ u_rows, const T* __restrict__ u_cols, int R, int C,
                      int D, int row_offset, bool vec_ok, int split_cols, Fwd pol) {
  using Tr = TcTraits<T>;
  __shared__ __align__(128) unsigned char a_tiles[2][kTileBytes];
  __shared__ __align__(128) unsigned char b_tiles[2][kTileBytes];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int row0 = blockIdx.x * kTcRows;
  const int c_begin = blockIdx.y * split_cols;  // < C: the host launches ceil(C / split_cols)
  const int c_end = min(C, c_begin + split_cols);
  const int nk = (D + Tr::kChunk - 1) / Tr::kChunk;
  const int ntiles = (c_end - c_begin + kTcCols - 1) / kTcCols;
  const int nsteps = ntiles * nk;

  // This thread's two rows (g and g + 8 of its warp), their self and positive columns.
  int row[2], self_col[2], pos_col[2];
  typename Fwd::Row st[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = row0 + warp * 16 + g + 8 * h;
    self_col[h] = row_offset + row[h];
    pos_col[h] = positive_col_i32(row[h], R, row_offset);
    pol.init(st[h], row[h], R);
  }

  // Step s loads chunk s % nk of the row tile and of column tile s / nk into buffer s & 1.
  auto issue = [&](int s) {
    const int j = s / nk, kc = s - j * nk;
    load_chunk<T>(a_tiles[s & 1], u_rows, R, D, row0, kc * Tr::kChunk, vec_ok);
    load_chunk<T>(b_tiles[s & 1], u_cols, C, D, c_begin + j * kTcCols, kc * Tr::kChunk,
                  vec_ok);
  };

  issue(0);
  cp_async_commit();
  int step = 0;
  for (int j = 0; j < ntiles; ++j) {
    float acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

    for (int kc = 0; kc < nk; ++kc, ++step) {
      if (step + 1 < nsteps) issue(step + 1);  // buffer (step+1)&1 was released by the last sync
      cp_async_commit();                       // (an empty group at the end keeps wait_1 exact)
      cp_async_wait_1();
      __syncthreads();
      warp_gemm1<T>(acc, a_tiles[step & 1], b_tiles[step & 1], warp, lane);
      __syncthreads();
    }

    // Thread (g, t4) holds acc[nt][2h + e] = u_row[h] . u_col(col0 + 8 nt + 2 t4 + e).
    const int col0 = c_begin + j * kTcCols;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      pol.tile(st[h], acc, h, col0, t4, c_end, row[h], self_col[h], pos_col[h], R);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) pol.write(st[h], t4, row[h], R);
}

// Merges the column splits of each row: lse = LSE over splits, loss = lse - positive logit.
// A split in which a row has no valid column left (-inf, 0) is skipped by lse_merge.
__global__ void __launch_bounds__(256)
    lse_finish_kernel(const float* __restrict__ part_max, const float* __restrict__ part_sum,
                      const float* __restrict__ pos_logit, int R, int splits,
                      float* __restrict__ row_loss, float* __restrict__ row_lse) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= R) return;
  float run_max, run_sum;
  lse_init(run_max, run_sum);
  for (int sp = 0; sp < splits; ++sp)
    lse_merge(run_max, run_sum, part_max[static_cast<int64_t>(sp) * R + r],
              part_sum[static_cast<int64_t>(sp) * R + r]);
  // No positive column (the memory bank, pos_logit null): the lse over the columns is the result.
  float loss, lse = lse_value(run_max, run_sum);
  if (pos_logit != nullptr)
    loss_from_negatives(lse, pos_logit[r], loss, lse);
  else
    loss = lse;
  row_lse[r] = lse;
  row_loss[r] = loss;
}

// Pair losses, tensor-core forward: merges the column splits of each row in order (integer
// counts, so exactly) and writes its loss and state (loss_policy.cuh: pair_write_row).
template <typename Rule>
__global__ void __launch_bounds__(256)
    pair_finish_kernel(Rule rule, const float* __restrict__ cos_pos,
                       const float* __restrict__ part_sum, const int* __restrict__ part_count,
                       const int* __restrict__ part_active, int R, int splits,
                       float* __restrict__ row_loss, float* __restrict__ row_state) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= R) return;
  float sum = 0.f;
  int count = 0, active = 0;
  for (int sp = 0; sp < splits; ++sp) {
    const int64_t at = static_cast<int64_t>(sp) * R + r;
    sum += part_sum[at];
    count += part_count[at];
    active += part_active[at];
  }
  pair_write_row(rule, r, cos_pos[r], sum, count, active, row_loss, row_state);
}

// Pair losses: c_pos of each row, u_i . u_pos(i) in the accumulation dtype, one warp per row
// (the semi-hard sets and the positive term need it before the column sweep). The lanes' order
// of the sum does not depend on which of the two rows of a pair asks, and products commute, so
// both rows of a pair get the same bits.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    pair_cos_pos_kernel(const scalar_t* __restrict__ u_rows, const scalar_t* __restrict__ u_cols,
                        int R, int D, int row_offset, acc_t* __restrict__ cos_pos) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (256 / 32) + (threadIdx.x >> 5);
  if (r >= R) return;
  const scalar_t* a = u_rows + static_cast<int64_t>(r) * D;
  const scalar_t* b = u_cols + static_cast<int64_t>(positive_col_i32(r, R, row_offset)) * D;
  acc_t dot = acc_t(0);
  for (int d = lane; d < D; d += 32) dot += static_cast<acc_t>(a[d]) * static_cast<acc_t>(b[d]);
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  if (lane == 0) cos_pos[r] = dot;
}

// Fused backward (D up to kTcFusedMaxDRanges x 128), first stage:
//   grad_part[split z][rows of this tile, D range of blockIdx.y] =
//   grad_scale sum_{m in split z} coef_im u_m,  coef_im the policy's (NT-Xent:
//   w_i P_im + w_m P_mi, grad_scale 1/tau),
// with coefficient 0 at m = i and at m = pos(i) exactly (the positive's term is added by
// normalize_backward_kernel). The coefficients go through a 16-bit (or tf32) operand, so they
// are scaled by kCoefScale / max|w| first and the product is scaled back in fp32 (see
// kCoefScale; every policy's |coefficient| is at most 2 max|w|). Each block recomputes the
// similarity tile over all of D for its own D range, which is why large D goes to the two-stage
// backward instead.
template <typename T, typename Coef>
__global__ void __launch_bounds__(kTcThreads, kBackwardMinBlocks)
    tc_backward_kernel(const T* __restrict__ u_rows, const T* __restrict__ u_cols, int R, int C,
                       int D, int row_offset, bool vec_ok,
                       const float* __restrict__ weight_absmax, int split_cols,
                       float* __restrict__ grad_part, Coef pol) {
  using Tr = TcTraits<T>;
  using G2 = Gemm2<T>;
  using Side = typename Coef::Side;
  constexpr int kNV = Tr::kGradChunks;
  __shared__ __align__(128) unsigned char a_tiles[2][kTileBytes];
  __shared__ __align__(128) unsigned char b_tiles[2][kTileBytes];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int row0 = blockIdx.x * kTcRows;
  const int d_block = blockIdx.y * kNV * Tr::kChunk;
  const int nk = (D + Tr::kChunk - 1) / Tr::kChunk;
  const int nv = min(kNV, (D - d_block + Tr::kChunk - 1) / Tr::kChunk);
  const int per_tile = nk + nv;
  const int c_begin = blockIdx.z * split_cols;  // column split, as in the forward
  const int c_end = min(C, c_begin + split_cols);
  const int ntiles = (c_end - c_begin + kTcCols - 1) / kTcCols;
  const int nsteps = ntiles * per_tile;

  const float unit = weight_unit(weight_absmax);
  const float coef_scale = kCoefScale / unit;

  int row[2], self_col[2], pos_col[2];
  Side side_r[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = row0 + warp * 16 + g + 8 * h;
    self_col[h] = row_offset + row[h];
    pos_col[h] = positive_col_i32(row[h], R, row_offset);
    side_r[h] = row[h] < R ? pol.row(row[h]) : Side{0.f, 0.f};
  }

  float grad[kNV][G2::kDTiles][4];
#pragma unroll
  for (int v = 0; v < kNV; ++v)
#pragma unroll
    for (int dn = 0; dn < G2::kDTiles; ++dn)
#pragma unroll
      for (int i = 0; i < 4; ++i) grad[v][dn][i] = 0.f;

  // Per column tile: nk steps load (row chunk, column chunk) for the similarity product, then
  // nv steps load only column chunks of this block's D range (V) for the second product.
  auto issue = [&](int s) {
    const int j = s / per_tile, q = s - j * per_tile;
    if (q < nk) {
      load_chunk<T>(a_tiles[s & 1], u_rows, R, D, row0, q * Tr::kChunk, vec_ok);
      load_chunk<T>(b_tiles[s & 1], u_cols, C, D, c_begin + j * kTcCols, q * Tr::kChunk,
                    vec_ok);
    } else {
      load_chunk<T>(b_tiles[s & 1], u_cols, C, D, c_begin + j * kTcCols,
                    d_block + (q - nk) * Tr::kChunk, vec_ok);
    }
  };
  auto begin_step = [&](int s) {
    if (s + 1 < nsteps) issue(s + 1);
    cp_async_commit();
    cp_async_wait_1();
    __syncthreads();
  };

  issue(0);
  cp_async_commit();
  int step = 0;
  for (int j = 0; j < ntiles; ++j) {
    uint32_t coef[G2::kCoefRegs];
    {
      float acc[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
      for (int kc = 0; kc < nk; ++kc, ++step) {
        begin_step(step);
        warp_gemm1<T>(acc, a_tiles[step & 1], b_tiles[step & 1], warp, lane);
        __syncthreads();
      }
      const int col0 = c_begin + j * kTcCols;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = col0 + nt * 8 + 2 * t4 + e;
          const bool col_ok = c < c_end;
          const Side side_m = col_ok ? pol.col(c) : Side{0.f, 0.f};
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float coeff = 0.f;
            if (col_ok && row[h] < R && c != self_col[h] && c != pos_col[h])
              coeff = pol.coeff(acc[nt][2 * h + e], side_r[h], side_m);
            acc[nt][2 * h + e] = coeff * coef_scale;
          }
        }
      G2::make_coef(coef, acc);
    }
#pragma unroll
    for (int v = 0; v < kNV; ++v) {
      if (v < nv) {  // uniform over the block
        begin_step(step);
        G2::run(grad[v], coef, b_tiles[step & 1], lane);
        __syncthreads();
        ++step;
      }
    }
  }

  const float out_scale = unit / kCoefScale * pol.grad_scale();
  float* grad_u = grad_part + static_cast<int64_t>(blockIdx.z) * R * D;  // this split's slice
#pragma unroll
  for (int v = 0; v < kNV; ++v)
#pragma unroll
    for (int dn = 0; dn < G2::kDTiles; ++dn)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int d = d_block + v * Tr::kChunk + dn * 8 + 2 * t4 + e;
          if (row[h] < R && d < D)
            grad_u[static_cast<int64_t>(row[h]) * D + d] = grad[v][dn][2 * h + e] * out_scale;
        }
}

// Two-stage backward (large D), first stage: the coefficient tile of rows
// row_begin + 64 blockIdx.y + [0, 64) and columns 64 blockIdx.x + [0, 64), from one similarity
// pass over all of D, stored into coef [row_end - row_begin, C] (row-major, row i - row_begin):
// as T scaled by kCoefScale / max|w| for 16-bit T, as fp32 for fp32 (TF32) inputs. The second
// stage is one GEMM per wave of rows, grad_u = coef x u_cols (at::mm, fp32 output). Same policy
// and masks as the fused kernel; rows outside [row_begin, row_end) are never written.
template <typename T, typename Coef>
__global__ void __launch_bounds__(kTcThreads, TcTraits<T>::kForwardMinBlocks)
    tc_coef_kernel(const T* __restrict__ u_rows, const T* __restrict__ u_cols, int R, int C,
                   int D, int row_offset, int row_begin, int row_end, bool vec_ok,
                   const float* __restrict__ weight_absmax,
                   typename TcTraits<T>::Bits* __restrict__ coef, Coef pol) {
  using Tr = TcTraits<T>;
  using Side = typename Coef::Side;
  __shared__ __align__(128) unsigned char a_tiles[2][kTileBytes];
  __shared__ __align__(128) unsigned char b_tiles[2][kTileBytes];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int row0 = row_begin + blockIdx.y * kTcRows;
  const int col0 = blockIdx.x * kTcCols;
  const int nk = (D + Tr::kChunk - 1) / Tr::kChunk;
  // 16-bit workspace: scaled like the fused kernel's operands; fp32 workspace: as is.
  const float coef_scale =
      sizeof(typename Tr::Bits) == 2 ? kCoefScale / weight_unit(weight_absmax) : 1.f;

  int row[2], self_col[2], pos_col[2];
  Side side_r[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = row0 + warp * 16 + g + 8 * h;
    self_col[h] = row_offset + row[h];
    pos_col[h] = positive_col_i32(row[h], R, row_offset);
    side_r[h] = row[h] < row_end ? pol.row(row[h]) : Side{0.f, 0.f};
  }

  float acc[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
  // Step kc loads chunk kc of the row tile and of the column tile into buffer kc & 1.
  auto issue = [&](int kc) {
    load_chunk<T>(a_tiles[kc & 1], u_rows, R, D, row0, kc * Tr::kChunk, vec_ok);
    load_chunk<T>(b_tiles[kc & 1], u_cols, C, D, col0, kc * Tr::kChunk, vec_ok);
  };
  issue(0);
  cp_async_commit();
  for (int kc = 0; kc < nk; ++kc) {
    if (kc + 1 < nk) issue(kc + 1);  // buffer (kc+1)&1 was released by the last sync
    cp_async_commit();               // (an empty group at the end keeps wait_1 exact)
    cp_async_wait_1();
    __syncthreads();
    warp_gemm1<T>(acc, a_tiles[kc & 1], b_tiles[kc & 1], warp, lane);
    __syncthreads();
  }

  // Thread (g, t4) of warp w holds acc[nt][2h + e] = S(row[h], col0 + 8 nt + 2 t4 + e).
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = col0 + nt * 8 + 2 * t4 + e;
      if (c >= C) continue;
      const Side side_m = pol.col(c);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (row[h] >= row_end) continue;
        float coeff = 0.f;
        if (c != self_col[h] && c != pos_col[h])
          coeff = pol.coeff(acc[nt][2 * h + e], side_r[h], side_m);
        coef[static_cast<int64_t>(row[h] - row_begin) * C + c] = Tr::to_bits(coeff * coef_scale);
      }
    }
}

// ============================================================================================
// SIMT path: exact fp32 (TF32 not allowed) and fp64
// ============================================================================================
// 16 x 16 threads; thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j of a TILE x TILE
// block (TILE = 64 for fp32, 32 for fp64 to stay within 48 KiB of static shared memory).
// Operands are staged k-major ([k][row], padded by 1) so the inner loop reads one broadcast
// word per row group and 16 consecutive words per column group.
constexpr int kSimtThreads = 256;
constexpr int kSimtK = 16;

template <int TILE, typename scalar_t, typename acc_t>
__device__ __forceinline__ void simt_load_rows(acc_t (*dst)[TILE + 1],
                                               const scalar_t* __restrict__ src, int nrows,
                                               int D, int row0, int k0) {
  for (int idx = threadIdx.x; idx < TILE * kSimtK; idx += kSimtThreads) {
    const int r = idx / kSimtK, k = idx % kSimtK;
    const int gr = row0 + r, gk = k0 + k;
    dst[k][r] = (gr < nrows && gk < D) ? static_cast<acc_t>(src[static_cast<int64_t>(gr) * D + gk])
                                       : acc_t(0);
  }
}

// V chunk for the backward: dst[m][d] = src[col0 + m][d0 + d], m < 16, d < TILE.
template <int TILE, typename scalar_t, typename acc_t>
__device__ __forceinline__ void simt_load_v(acc_t (*dst)[TILE + 1],
                                            const scalar_t* __restrict__ src, int nrows, int D,
                                            int m0, int d0) {
  for (int idx = threadIdx.x; idx < TILE * kSimtK; idx += kSimtThreads) {
    const int m = idx / TILE, d = idx % TILE;
    const int gm = m0 + m, gd = d0 + d;
    dst[m][d] = (gm < nrows && gd < D) ? static_cast<acc_t>(src[static_cast<int64_t>(gm) * D + gd])
                                       : acc_t(0);
  }
}

// acc[i][j] = sum_k u_rows[row0 + ty + 16 i, k] u_cols[col0 + tx + 16 j, k] over all of D.
template <int TILE, typename scalar_t, typename acc_t>
__device__ __forceinline__ void simt_tile_dot(acc_t (&acc)[TILE / 16][TILE / 16],
                                              acc_t (*a_s)[TILE + 1], acc_t (*b_s)[TILE + 1],
                                              const scalar_t* __restrict__ u_rows,
                                              const scalar_t* __restrict__ u_cols, int R, int C,
                                              int D, int row0, int col0) {
  constexpr int TM = TILE / 16;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TM; ++j) acc[i][j] = acc_t(0);
  for (int k0 = 0; k0 < D; k0 += kSimtK) {
    simt_load_rows<TILE>(a_s, u_rows, R, D, row0, k0);
    simt_load_rows<TILE>(b_s, u_cols, C, D, col0, k0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSimtK; ++k) {
      acc_t a[TM], b[TM];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = a_s[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < TM; ++j) b[j] = b_s[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TM; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
}

// Forward: one block per row tile, sweeping every column tile; each logit goes to the loss
// policy (loss_policy.cuh), then the 16 partial states of a row are merged and the row finished.
template <typename scalar_t, typename acc_t, int TILE, typename Fwd>
__global__ void __launch_bounds__(kSimtThreads, 1)
    simt_forward_kernel(const scalar_t* __restrict__ u_rows, const scalar_t* __restrict__ u_cols,
                        int R, int C, int D, int row_offset, Fwd pol) {
  constexpr int TM = TILE / 16;
  __shared__ acc_t a_s[kSimtK][TILE + 1];
  __shared__ acc_t b_s[kSimtK][TILE + 1];
  __shared__ acc_t s_pos[TILE];  // NT-Xent's positive logits (unused, so absent, for the others)
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int row0 = blockIdx.x * TILE;

  int self_col[TM], pos_col[TM];
  typename Fwd::Row st[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = row0 + ty + 16 * i;
    self_col[i] = row_offset + r;
    pos_col[i] = positive_col_i32(r, R, row_offset);
    pol.init(st[i], r, R);
  }

  for (int col0 = 0; col0 < C; col0 += TILE) {
    acc_t acc[TM][TM];
    simt_tile_dot<TILE>(acc, a_s, b_s, u_rows, u_cols, R, C, D, row0, col0);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TM; ++j) {
        const int c = col0 + tx + 16 * j;
        if (c >= C) continue;
        pol.logit(st[i], acc[i][j], c, self_col[i], pos_col[i], &s_pos[ty + 16 * i]);
      }
  }
  // Merge the 16 partial states of a row (lanes tx = 0..15 of one half-warp).
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) pol.merge(st[i], off);
  __syncthreads();  // s_pos writes (after the last tile's loop barrier) visible to tx == 0
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = row0 + ty + 16 * i;
      if (r < R) pol.finish(st[i], r, R, C, row_offset, &s_pos[ty + 16 * i]);
    }
  }
}

// Fused SIMT backward: grad_u [rows of this tile, D tile of blockIdx.y] =
// grad_scale sum_m coef_im u_m with the policy's coefficients, staged through shared memory.
template <typename scalar_t, typename acc_t, int TILE, typename Coef>
__global__ void __launch_bounds__(kSimtThreads, 1)
    simt_backward_kernel(const scalar_t* __restrict__ u_rows,
                         const scalar_t* __restrict__ u_cols, int R, int C, int D,
                         int row_offset, acc_t* __restrict__ grad_u, Coef pol) {
  using Side = typename Coef::Side;
  constexpr int TM = TILE / 16;
  __shared__ acc_t a_s[kSimtK][TILE + 1];
  __shared__ acc_t b_s[kSimtK][TILE + 1];
  __shared__ acc_t coef_s[TILE][TILE + 1];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int row0 = blockIdx.x * TILE;
  const int d0 = blockIdx.y * TILE;

  int row[TM], self_col[TM], pos_col[TM];
  Side side_r[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    row[i] = row0 + ty + 16 * i;
    self_col[i] = row_offset + row[i];
    pos_col[i] = positive_col_i32(row[i], R, row_offset);
    side_r[i] = row[i] < R ? pol.row(row[i]) : Side{acc_t(0), acc_t(0)};
  }
  acc_t grad[TM][TM];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TM; ++j) grad[i][j] = acc_t(0);

  for (int col0 = 0; col0 < C; col0 += TILE) {
    acc_t acc[TM][TM];
    simt_tile_dot<TILE>(acc, a_s, b_s, u_rows, u_cols, R, C, D, row0, col0);
    // coef_s was last read before the barrier that ended the previous tile's second product.
#pragma unroll
    for (int j = 0; j < TM; ++j) {
      const int c = col0 + tx + 16 * j;
      const bool col_ok = c < C;
      const Side side_m = col_ok ? pol.col(c) : Side{acc_t(0), acc_t(0)};
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        acc_t coeff = acc_t(0);
        if (col_ok && row[i] < R && c != self_col[i] && c != pos_col[i])
          coeff = pol.coeff(acc[i][j], side_r[i], side_m);
        coef_s[ty + 16 * i][tx + 16 * j] = coeff;
      }
    }
    for (int m0 = 0; m0 < TILE; m0 += kSimtK) {
      simt_load_v<TILE>(b_s, u_cols, C, D, col0 + m0, d0);
      __syncthreads();  // also publishes coef_s for m0 == 0
#pragma unroll
      for (int k = 0; k < kSimtK; ++k) {
        acc_t cf[TM], v[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) cf[i] = coef_s[ty + 16 * i][m0 + k];
#pragma unroll
        for (int j = 0; j < TM; ++j) v[j] = b_s[k][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TM; ++j) grad[i][j] = fma(cf[i], v[j], grad[i][j]);
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TM; ++j) {
      const int d = d0 + tx + 16 * j;
      if (row[i] < R && d < D) grad_u[static_cast<int64_t>(row[i]) * D + d] =
            grad[i][j] * pol.grad_scale();
    }
}

// Two-stage backward (large D) on the SIMT path, first stage: the coefficient tile of rows
// row_begin + TILE blockIdx.y + [0, TILE) and columns TILE blockIdx.x + [0, TILE) from one
// similarity pass over all of D, stored unscaled in the accumulation dtype into
// coef [row_end - row_begin, C]; the second stage is one exact GEMM per wave (at::mm, TF32 off).
template <typename scalar_t, typename acc_t, int TILE, typename Coef>
__global__ void __launch_bounds__(kSimtThreads, 1)
    simt_coef_kernel(const scalar_t* __restrict__ u_rows, const scalar_t* __restrict__ u_cols,
                     int R, int C, int D, int row_offset, int row_begin, int row_end,
                     acc_t* __restrict__ coef, Coef pol) {
  using Side = typename Coef::Side;
  constexpr int TM = TILE / 16;
  __shared__ acc_t a_s[kSimtK][TILE + 1];
  __shared__ acc_t b_s[kSimtK][TILE + 1];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int row0 = row_begin + blockIdx.y * TILE;
  const int col0 = blockIdx.x * TILE;
  acc_t acc[TM][TM];
  simt_tile_dot<TILE>(acc, a_s, b_s, u_rows, u_cols, R, C, D, row0, col0);  // all threads
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = row0 + ty + 16 * i;
    if (r >= row_end) continue;
    const int self_col = row_offset + r;
    const int pos_col = positive_col_i32(r, R, row_offset);
    const Side side_r = pol.row(r);
#pragma unroll
    for (int j = 0; j < TM; ++j) {
      const int c = col0 + tx + 16 * j;  // 16 consecutive columns per half-warp: coalesced
      if (c >= C) continue;
      acc_t coeff = acc_t(0);
      if (c != self_col && c != pos_col)
        coeff = pol.coeff(acc[i][j], side_r, pol.col(c));
      coef[static_cast<int64_t>(r - row_begin) * C + c] = coeff;
    }
  }
}

// ============================================================================================
// Normalization backward: one warp per row, grad_z = (grad_u - u (u . grad_u)) / ||z||, with
// grad_u the sum of the backward's column-split slices times a scale: grad_scale, and
// max|w| / kCoefScale when weight_absmax is given (the two-stage backward's 16-bit coefficients
// were scaled by kCoefScale / max|w|). The fused kernels pass 1 and no weight_absmax.
// ============================================================================================
constexpr int kNormThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kNormThreads)
    normalize_backward_kernel(const scalar_t* __restrict__ u, const acc_t* __restrict__ grad_part,
                              int splits, const acc_t* __restrict__ norm, int R, int D,
                              const float* __restrict__ weight_absmax, acc_t grad_scale,
                              const scalar_t* __restrict__ u_cols, int row_offset,
                              const acc_t* __restrict__ pos_coef,
                              scalar_t* __restrict__ grad_z) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (kNormThreads / 32) + (threadIdx.x >> 5);
  if (r >= R) return;
  const scalar_t* u_row = u + static_cast<int64_t>(r) * D;
  const acc_t* g_row = grad_part + static_cast<int64_t>(r) * D;
  const int64_t split_stride = static_cast<int64_t>(R) * D;
  const acc_t scale =
      weight_absmax != nullptr
          ? grad_scale * static_cast<acc_t>(weight_unit(weight_absmax) / kCoefScale)
          : grad_scale;
  // The positive's term -(w_i q_i + w_pos q_pos) / tau u_pos, kept out of the tiles (masked
  // there) and formed from the losses on the host side, without cancellation (ntxent_math.h:
  // positive_deficit). pos_coef is null for the memory bank, which has no positive column.
  const acc_t pc = pos_coef != nullptr ? pos_coef[r] : acc_t(0);
  const scalar_t* up_row =
      pos_coef != nullptr
          ? u_cols + static_cast<int64_t>(positive_col_i32(r, R, row_offset)) * D
          : u;
  // grad_u = sum of the column splits' slices, in a fixed order (bitwise reproducible)
  auto grad_at = [&](int d) {
    acc_t gsum = g_row[d];
    for (int sp = 1; sp < splits; ++sp) gsum += g_row[sp * split_stride + d];
    const acc_t g = gsum * scale;  // scale 1 (the fused kernels) changes no bit
    return pos_coef != nullptr ? g - pc * static_cast<acc_t>(up_row[d]) : g;
  };
  acc_t dot = acc_t(0);
  for (int d = lane; d < D; d += 32) dot += static_cast<acc_t>(u_row[d]) * grad_at(d);
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  const acc_t n = norm[r];
  scalar_t* out = grad_z + static_cast<int64_t>(r) * D;
  for (int d = lane; d < D; d += 32)
    out[d] = static_cast<scalar_t>(
        normalize_backward(grad_at(d), static_cast<acc_t>(u_row[d]), dot, n));
}

// ============================================================================================
// Host side
// ============================================================================================
// cp.async needs 16-byte aligned sources: the base pointers and every row start.
bool vec_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 &&
         (t.size(1) * t.element_size()) % 16 == 0;
}

// Row and column indices are int in the kernels (global offsets are int64); 2^30 also keeps
// r + R/2 of a padded row tile (positive_col_i32) far from overflow.
constexpr int64_t kMaxColumns = int64_t(1) << 30;

void check_sizes(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset) {
  TORCH_CHECK(u_cols.size(0) <= kMaxColumns && u_cols.size(1) <= INT_MAX &&
                  row_offset <= INT_MAX,
              "nt_xent (CUDA): at most ", kMaxColumns, " columns are supported, got ",
              u_cols.size(0));
}

// CUDA allows at most 65535 blocks in grid y and z. No launch here puts D (or N) there any more
// (the D ranges of the fused backward are at most kTcFusedMaxDRanges, larger D goes to the
// two-stage backward, whose row waves are capped at 65535 tiles): this check guards that.
void check_grid(const dim3& grid, int64_t D, const char* kernel) {
  TORCH_CHECK(grid.y <= 65535 && grid.z <= 65535, "nt_xent (CUDA): ", kernel,
              " would need a grid of (", grid.x, ", ", grid.y, ", ", grid.z,
              ") blocks for D = ", D, "; CUDA allows at most 65535 in y and z");
}

// Resident blocks of `kernel` with `threads` threads on the current device (occupancy x SMs).
// Cached per (device, kernel): neither changes while the process runs, and the occupancy query
// would otherwise run on every call.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int64_t> cache;
  const int device = c10::cuda::current_device();
  const auto key = std::make_pair(device, reinterpret_cast<const void*>(kernel));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  const int64_t slots = static_cast<int64_t>(std::max(per_sm, 1)) *
                        at::cuda::getDeviceProperties(device)->multiProcessorCount;
  cache.emplace(key, slots);
  return slots;
}

// Column splits for a tensor-core launch with `blocks` blocks per split: enough splits to give
// every resident block slot of the GPU one block (more would start a partly empty second
// wave), never more than the column tiles. 2N = 4096: 64 row tiles -> 8 splits on an H100.
template <typename Kernel>
int column_splits(Kernel kernel, int64_t blocks, int col_tiles) {
  const int64_t slots = resident_blocks(kernel, kTcThreads);
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(1, slots / blocks), col_tiles));
}

// Columns per split, a multiple of the column tile; updates `splits` so none is empty.
int split_columns(int C, int& splits) {
  const int col_tiles = (C + kTcCols - 1) / kTcCols;
  const int split_cols = (col_tiles + splits - 1) / splits * kTcCols;
  splits = (C + split_cols - 1) / split_cols;
  return split_cols;
}

// Column splits of a tensor-core forward with policy Fwd; sets the columns per split.
template <typename T, typename Fwd>
int tc_forward_splits(int R, int C, int& split_cols) {
  const int row_tiles = (R + kTcRows - 1) / kTcRows;
  int splits =
      column_splits(tc_forward_kernel<T, Fwd>, row_tiles, (C + kTcCols - 1) / kTcCols);
  split_cols = split_columns(C, splits);
  return splits;
}

template <typename T, typename Fwd>
void launch_tc_forward_kernel(const at::Tensor& u_rows, const at::Tensor& u_cols,
                              int64_t row_offset, int splits, int split_cols, const Fwd& pol) {
  const int R = u_rows.size(0), C = u_cols.size(0), D = u_rows.size(1);
  const bool vec_ok = vec_aligned(u_rows) && vec_aligned(u_cols);
  const dim3 grid((R + kTcRows - 1) / kTcRows, splits);
  check_grid(grid, D, "the tensor-core forward");
  tc_forward_kernel<T, Fwd><<<grid, kTcThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      u_rows.data_ptr<T>(), u_cols.data_ptr<T>(), R, C, D, static_cast<int>(row_offset), vec_ok,
      split_cols, pol);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_tc_forward(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                       double temperature, at::Tensor& row_loss, at::Tensor& row_lse) {
  const int R = u_rows.size(0), C = u_cols.size(0);
  int split_cols = 0;
  const int splits = tc_forward_splits<T, XentTcForward>(R, C, split_cols);
  const auto f32 = u_rows.options().dtype(at::kFloat);
  // Per split and row: running max and sum (every element written: each split has >= 1 tile).
  at::Tensor part_max = at::empty({splits, R}, f32);
  at::Tensor part_sum = at::empty({splits, R}, f32);
  at::Tensor pos_logit = at::empty({R}, f32);
  // The memory bank (rows past the last column) has no positive column: no pos_logit.
  float* pos_ptr = row_offset + R <= C ? pos_logit.data_ptr<float>() : nullptr;
  launch_tc_forward_kernel<T>(u_rows, u_cols, row_offset, splits, split_cols,
                              XentTcForward{static_cast<float>(1.0 / temperature),
                                            part_max.data_ptr<float>(),
                                            part_sum.data_ptr<float>(), pos_ptr});
  lse_finish_kernel<<<(R + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      part_max.data_ptr<float>(), part_sum.data_ptr<float>(), pos_ptr, R,
      splits, row_loss.data_ptr<float>(), row_lse.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, int TILE, typename Fwd>
void launch_simt_forward(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                         const Fwd& pol) {
  const int R = u_rows.size(0), C = u_cols.size(0), D = u_rows.size(1);
  const dim3 grid((R + TILE - 1) / TILE);
  simt_forward_kernel<scalar_t, acc_t, TILE, Fwd>
      <<<grid, kSimtThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          u_rows.data_ptr<scalar_t>(), u_cols.data_ptr<scalar_t>(), R, C, D,
          static_cast<int>(row_offset), pol);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_u before the normalization backward: `splits` slices [splits, R, D] to be summed, then
// multiplied by grad_scale (and by max|w| / kCoefScale when weight_absmax is defined).
struct GradParts {
  at::Tensor slices;
  int splits = 1;
  at::Tensor weight_absmax;
  double grad_scale = 1.0;
};

// The fused backward keeps its gradient accumulators for one D range (128 of D on tensor cores,
// TILE on the SIMT path) and recomputes the similarity tile over all of D for each range. Up to
// these many ranges it runs; beyond, the two-stage backward computes every similarity tile once
// (at D = 8192 bf16 the fused kernel would run the similarity product 64 times). The fused
// path stays where it is cheaper: no coefficient workspace traffic (2 bytes per similarity
// element written and read back), which at D = 128 would cost more than the recomputation.
constexpr int kTcFusedMaxDRanges = 2;    // D <= 256
constexpr int kSimtFusedMaxDRanges = 1;  // D <= 64 (fp32) or 32 (fp64)

// Rows per wave of the two-stage backward: its coefficient workspace [rows, C] stays within
// max(the [R, D] accumulation-dtype gradient, 64 MiB), so memory stays O(N D) like the gradient
// itself; a multiple of the row tile, at least one tile, at most 65535 tiles (grid.y).
int64_t wave_rows(int64_t R, int64_t C, int64_t D, int64_t coef_bytes, int64_t acc_bytes,
                  int64_t tile) {
  const int64_t budget = std::max<int64_t>(R * D * acc_bytes, int64_t(64) << 20);
  int64_t rows = budget / (C * coef_bytes) / tile * tile;
  rows = std::min<int64_t>(rows, (R + tile - 1) / tile * tile);
  rows = std::min<int64_t>(rows, int64_t(65535) * tile);
  return std::max<int64_t>(rows, tile);
}

// The backward launchers below take the loss as a coefficient policy (loss_policy.cuh: XentCoef,
// PairCoef) holding its device pointers; grad_scale is the policy's grad_scale() as a double,
// for the normalization kernel where a launcher leaves the scaling to it.
template <typename T, typename Coef>
GradParts launch_tc_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                             const at::Tensor& weight_absmax, int64_t row_offset,
                             const Coef& pol) {
  const int R = u_rows.size(0), C = u_cols.size(0), D = u_rows.size(1);
  const bool vec_ok = vec_aligned(u_rows) && vec_aligned(u_cols);
  constexpr int kDRange = TcTraits<T>::kGradChunks * TcTraits<T>::kChunk;
  const int row_tiles = (R + kTcRows - 1) / kTcRows;
  const int d_ranges = (D + kDRange - 1) / kDRange;
  int splits = column_splits(tc_backward_kernel<T, Coef>,
                             static_cast<int64_t>(row_tiles) * d_ranges,
                             (C + kTcCols - 1) / kTcCols);
  const int split_cols = split_columns(C, splits);
  // [splits, R, D] fp32, every element written once; splits * row_tiles * d_ranges <= resident
  // blocks when splits > 1, so this stays O(N D) (and ~13 MB at most beyond [R, D]).
  at::Tensor slices = at::empty({splits, R, D}, u_rows.options().dtype(at::kFloat));
  const dim3 grid(row_tiles, d_ranges, splits);
  check_grid(grid, D, "the fused tensor-core backward");
  tc_backward_kernel<T, Coef><<<grid, kTcThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      u_rows.data_ptr<T>(), u_cols.data_ptr<T>(), R, C, D, static_cast<int>(row_offset), vec_ok,
      weight_absmax.data_ptr<float>(), split_cols, slices.data_ptr<float>(), pol);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {slices, splits, at::Tensor(), 1.0};
}

// Two-stage backward on tensor cores: per wave of rows, tc_coef_kernel writes the coefficients
// [rows, C] (one similarity pass per tile), then one GEMM grad_u[rows] = coef x u_cols with fp32
// output (cuBLAS, fp32 accumulation). fp32 inputs come here only when TF32 was decided in the
// forward; the GEMM follows the process-wide TF32 setting at this moment (TF32 unless it was
// switched off since, which only makes it exact).
template <typename T, typename Coef>
GradParts launch_tc_backward_two_stage(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                       const at::Tensor& weight_absmax, int64_t row_offset,
                                       const Coef& pol, double grad_scale) {
  const int64_t R = u_rows.size(0), C = u_cols.size(0), D = u_rows.size(1);
  const bool vec_ok = vec_aligned(u_rows) && vec_aligned(u_cols);
  const int64_t wave = wave_rows(R, C, D, sizeof(T), sizeof(float), kTcRows);
  at::Tensor coef = at::empty({wave, C}, u_rows.options());  // T: 16-bit scaled, or fp32
  at::Tensor grad_u = at::empty({R, D}, u_rows.options().dtype(at::kFloat));
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < R; r0 += wave) {
    const int64_t rows = std::min<int64_t>(wave, R - r0);
    const dim3 grid((C + kTcCols - 1) / kTcCols, (rows + kTcRows - 1) / kTcRows);
    check_grid(grid, D, "the two-stage backward's coefficient kernel");
    tc_coef_kernel<T, Coef><<<grid, kTcThreads, 0, stream>>>(
        u_rows.data_ptr<T>(), u_cols.data_ptr<T>(), R, C, D, static_cast<int>(row_offset),
        static_cast<int>(r0), static_cast<int>(r0 + rows), vec_ok,
        weight_absmax.data_ptr<float>(),
        reinterpret_cast<typename TcTraits<T>::Bits*>(coef.data_ptr()), pol);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor out = grad_u.narrow(0, r0, rows);  // contiguous rows: written in place
    if constexpr (std::is_same_v<T, float>)
      at::mm_out(out, coef.narrow(0, 0, rows), u_cols);
    else
      at::mm_out(out, coef.narrow(0, 0, rows), u_cols, at::kFloat);  // fp32 out, no rounding
  }
  // 16-bit coefficients were scaled by kCoefScale / max|w|; fp32 ones were not.
  const at::Tensor unit = std::is_same_v<T, float> ? at::Tensor() : weight_absmax;
  return {grad_u, 1, unit, grad_scale};
}

// row_weight, col_weight: the upstream weights, whose max |w| is the coefficient scaling unit.
template <typename T, typename Coef>
GradParts tc_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                      const at::Tensor& row_weight, const at::Tensor& col_weight,
                      int64_t row_offset, const Coef& pol, double grad_scale) {
  // Device-side max |w| (a 0-d tensor, no host sync): the coefficient scaling unit.
  const at::Tensor weight_absmax =
      at::maximum(row_weight.abs().amax(), col_weight.abs().amax()).contiguous();
  constexpr int64_t kDRange = TcTraits<T>::kGradChunks * TcTraits<T>::kChunk;
  const int64_t D = u_rows.size(1);
  if ((D + kDRange - 1) / kDRange <= kTcFusedMaxDRanges)
    return launch_tc_backward<T>(u_rows, u_cols, weight_absmax, row_offset, pol);
  return launch_tc_backward_two_stage<T>(u_rows, u_cols, weight_absmax, row_offset, pol,
                                         grad_scale);
}

template <typename scalar_t, typename acc_t, int TILE, typename Coef>
GradParts launch_simt_backward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                               int64_t row_offset, const Coef& pol) {
  const int R = u_rows.size(0), C = u_cols.size(0), D = u_rows.size(1);
  // [R, D] in the accumulation dtype, every element written by the kernel.
  const auto acc = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  at::Tensor grad_u = at::empty({R, D}, u_rows.options().dtype(acc));
  const dim3 grid((R + TILE - 1) / TILE, (D + TILE - 1) / TILE);
  check_grid(grid, D, "the fused SIMT backward");
  simt_backward_kernel<scalar_t, acc_t, TILE, Coef>
      <<<grid, kSimtThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          u_rows.data_ptr<scalar_t>(), u_cols.data_ptr<scalar_t>(), R, C, D,
          static_cast<int>(row_offset), grad_u.data_ptr<acc_t>(), pol);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_u, 1, at::Tensor(), 1.0};
}

// Two-stage backward on the SIMT path (exact fp32, fp64): per wave, simt_coef_kernel writes
// the coefficients in the accumulation dtype, then one exact GEMM grad_u[rows] = coef x u_cols
// (TF32 off for it whatever the process-wide setting: this is the exact path); grad_scale is
// applied by the normalization kernel.
template <typename scalar_t, typename acc_t, int TILE, typename Coef>
GradParts launch_simt_backward_two_stage(const at::Tensor& u_rows, const at::Tensor& u_cols,
                                         int64_t row_offset, const Coef& pol,
                                         double grad_scale) {
  static_assert(std::is_same_v<scalar_t, acc_t>, "the SIMT path runs fp32 and fp64 only");
  const int64_t R = u_rows.size(0), C = u_cols.size(0), D = u_rows.size(1);
  const int64_t wave = wave_rows(R, C, D, sizeof(acc_t), sizeof(acc_t), TILE);
  at::Tensor coef = at::empty({wave, C}, u_rows.options());
  at::Tensor grad_u = at::empty({R, D}, u_rows.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::NoTF32Guard exact_gemm;
  for (int64_t r0 = 0; r0 < R; r0 += wave) {
    const int64_t rows = std::min<int64_t>(wave, R - r0);
    const dim3 grid((C + TILE - 1) / TILE, (rows + TILE - 1) / TILE);
    check_grid(grid, D, "the two-stage backward's coefficient kernel");
    simt_coef_kernel<scalar_t, acc_t, TILE, Coef><<<grid, kSimtThreads, 0, stream>>>(
        u_rows.data_ptr<scalar_t>(), u_cols.data_ptr<scalar_t>(), R, C, D,
        static_cast<int>(row_offset), static_cast<int>(r0), static_cast<int>(r0 + rows),
        coef.data_ptr<acc_t>(), pol);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor out = grad_u.narrow(0, r0, rows);
    at::mm_out(out, coef.narrow(0, 0, rows), u_cols);
  }
  return {grad_u, 1, at::Tensor(), grad_scale};
}

template <typename scalar_t, typename acc_t, int TILE, typename Coef>
GradParts simt_backward(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                        const Coef& pol, double grad_scale) {
  if (u_rows.size(1) <= int64_t(TILE) * kSimtFusedMaxDRanges)
    return launch_simt_backward<scalar_t, acc_t, TILE>(u_rows, u_cols, row_offset, pol);
  return launch_simt_backward_two_stage<scalar_t, acc_t, TILE>(u_rows, u_cols, row_offset, pol,
                                                               grad_scale);
}

// grad_u of any loss, by path (the one its forward took): fp64 and exact fp32 on the SIMT
// path, 16-bit and TF32 fp32 on tensor cores.
template <typename scalar_t, typename Coef>
GradParts grad_parts(const at::Tensor& u_rows, const at::Tensor& u_cols,
                     const at::Tensor& row_weight, const at::Tensor& col_weight,
                     int64_t row_offset, bool tf32, const Coef& pol, double grad_scale) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return simt_backward<double, double, 32>(u_rows, u_cols, row_offset, pol, grad_scale);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (tf32)
      return tc_backward<float>(u_rows, u_cols, row_weight, col_weight, row_offset, pol,
                                grad_scale);
    return simt_backward<float, float, 64>(u_rows, u_cols, row_offset, pol, grad_scale);
  } else {
    return tc_backward<scalar_t>(u_rows, u_cols, row_weight, col_weight, row_offset, pol,
                                 grad_scale);
  }
}

// grad_z = normalization backward of (grad_u - pos_coef u_pos), one warp per row; pos_coef
// undefined for the memory bank (no positive column).
template <typename scalar_t, typename acc_t>
void launch_normalize_backward(const GradParts& parts, const at::Tensor& u_rows,
                               const at::Tensor& u_cols, const at::Tensor& norm_rows,
                               int64_t row_offset, const at::Tensor& pos_coef,
                               at::Tensor& grad_z) {
  const int R = u_rows.size(0), D = u_rows.size(1);
  const dim3 grid((R + kNormThreads / 32 - 1) / (kNormThreads / 32));
  normalize_backward_kernel<scalar_t, acc_t>
      <<<grid, kNormThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          u_rows.data_ptr<scalar_t>(), parts.slices.data_ptr<acc_t>(), parts.splits,
          norm_rows.data_ptr<acc_t>(), R, D,
          parts.weight_absmax.defined() ? parts.weight_absmax.data_ptr<float>() : nullptr,
          static_cast<acc_t>(parts.grad_scale), u_cols.data_ptr<scalar_t>(),
          static_cast<int>(row_offset),
          pos_coef.defined() ? pos_coef.data_ptr<acc_t>() : nullptr, grad_z.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// tf32: the precision decision, taken once by the forward's caller and passed to the backward
// (ntxent.cpp: tf32_enabled), so that the two always run the same path.
template <typename scalar_t>
void forward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                  double temperature, bool tf32, at::Tensor& row_loss, at::Tensor& row_lse) {
  using acc_t = accumulation_t<scalar_t>;
  const XentSimtForward<acc_t> simt{static_cast<acc_t>(1.0 / temperature),
                                    row_loss.data_ptr<acc_t>(), row_lse.data_ptr<acc_t>()};
  if constexpr (std::is_same_v<scalar_t, double>) {
    launch_simt_forward<double, double, 32>(u_rows, u_cols, row_offset, simt);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (tf32)
      launch_tc_forward<float>(u_rows, u_cols, row_offset, temperature, row_loss, row_lse);
    else
      launch_simt_forward<float, float, 64>(u_rows, u_cols, row_offset, simt);
  } else {
    launch_tc_forward<scalar_t>(u_rows, u_cols, row_offset, temperature, row_loss, row_lse);
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols,
                   const at::Tensor& norm_rows, const at::Tensor& row_lse,
                   const at::Tensor& col_lse, const at::Tensor& row_weight,
                   const at::Tensor& col_weight, const at::Tensor& row_loss,
                   int64_t row_offset, double temperature, bool tf32, at::Tensor& grad_z) {
  using acc_t = accumulation_t<scalar_t>;
  const XentCoef<acc_t> pol{static_cast<acc_t>(1.0 / temperature), row_lse.data_ptr<acc_t>(),
                            col_lse.data_ptr<acc_t>(), row_weight.data_ptr<acc_t>(),
                            col_weight.data_ptr<acc_t>()};
  const GradParts parts = grad_parts<scalar_t>(u_rows, u_cols, row_weight, col_weight,
                                               row_offset, tf32, pol, 1.0 / temperature);
  const int R = u_rows.size(0);
  // The positive's coefficient per row, (w_i q_i + w_pos q_pos) / tau with q = 1 - P_pos from
  // the forward's loss (or lse - s_pos when the caller has none); none for the memory bank
  // (row_offset past the last column: no positive column).
  at::Tensor pos_coef;
  if (row_offset + R <= u_cols.size(0)) {
    const at::Tensor idx = at::arange(R, row_lse.options().dtype(at::kLong));
    const at::Tensor pos_local = (idx + R / 2).remainder(R);
    at::Tensor loss = row_loss;
    if (!loss.defined()) {
      const at::Tensor rows = u_rows.to(row_lse.scalar_type());
      const at::Tensor pos = u_cols.index_select(0, pos_local + row_offset).to(rows.scalar_type());
      loss = row_lse - (rows * pos).sum(1) / temperature;
    }
    const at::Tensor q = loss.neg().expm1().neg();  // ntxent_math.h: positive_deficit
    const at::Tensor w_pos = col_weight.index_select(0, pos_local + row_offset);
    pos_coef = ((row_weight * q + w_pos * q.index_select(0, pos_local)) / temperature)
                   .to(row_lse.scalar_type())
                   .contiguous();
  }
  launch_normalize_backward<scalar_t, acc_t>(parts, u_rows, u_cols, norm_rows, row_offset,
                                             pos_coef, grad_z);
}

// ============================================================================================
// NT-Logistic and margin triplet (pair_loss.h): the same kernels with the pair policies
// ============================================================================================
template <typename Rule>
Rule make_rule(const PairLossParams& params) {
  using acc_t = typename Rule::acc_t;
  if constexpr (std::is_same_v<Rule, LogisticRule<acc_t>>)
    return Rule{static_cast<acc_t>(1.0 / params.temperature), params.semi_hard};
  else
    return Rule{static_cast<acc_t>(params.margin), params.semi_hard};
}

template <typename T, typename Rule>
void launch_pair_tc_forward(const at::Tensor& u_rows, const at::Tensor& u_cols,
                            int64_t row_offset, const Rule& rule, const at::Tensor& cos_pos,
                            at::Tensor& row_loss, at::Tensor& row_state) {
  using Fwd = PairTcForward<Rule>;
  const int R = u_rows.size(0), C = u_cols.size(0);
  int split_cols = 0;
  const int splits = tc_forward_splits<T, Fwd>(R, C, split_cols);
  // Per split and row (every element written: each split has >= 1 tile).
  at::Tensor part_sum = at::empty({splits, R}, u_rows.options().dtype(at::kFloat));
  at::Tensor part_count = at::empty({splits, R}, u_rows.options().dtype(at::kInt));
  at::Tensor part_active = at::empty({splits, R}, u_rows.options().dtype(at::kInt));
  launch_tc_forward_kernel<T>(
      u_rows, u_cols, row_offset, splits, split_cols,
      Fwd{rule, cos_pos.data_ptr<float>(), part_sum.data_ptr<float>(),
          part_count.data_ptr<int>(), part_active.data_ptr<int>()});
  pair_finish_kernel<Rule><<<(R + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      rule, cos_pos.data_ptr<float>(), part_sum.data_ptr<float>(), part_count.data_ptr<int>(),
      part_active.data_ptr<int>(), R, splits, row_loss.data_ptr<float>(),
      row_state.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, template <typename> class RuleT>
void pair_forward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset,
                       const PairLossParams& params, bool tf32, at::Tensor& row_loss,
                       at::Tensor& row_state) {
  using acc_t = accumulation_t<scalar_t>;
  using Rule = RuleT<acc_t>;
  const Rule rule = make_rule<Rule>(params);
  const int R = u_rows.size(0), D = u_rows.size(1);
  at::Tensor cos_pos = at::empty({R}, row_loss.options());
  pair_cos_pos_kernel<scalar_t, acc_t>
      <<<(R + 7) / 8, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
          u_rows.data_ptr<scalar_t>(), u_cols.data_ptr<scalar_t>(), R, D,
          static_cast<int>(row_offset), cos_pos.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const PairSimtForward<Rule> simt{rule, cos_pos.data_ptr<acc_t>(), row_loss.data_ptr<acc_t>(),
                                   row_state.data_ptr<acc_t>()};
  if constexpr (std::is_same_v<scalar_t, double>) {
    launch_simt_forward<double, double, 32>(u_rows, u_cols, row_offset, simt);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (tf32)
      launch_pair_tc_forward<float>(u_rows, u_cols, row_offset, rule, cos_pos, row_loss,
                                    row_state);
    else
      launch_simt_forward<float, float, 64>(u_rows, u_cols, row_offset, simt);
  } else {
    launch_pair_tc_forward<scalar_t>(u_rows, u_cols, row_offset, rule, cos_pos, row_loss,
                                     row_state);
  }
}

// a_k = w_k / |M_k| (0 for an empty M_k, which has no negative terms to differentiate).
at::Tensor per_member_weight(const at::Tensor& state, const at::Tensor& weight) {
  const at::Tensor count = state.select(1, kStateCount);
  return at::where(count > 0, weight / count.clamp_min(1), at::zeros_like(weight)).contiguous();
}

template <typename scalar_t, template <typename> class RuleT>
void pair_backward_impl(const at::Tensor& u_rows, const at::Tensor& u_cols,
                        const at::Tensor& norm_rows, const at::Tensor& row_state,
                        const at::Tensor& col_state, const at::Tensor& row_weight,
                        const at::Tensor& col_weight, int64_t row_offset,
                        const PairLossParams& params, bool tf32, at::Tensor& grad_z) {
  using acc_t = accumulation_t<scalar_t>;
  using Rule = RuleT<acc_t>;
  const Rule rule = make_rule<Rule>(params);
  const at::Tensor row_cpos = row_state.select(1, kStateCosPos).contiguous();
  const at::Tensor col_cpos = col_state.select(1, kStateCosPos).contiguous();
  const at::Tensor row_a = per_member_weight(row_state, row_weight);
  const at::Tensor col_a = per_member_weight(col_state, col_weight);
  const PairCoef<Rule> pol{rule, row_cpos.data_ptr<acc_t>(), col_cpos.data_ptr<acc_t>(),
                           row_a.data_ptr<acc_t>(), col_a.data_ptr<acc_t>()};
  const double grad_scale =
      params.kind == PairLossKind::kLogistic ? 1.0 / params.temperature : 1.0;
  const GradParts parts = grad_parts<scalar_t>(u_rows, u_cols, row_weight, col_weight,
                                               row_offset, tf32, pol, grad_scale);

  // The positive u_pos(i) in dPhi/du_i, from both rows of the pair (masked in the tiles):
  //   logistic: -(w_i sigmoid(-s_i,pos) + w_pos sigmoid(-s_pos,i)) / tau
  //   margin:   -(a_i active_i + a_pos active_pos), a = w / |M|
  // normalize_backward_kernel subtracts pos_coef u_pos, so pos_coef is minus these.
  const int R = u_rows.size(0);
  const at::Tensor idx = at::arange(R, row_state.options().dtype(at::kLong));
  const at::Tensor pos_col = (idx + R / 2).remainder(R) + row_offset;
  at::Tensor pos_coef;
  if (params.kind == PairLossKind::kLogistic) {
    const double inv_tau = 1.0 / params.temperature;
    const at::Tensor w_pos = col_weight.index_select(0, pos_col);
    const at::Tensor cpos_pos = col_cpos.index_select(0, pos_col);
    pos_coef = (row_weight * at::sigmoid(row_cpos * -inv_tau) +
                w_pos * at::sigmoid(cpos_pos * -inv_tau)) *
               inv_tau;
  } else {
    const at::Tensor act_row = row_state.select(1, kStateActive);
    const at::Tensor act_col = col_state.select(1, kStateActive).index_select(0, pos_col);
    pos_coef = row_a * act_row + col_a.index_select(0, pos_col) * act_col;
  }
  pos_coef = pos_coef.to(row_state.scalar_type()).contiguous();
  launch_normalize_backward<scalar_t, acc_t>(parts, u_rows, u_cols, norm_rows, row_offset,
                                             pos_coef, grad_z);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& u_rows,
                                                const at::Tensor& u_cols, int64_t row_offset,
                                                double temperature, bool tf32) {
  const c10::cuda::CUDAGuard guard(u_rows.device());
  check_sizes(u_rows, u_cols, row_offset);
  const auto acc = accumulation_dtype(u_rows.scalar_type());
  at::Tensor row_loss = at::empty({u_rows.size(0)}, u_rows.options().dtype(acc));
  at::Tensor row_lse = at::empty({u_rows.size(0)}, u_rows.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, u_rows.scalar_type(), "nt_xent forward (CUDA)", [&] {
        forward_impl<scalar_t>(u_rows, u_cols, row_offset, temperature, tf32, row_loss,
                               row_lse);
      });
  return {row_loss, row_lse};
}

at::Tensor backward_cuda(const at::Tensor& u_rows, const at::Tensor& u_cols,
                         const at::Tensor& norm_rows, const at::Tensor& row_lse,
                         const at::Tensor& col_lse, const at::Tensor& row_weight,
                         const at::Tensor& col_weight, const at::Tensor& row_loss,
                         int64_t row_offset, double temperature, bool tf32) {
  const c10::cuda::CUDAGuard guard(u_rows.device());
  check_sizes(u_rows, u_cols, row_offset);
  at::Tensor grad_z = at::empty_like(u_rows, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, u_rows.scalar_type(), "nt_xent backward (CUDA)", [&] {
        backward_impl<scalar_t>(u_rows, u_cols, norm_rows, row_lse, col_lse, row_weight,
                                col_weight, row_loss, row_offset, temperature, tf32, grad_z);
      });
  return grad_z;
}

namespace {
// Pair losses need every row's positive among the columns (no memory bank form).
void check_pair_layout(const at::Tensor& u_rows, const at::Tensor& u_cols, int64_t row_offset) {
  check_sizes(u_rows, u_cols, row_offset);
  TORCH_CHECK(row_offset >= 0 && row_offset + u_rows.size(0) <= u_cols.size(0),
              "pair loss (CUDA): rows [row_offset, row_offset + R) = [", row_offset, ", ",
              row_offset + u_rows.size(0), ") must lie within the ", u_cols.size(0), " columns");
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_forward_cuda(const at::Tensor& u_rows,
                                                     const at::Tensor& u_cols, int64_t row_offset,
                                                     const PairLossParams& params, bool tf32) {
  const c10::cuda::CUDAGuard guard(u_rows.device());
  check_pair_layout(u_rows, u_cols, row_offset);
  const auto acc = accumulation_dtype(u_rows.scalar_type());
  const int64_t R = u_rows.size(0);
  at::Tensor row_loss = at::empty({R}, u_rows.options().dtype(acc));
  at::Tensor row_state = at::empty({R, kPairStateCols}, u_rows.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, u_rows.scalar_type(), "pair loss forward (CUDA)", [&] {
        if (params.kind == PairLossKind::kLogistic)
          pair_forward_impl<scalar_t, LogisticRule>(u_rows, u_cols, row_offset, params, tf32,
                                                    row_loss, row_state);
        else
          pair_forward_impl<scalar_t, MarginRule>(u_rows, u_cols, row_offset, params, tf32,
                                                  row_loss, row_state);
      });
  return {row_loss, row_state};
}

at::Tensor pair_backward_cuda(const at::Tensor& u_rows, const at::Tensor& u_cols,
                              const at::Tensor& norm_rows, const at::Tensor& row_state,
                              const at::Tensor& col_state, const at::Tensor& row_weight,
                              const at::Tensor& col_weight, int64_t row_offset,
                              const PairLossParams& params, bool tf32) {
  const c10::cuda::CUDAGuard guard(u_rows.device());
  check_pair_layout(u_rows, u_cols, row_offset);
  at::Tensor grad_z = at::empty_like(u_rows, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, u_rows.scalar_type(), "pair loss backward (CUDA)", [&] {
        if (params.kind == PairLossKind::kLogistic)
          pair_backward_impl<scalar_t, LogisticRule>(u_rows, u_cols, norm_rows, row_state,
                                                     col_state, row_weight, col_weight,
                                                     row_offset, params, tf32, grad_z);
        else
          pair_backward_impl<scalar_t, MarginRule>(u_rows, u_cols, norm_rows, row_state,
                                                   col_state, row_weight, col_weight,
                                                   row_offset, params, tf32, grad_z);
      });
  return grad_z;
}

}  // namespace ntxent
}  // namespace simclr_ext
