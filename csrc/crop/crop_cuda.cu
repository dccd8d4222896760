// CUDA kernel of the resized crop: one launch per call, whatever the batch. A block owns a
// 32 x 32 tile of output pixels of one crop (all channels): it computes the tile's 32 column
// spans and 32 row spans with their weights once into shared memory (crop_math.h, the same
// functions as the CPU kernel), then every thread evaluates its pixels as the separable sum
// sum_j wy[j] * (sum_i wx[i] * src[row_j][col_i]), in the order of ATen's two passes, reading
// the source through the L1/L2 caches (docs/architecture.md section 10.2). The boxes and flips
// are read on the device; nothing synchronizes with the host.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <vector>

#include "crop/crop.h"
#include "crop/crop_math.h"

namespace simclr_ext {
namespace crop {

namespace {

constexpr int kTile = 32;         // output tile: kTile x kTile pixels per block
constexpr int kRowsPerPass = 8;   // blockDim = (kTile, kRowsPerPass): 4 rows per thread
constexpr int kMaxGridY = 65535;  // crops beyond it are looped over by the same blocks
constexpr int kTableCols = 6;     // list table row: data address, H, W, stride C, H, W

// Where one source image lives (element strides).
template <typename in_t>
struct DeviceImage {
  const in_t* data;
  int64_t height, width, stride_c, stride_h, stride_w;
};

// The sources: a batch tensor (table == nullptr: image b at first.data + b * batch_stride, all
// with first's sizes and strides) or a list (table [B, kTableCols] on the device).
template <typename in_t>
struct Sources {
  DeviceImage<in_t> first;
  int64_t batch_stride;
  const int64_t* table;
  int64_t batch;

  __device__ DeviceImage<in_t> get(int64_t b) const {
    if (table == nullptr) {
      DeviceImage<in_t> img = first;
      img.data = first.data + b * batch_stride;
      return img;
    }
    const int64_t* row = table + b * kTableCols;
    return DeviceImage<in_t>{reinterpret_cast<const in_t*>(row[0]), row[1], row[2],
                             row[3],                                 row[4], row[5]};
  }
};

struct OutArgs {
  float* data;
  int64_t stride_n, stride_c, stride_h, stride_w;
  int64_t size, channels, crops;
  float scale;
};

template <typename in_t>
__device__ __forceinline__ float to_float(in_t v) {
  return static_cast<float>(v);
}

// At least 4 resident blocks per SM: ptxas then allots 64 registers, where on its own it picked 48
// and spilled 16-20 bytes (the 64-bit index math of the strided source).
template <typename in_t>
__global__ void __launch_bounds__(kTile * kRowsPerPass, 4)
    resized_crop_kernel(Sources<in_t> src, const int64_t* __restrict__ boxes,
                        const bool* __restrict__ flip, OutArgs out, int taps_x, int taps_y) {
  extern __shared__ float shared[];
  float* wx = shared;                        // [kTile][taps_x]
  float* wy = wx + kTile * taps_x;           // [kTile][taps_y]
  int* span = reinterpret_cast<int*>(wy + kTile * taps_y);  // x start, x count, y start, y count
  int* x_start = span;
  int* x_count = span + kTile;
  int* y_start = span + 2 * kTile;
  int* y_count = span + 3 * kTile;

  const int64_t size = out.size;
  const int64_t tiles_x = (size + kTile - 1) / kTile;
  const int64_t x0 = (blockIdx.x % tiles_x) * kTile;
  const int64_t y0 = (blockIdx.x / tiles_x) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;

  for (int64_t n = blockIdx.y; n < out.crops; n += gridDim.y) {
    const DeviceImage<in_t> img = src.get(n % src.batch);
    const Box box = clamp_box(Box{boxes[4 * n], boxes[4 * n + 1], boxes[4 * n + 2],
                                  boxes[4 * n + 3]},
                              img.height, img.width);
    // Row ty == 0 builds the tile's column spans, row ty == 1 its row spans.
    if (ty < 2) {
      const Axis a = make_axis(ty == 0 ? box.width : box.height, size);
      const int64_t i = (ty == 0 ? x0 : y0) + tx;
      Span s{0, 0, 0.f};
      float* w = ty == 0 ? wx + tx * taps_x : wy + tx * taps_y;
      if (i < size) {
        s = make_span(a, i);
        span_weights(a, s, w);
      }
      (ty == 0 ? x_start : y_start)[tx] = static_cast<int>(s.start);
      (ty == 0 ? x_count : y_count)[tx] = s.count;
    }
    __syncthreads();

    const int64_t x = x0 + tx;
    const bool mirrored = flip != nullptr && flip[n];
    if (x < size) {
      const float* wxs = wx + tx * taps_x;
      const int xs = x_start[tx], xc = x_count[tx];
      const int64_t xo = mirrored ? size - 1 - x : x;
      for (int k = ty; k < kTile; k += kRowsPerPass) {
        const int64_t y = y0 + k;
        if (y >= size) break;
        const float* wys = wy + k * taps_y;
        const int ys = y_start[k], yc = y_count[k];
        for (int64_t c = 0; c < out.channels; ++c) {
          const in_t* plane = img.data + c * img.stride_c + (box.top + ys) * img.stride_h +
                              (box.left + xs) * img.stride_w;
          float v = 0.f;
          for (int j = 0; j < yc; ++j) {
            const in_t* row = plane + j * img.stride_h;
            float hsum = 0.f;
            for (int i = 0; i < xc; ++i) {
              const float t = to_float(row[i * img.stride_w]) * wxs[i];
              hsum = i == 0 ? t : hsum + t;
            }
            const float t = hsum * wys[j];
            v = j == 0 ? t : v + t;
          }
          out.data[n * out.stride_n + c * out.stride_c + y * out.stride_h + xo * out.stride_w] =
              v * out.scale;
        }
      }
    }
    __syncthreads();  // the spans are rebuilt for the next crop of this block
  }
}

}  // namespace

void resized_crop_cuda(const std::vector<SourceImage>& sources, int64_t batch_stride,
                       at::ScalarType dtype, int64_t channels, const at::Tensor& boxes,
                       const at::Tensor& flip, float out_scale, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t batch = static_cast<int64_t>(sources.size());
  const int64_t size = out.size(2), crops = out.size(0);
  int64_t max_h = 0, max_w = 0;
  for (const SourceImage& s : sources) {
    max_h = std::max(max_h, s.height);
    max_w = std::max(max_w, s.width);
  }
  TORCH_CHECK(max_h < (int64_t(1) << 31) && max_w < (int64_t(1) << 31),
              "resized_crop: image sides must be < 2^31 on CUDA");
  // Tap bounds from the image sizes alone (the boxes stay on the device): a crop is at most as
  // large as its image.
  const int taps_x = max_taps_bound(max_w, size), taps_y = max_taps_bound(max_h, size);
  const size_t shared = sizeof(float) * kTile * (taps_x + taps_y) + sizeof(int) * 4 * kTile;
  TORCH_CHECK(shared <= 48 * 1024, "resized_crop: a ", max_h, " x ", max_w,
              " image shrunk to ", size, " px needs more than 48 KiB of filter taps per block on "
              "CUDA; resize such images closer to the crop size first");

  at::Tensor table;
  if (batch_stride < 0) {
    // One row per image; written in pinned memory and copied asynchronously (the caching host
    // allocator keeps the pinned block alive until the copy has run).
    at::Tensor host = at::empty({batch, kTableCols},
                                at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* p = host.mutable_data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const SourceImage& s = sources[b];
      p[b * kTableCols + 0] = reinterpret_cast<int64_t>(s.data);
      p[b * kTableCols + 1] = s.height;
      p[b * kTableCols + 2] = s.width;
      p[b * kTableCols + 3] = s.stride_c;
      p[b * kTableCols + 4] = s.stride_h;
      p[b * kTableCols + 5] = s.stride_w;
    }
    table = host.to(out.device(), /*non_blocking=*/true);
  }

  OutArgs o{out.mutable_data_ptr<float>(), out.stride(0), out.stride(1), out.stride(2),
            out.stride(3),                 size,          channels,      crops,
            out_scale};
  const int64_t tiles = ((size + kTile - 1) / kTile) * ((size + kTile - 1) / kTile);
  TORCH_CHECK(tiles <= 0x7fffffff, "resized_crop: size ", size, " is too large");
  const dim3 grid(static_cast<unsigned>(tiles),
                  static_cast<unsigned>(std::min<int64_t>(crops, kMaxGridY)));
  const dim3 block(kTile, kRowsPerPass);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const SourceImage& s0 = sources[0];
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, dtype,
                                  "resized_crop_cuda", [&] {
    Sources<scalar_t> src{
        DeviceImage<scalar_t>{static_cast<const scalar_t*>(s0.data), s0.height, s0.width,
                              s0.stride_c, s0.stride_h, s0.stride_w},
        batch_stride < 0 ? 0 : batch_stride,
        table.defined() ? table.const_data_ptr<int64_t>() : nullptr, batch};
    resized_crop_kernel<scalar_t><<<grid, block, shared, stream>>>(
        src, boxes.const_data_ptr<int64_t>(),
        flip.defined() ? flip.const_data_ptr<bool>() : nullptr, o, taps_x, taps_y);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace crop
}  // namespace simclr_ext
