// CUDA kernels of the per-image Gaussian blur: two launches per call, whatever the batch
// (docs/architecture.md section 10.3). Grid (pixel blocks, planes): every block belongs to one
// (image, channel) plane, computes that image's k weights once into shared memory
// (blur_math.h, as the CPU kernel) and exits at once when the image is not blurred.
//   1. horizontal: plane buffer [N, C, H, W] (accumulation dtype) = k taps along x of the
//      reflect-padded input rows;
//   2. vertical: out = k taps along y of the buffer's reflected rows; an image with sigma 0 is
//      copied here when out is a new tensor, and not touched at all in place.
// The buffer between the passes makes the in-place form safe (the second launch only starts
// after the first has read every input pixel). Nothing synchronizes with the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "blur/blur.h"
#include "blur/blur_math.h"

namespace simclr_ext {
namespace blur {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxPixelBlocks = 1024;  // more pixels are looped over by the same blocks
constexpr int kMaxGridY = 65535;       // more planes are looped over by the same blocks

// Element strides of an [N, C, H, W] tensor.
struct Strides {
  int64_t n, c, h, w;
};

struct Dims {
  int64_t planes, channels, height, width;
  int k;
};

// Thread 0 fills the shared weights of `img`; the caller synchronizes.
template <typename acc_t>
__device__ __forceinline__ void load_weights(const float* sigma, int64_t img, int k, acc_t* w) {
  if (threadIdx.x == 0) gaussian_weights<acc_t>(static_cast<acc_t>(sigma[img]), k, w);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    blur_rows_kernel(const scalar_t* __restrict__ in, Strides is, acc_t* __restrict__ buf,
                     const float* __restrict__ sigma, Dims d) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* w = reinterpret_cast<acc_t*>(shared_raw);
  const int64_t pixels = d.height * d.width;
  const int r = d.k / 2;
  for (int64_t p = blockIdx.y; p < d.planes; p += gridDim.y) {
    const int64_t img = p / d.channels, c = p % d.channels;
    if (!blurs(sigma[img])) continue;  // uniform over the block
    load_weights<acc_t>(sigma, img, d.k, w);
    __syncthreads();
    const scalar_t* src = in + img * is.n + c * is.c;
    for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < pixels;
         i += int64_t(gridDim.x) * kThreads) {
      const int64_t y = i / d.width, x = i % d.width;
      const scalar_t* row = src + y * is.h;
      acc_t v = 0;
      for (int j = 0; j < d.k; ++j) {
        const acc_t t = static_cast<acc_t>(row[reflect(x + j - r, d.width) * is.w]) * w[j];
        v = j == 0 ? t : v + t;
      }
      buf[p * pixels + i] = v;
    }
    __syncthreads();  // w is rewritten for the next plane of this block
  }
}

// in and out are the same tensor when in place (no __restrict__ on either).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    blur_cols_kernel(const scalar_t* in, Strides is, const acc_t* __restrict__ buf,
                     scalar_t* out, Strides os, const float* __restrict__ sigma, Dims d,
                     bool in_place) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* w = reinterpret_cast<acc_t*>(shared_raw);
  const int64_t pixels = d.height * d.width;
  const int r = d.k / 2;
  for (int64_t p = blockIdx.y; p < d.planes; p += gridDim.y) {
    const int64_t img = p / d.channels, c = p % d.channels;
    const bool blurred = blurs(sigma[img]);  // uniform over the block
    if (!blurred && in_place) continue;
    if (blurred) load_weights<acc_t>(sigma, img, d.k, w);
    __syncthreads();
    const acc_t* plane = buf + p * pixels;
    for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < pixels;
         i += int64_t(gridDim.x) * kThreads) {
      const int64_t y = i / d.width, x = i % d.width;
      scalar_t* dst = out + img * os.n + c * os.c + y * os.h + x * os.w;
      if (!blurred) {
        *dst = in[img * is.n + c * is.c + y * is.h + x * is.w];
        continue;
      }
      acc_t v = 0;
      for (int j = 0; j < d.k; ++j) {
        const acc_t t = plane[reflect(y + j - r, d.height) * d.width + x] * w[j];
        v = j == 0 ? t : v + t;
      }
      *dst = static_cast<scalar_t>(v);
    }
    __syncthreads();
  }
}

Strides strides_of(const at::Tensor& t) {
  return Strides{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

}  // namespace

void gaussian_blur_cuda(const at::Tensor& images, const at::Tensor& sigma, int64_t kernel_size,
                        at::Tensor& out, bool in_place) {
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t n = images.size(0), channels = images.size(1);
  const int64_t h = images.size(2), w = images.size(3);
  TORCH_CHECK(kernel_size <= 4095, "gaussian_blur: kernel_size must be <= 4095 on CUDA, got ",
              kernel_size);
  const Dims d{n * channels, channels, h, w, static_cast<int>(kernel_size)};
  const int64_t pixel_blocks =
      std::min<int64_t>((h * w + kThreads - 1) / kThreads, kMaxPixelBlocks);
  const dim3 grid(static_cast<unsigned>(pixel_blocks),
                  static_cast<unsigned>(std::min<int64_t>(d.planes, kMaxGridY)));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(),
                                  "gaussian_blur_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t shared = sizeof(acc_t) * static_cast<size_t>(kernel_size);
    at::Tensor buf = at::empty({n, channels, h, w},
                               images.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    blur_rows_kernel<scalar_t, acc_t><<<grid, kThreads, shared, stream>>>(
        images.const_data_ptr<scalar_t>(), strides_of(images), buf.mutable_data_ptr<acc_t>(),
        sigma.const_data_ptr<float>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    blur_cols_kernel<scalar_t, acc_t><<<grid, kThreads, shared, stream>>>(
        images.const_data_ptr<scalar_t>(), strides_of(images), buf.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<scalar_t>(), strides_of(out), sigma.const_data_ptr<float>(), d,
        in_place);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace blur
}  // namespace simclr_ext
