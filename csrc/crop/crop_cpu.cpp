// CPU kernel of the resized crop: at::parallel_for over (crop, channel) work items. Each item
// resamples its crop separably, as ATen does (docs/architecture.md section 10.2): first along
// the rows (horizontal pass, every source row the vertical pass needs, into a per-thread float
// buffer of size rows x S), then along the columns, where one output row is a weighted sum of a
// few whole buffer rows, a straight vectorizable loop. The flip and the output scale are applied
// in the store, so every output element is written once. The passes live in crop_cpu.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "crop/crop_cpu.h"

namespace simclr_ext {
namespace crop {

namespace {

template <typename in_t>
void run_kernel(const std::vector<SourceImage>& sources, int64_t channels,
                const at::Tensor& boxes, const at::Tensor& flip, float out_scale,
                at::Tensor& out) {
  const int64_t n_crops = out.size(0), size = out.size(2);
  const int64_t batch = static_cast<int64_t>(sources.size());
  const int64_t* box_ptr = boxes.const_data_ptr<int64_t>();
  const bool* flip_ptr = flip.defined() ? flip.const_data_ptr<bool>() : nullptr;
  float* out_ptr = out.mutable_data_ptr<float>();
  const int64_t o_n = out.stride(0), o_c = out.stride(1), o_h = out.stride(2), o_w = out.stride(3);

  at::parallel_for(0, n_crops * channels, 1, [&](int64_t begin, int64_t end) {
    CpuCropper cropper;  // items of one crop are adjacent: its tables are built once
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / channels, c = item % channels;
      const Box box{box_ptr[4 * n], box_ptr[4 * n + 1], box_ptr[4 * n + 2], box_ptr[4 * n + 3]};
      const bool mirrored = flip_ptr != nullptr && flip_ptr[n];
      cropper.channel<in_t>(sources[n % batch], box, n, c, size, mirrored, out_scale,
                            out_ptr + n * o_n + c * o_c, o_h, o_w);
    }
  });
}

}  // namespace

void resized_crop_cpu(const std::vector<SourceImage>& sources, at::ScalarType dtype,
                      int64_t channels, const at::Tensor& boxes, const at::Tensor& flip,
                      float out_scale, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, dtype, "resized_crop_cpu",
                                  [&] {
    run_kernel<scalar_t>(sources, channels, boxes, flip, out_scale, out);
  });
}

}  // namespace crop
}  // namespace simclr_ext
