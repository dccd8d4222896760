// CUDA kernel of the color distortion: grid (pixel blocks, images), every thread runs the whole
// per-pixel pipeline of color_math.h with its image's parameters read on the device (no host
// synchronization). Contrast needs the mean luma of the image at its step: a first kernel applies
// the ops that precede contrast and writes one partial luma sum per (image, block); the main
// kernel adds an image's partials in a fixed order (deterministic, no atomics) before its pixels.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "color/color.h"
#include "color/color_math.h"
#include "color/layout.h"
#include "common/reduce.cuh"

namespace simclr_ext {
namespace color {

namespace {

constexpr int kThreads = 256;
constexpr int kMeanBlocks = 32;   // partial luma sums per image (grid.x of the first kernel)
constexpr int kMaxGridY = 65535;  // images beyond it are looped over by the same blocks

struct ParamPtrs {
  const float* factors;     // [B, 4]
  const int64_t* order;     // [B, 4]
  const bool* apply_jitter; // [B]
  const bool* apply_gray;   // [B]
};

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVec {
  T v[N];
};

// partial: [B, gridDim.x] luma sums of the image just before its contrast step.
template <typename in_t>
__global__ void __launch_bounds__(kThreads)
    luma_partial_kernel(const in_t* __restrict__ in, Layout l, int64_t pixels, int64_t batch,
                        ParamPtrs pp, float* __restrict__ partial) {
  __shared__ float shared[block_sum_slots(kThreads)];
  for (int64_t img = blockIdx.y; img < batch; img += gridDim.y) {
    const ImageParams p = load_params(pp.factors, pp.order, pp.apply_jitter, pp.apply_gray, img);
    if (p.contrast_step >= kNumOps) continue;  // uniform over the block
    const in_t* src = in + img * l.image;
    float sum = 0.f;
    for (int64_t px = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; px < pixels;
         px += int64_t(gridDim.x) * blockDim.x) {
      float r = to_unit(src[px * l.pixel]);
      float g = to_unit(src[px * l.pixel + l.channel]);
      float b = to_unit(src[px * l.pixel + 2 * l.channel]);
#pragma unroll
      for (int k = 0; k < kNumOps; ++k) {  // unrolled with a guard: p.order stays in registers
        if (k < p.contrast_step) apply_op(p.order[k], p, 0.f, r, g, b);
      }
      sum += luma(r, g, b);
    }
    sum = block_sum<kThreads>(sum, shared);
    if (threadIdx.x == 0) partial[img * gridDim.x + blockIdx.x] = sum;
  }
}

// The whole per-image pipeline on N pixels: the (block-uniform) op switch once per step, the
// N pixels inside it.
template <int N>
__device__ __forceinline__ void pipeline(const ImageParams& p, float mean_luma, float (&r)[N],
                                         float (&g)[N], float (&b)[N]) {
  if (p.jitter) {
#pragma unroll
    for (int k = 0; k < kNumOps; ++k) {
      switch (p.order[k]) {
        case kBrightness:
#pragma unroll
          for (int i = 0; i < N; ++i) adjust_brightness(r[i], g[i], b[i], p.factor[kBrightness]);
          break;
        case kContrast:
#pragma unroll
          for (int i = 0; i < N; ++i) {
            adjust_contrast(r[i], g[i], b[i], p.factor[kContrast], mean_luma);
          }
          break;
        case kSaturation:
#pragma unroll
          for (int i = 0; i < N; ++i) adjust_saturation(r[i], g[i], b[i], p.factor[kSaturation]);
          break;
        case kHue:
#pragma unroll
          for (int i = 0; i < N; ++i) adjust_hue(r[i], g[i], b[i], p.factor[kHue]);
          break;
        default: break;
      }
    }
  }
  if (p.gray) {
#pragma unroll
    for (int i = 0; i < N; ++i) to_grayscale(r[i], g[i], b[i]);
  }
}

template <typename out_t>
__device__ __forceinline__ out_t finish(float x, const Norm& nm, int c) {
  return static_cast<out_t>(nm.on ? (x - nm.mean[c]) / nm.std[c] : x);
}

// VEC = 4: NCHW in and out, planes and pointers aligned, pixels % 4 == 0; VEC = 1: any dense
// NCHW/NHWC strides.
template <typename in_t, typename out_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    distort_kernel(const in_t* __restrict__ in, Layout il, out_t* __restrict__ out, Layout ol,
                   int64_t pixels, int64_t batch, ParamPtrs pp,
                   const float* __restrict__ partial, int parts, Norm nm) {
  for (int64_t img = blockIdx.y; img < batch; img += gridDim.y) {
    const ImageParams p = load_params(pp.factors, pp.order, pp.apply_jitter, pp.apply_gray, img);
    float mean_luma = 0.f;
    if (p.contrast_step < kNumOps) {
      float sum = 0.f;
      for (int i = 0; i < parts; ++i) sum += partial[img * parts + i];
      mean_luma = sum / static_cast<float>(pixels);
    }
    const in_t* src = in + img * il.image;
    out_t* dst = out + img * ol.image;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    if constexpr (VEC > 1) {
      using InVec = AlignedVec<in_t, VEC>;
      using OutVec = AlignedVec<out_t, VEC>;
      for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q * VEC < pixels;
           q += stride) {
        const InVec rv = reinterpret_cast<const InVec*>(src)[q];
        const InVec gv = reinterpret_cast<const InVec*>(src + il.channel)[q];
        const InVec bv = reinterpret_cast<const InVec*>(src + 2 * il.channel)[q];
        float r[VEC], g[VEC], b[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          r[i] = to_unit(rv.v[i]);
          g[i] = to_unit(gv.v[i]);
          b[i] = to_unit(bv.v[i]);
        }
        pipeline<VEC>(p, mean_luma, r, g, b);
        OutVec ro, go, bo;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          ro.v[i] = finish<out_t>(r[i], nm, 0);
          go.v[i] = finish<out_t>(g[i], nm, 1);
          bo.v[i] = finish<out_t>(b[i], nm, 2);
        }
        reinterpret_cast<OutVec*>(dst)[q] = ro;
        reinterpret_cast<OutVec*>(dst + ol.channel)[q] = go;
        reinterpret_cast<OutVec*>(dst + 2 * ol.channel)[q] = bo;
      }
    } else {
      for (int64_t px = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; px < pixels;
           px += stride) {
        float r[1] = {to_unit(src[px * il.pixel])};
        float g[1] = {to_unit(src[px * il.pixel + il.channel])};
        float b[1] = {to_unit(src[px * il.pixel + 2 * il.channel])};
        pipeline<1>(p, mean_luma, r, g, b);
        dst[px * ol.pixel] = finish<out_t>(r[0], nm, 0);
        dst[px * ol.pixel + ol.channel] = finish<out_t>(g[0], nm, 1);
        dst[px * ol.pixel + 2 * ol.channel] = finish<out_t>(b[0], nm, 2);
      }
    }
  }
}

bool aligned(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace

void distort_cuda(const at::Tensor& images, const at::Tensor& factors, const at::Tensor& order,
                  const at::Tensor& apply_jitter, const at::Tensor& apply_gray, at::Tensor& out,
                  const Norm& nm) {
  const c10::cuda::CUDAGuard guard(images.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t batch = images.size(0);
  const int64_t pixels = images.size(2) * images.size(3);
  const Layout il = layout_of(images), ol = layout_of(out);
  const ParamPtrs pp{factors.const_data_ptr<float>(), order.const_data_ptr<int64_t>(),
                     apply_jitter.const_data_ptr<bool>(), apply_gray.const_data_ptr<bool>()};
  const int grid_y = static_cast<int>(std::min<int64_t>(batch, kMaxGridY));
  const int parts =
      static_cast<int>(std::min<int64_t>(kMeanBlocks, (pixels + kThreads - 1) / kThreads));
  at::Tensor partial = at::empty({batch, parts}, images.options().dtype(at::kFloat));

  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, images.scalar_type(),
                                  "color_distort_cuda", [&] {
    using in_t = scalar_t;
    const in_t* in = images.const_data_ptr<in_t>();
    luma_partial_kernel<in_t><<<dim3(parts, grid_y), kThreads, 0, stream>>>(
        in, il, pixels, batch, pp, partial.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                    "color_distort_cuda_out", [&] {
      using out_t = scalar_t;
      out_t* dst = out.mutable_data_ptr<out_t>();
      constexpr int kVec = 4;
      const bool nchw = il.pixel == 1 && ol.pixel == 1;
      const bool vec = nchw && pixels % kVec == 0 && il.channel % kVec == 0 &&
                       il.image % kVec == 0 && ol.channel % kVec == 0 &&
                       ol.image % kVec == 0 && aligned(in, sizeof(in_t) * kVec) &&
                       aligned(dst, sizeof(out_t) * kVec);
      const int64_t per_thread = vec ? kVec : 1;
      const int grid_x = static_cast<int>(std::min<int64_t>(
          1024, (pixels + per_thread * kThreads - 1) / (per_thread * kThreads)));
      const dim3 grid(grid_x, grid_y);
      if (vec) {
        distort_kernel<in_t, out_t, kVec><<<grid, kThreads, 0, stream>>>(
            in, il, dst, ol, pixels, batch, pp, partial.const_data_ptr<float>(), parts, nm);
      } else {
        distort_kernel<in_t, out_t, 1><<<grid, kThreads, 0, stream>>>(
            in, il, dst, ol, pixels, batch, pp, partial.const_data_ptr<float>(), parts, nm);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace color
}  // namespace simclr_ext
