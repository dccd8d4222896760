// Block-wide reductions for the CUDA kernels (color's luma pass, LARS's norm pass).
#pragma once

namespace simclr_ext {

// Shared-memory slots block_sum<kBlock> needs: one per warp, plus one for the result.
__host__ __device__ constexpr int block_sum_slots(int block) { return block / 32 + 1; }

// Sum of v over a block of kBlock threads (blockDim.x == kBlock), returned to every thread. The
// order of the additions is a fixed shuffle tree (lanes, then warps), so the result is bitwise
// reproducible. smem: block_sum_slots(kBlock) values of T in shared memory. Safe to call again on
// the same smem right away: the next call's first barrier comes after every thread has read
// this result.
template <int kBlock, typename T>
__device__ inline T block_sum(T v, T* smem) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "block size must be a multiple of 32");
  constexpr int kWarps = kBlock / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    // blockDim.x >> 5 == kWarps; the runtime form compiles the color luma kernel to 38-40
    // registers instead of 41-46 (nvcc 13.0, sm_90), and leaves the LARS kernels unchanged.
    v = lane < static_cast<int>(blockDim.x >> 5) ? smem[lane] : T(0);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) smem[kWarps] = v;
  }
  __syncthreads();
  return smem[kWarps];
}

}  // namespace simclr_ext
