// Batched antialiased resized crop + horizontal flip (docs/architecture.md section 10): the
// entries bound in csrc/bindings.cpp and the per-backend kernels they dispatch to.
//
// Layout shared by every function here (B source images, N = k * B crops, k >= 1):
//   images:  [B, C, H, W] uint8 or floating, any strides; or a list of B tensors [C, H_i, W_i]
//            (one dtype, one device, same C), any strides
//   boxes:   [N, 4] int64 (top, left, height, width) in source pixels; crop n reads image n % B
//   flip:    [N] bool or undefined: crop n is mirrored left-right after the resize
//   out:     [N, C, size, size] float32, NCHW or NHWC (channels_last) strides, written once:
//            out = out_scale * resize(crop) (out_scale 1 keeps the input's value range)
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace simclr_ext {
namespace crop {

// One source image as the kernels see it: a typed base pointer is taken at dispatch.
struct SourceImage {
  const void* data;
  int64_t height, width;
  int64_t stride_c, stride_h, stride_w;  // element strides
};

at::Tensor resized_crop(const at::Tensor& images, const at::Tensor& boxes,
                        const c10::optional<at::Tensor>& flip, int64_t size, double out_scale,
                        bool channels_last);
at::Tensor resized_crop_list(const std::vector<at::Tensor>& images, const at::Tensor& boxes,
                             const c10::optional<at::Tensor>& flip, int64_t size,
                             double out_scale, bool channels_last);

// Source descriptors of a batch tensor [B, C, H, W] or a list of [C, H_i, W_i] tensors, after the
// checks every kernel relies on (dims, dtype uint8 or floating, one dtype / device / C for a
// list); `op` names the caller in the messages.
std::vector<SourceImage> batch_sources(const at::Tensor& images, const char* op);
std::vector<SourceImage> list_sources(const std::vector<at::Tensor>& images, const char* op);

// The checks of boxes [N, 4] int64 (N a multiple of the source count) and flip ([N] bool or
// undefined) on `device`; check_box_values reads CPU boxes and refuses one outside its image.
void check_boxes_and_flip(const at::Tensor& boxes, const at::Tensor& flip, int64_t batch,
                          const at::Device& device);
void check_box_values(const at::Tensor& boxes, const std::vector<SourceImage>& sources);

// [B, 2] int64 (height, width) of every image of a list, on the CPU (pinned when asked, so a
// sampler can move it to the GPU without a synchronization).
at::Tensor image_sizes(const std::vector<at::Tensor>& images, bool pin_memory);

// Backends: inputs validated; `sources` has one entry per source image (B), all with
// `channels` channels and dtype `dtype`; boxes contiguous int64 [N, 4] on the images' device,
// flip contiguous bool [N] or undefined; out allocated by the entry.
void resized_crop_cpu(const std::vector<SourceImage>& sources, at::ScalarType dtype,
                      int64_t channels, const at::Tensor& boxes, const at::Tensor& flip,
                      float out_scale, at::Tensor& out);
#ifdef WITH_CUDA
// batch_stride >= 0: the sources are one batch tensor (image b at sources[0].data + b *
// batch_stride elements, all of sources[0]'s size and strides), read without a table; -1: a
// list, whose per-image table is copied to the device asynchronously.
void resized_crop_cuda(const std::vector<SourceImage>& sources, int64_t batch_stride,
                       at::ScalarType dtype, int64_t channels, const at::Tensor& boxes,
                       const at::Tensor& flip, float out_scale, at::Tensor& out);
#endif

}  // namespace crop
}  // namespace simclr_ext
