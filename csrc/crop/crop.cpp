// Resized-crop entries: cheap invariant checks (docs/architecture.md section 5), one source
// descriptor per image (a batch tensor and a list of tensors of different sizes take the same
// kernels, without packing the pixels), then dispatch to the CPU or CUDA kernel.
#include "crop/crop.h"

#include "common/checks.h"
#include "crop/crop_math.h"

namespace simclr_ext {
namespace crop {

namespace {

bool supported_dtype(at::ScalarType t) { return t == at::kByte || at::isFloatingType(t); }

SourceImage describe(const at::Tensor& img) {  // img: [C, H, W]
  return SourceImage{img.const_data_ptr(), img.size(1), img.size(2),
                     img.stride(0),        img.stride(1), img.stride(2)};
}

at::Tensor run(const std::vector<SourceImage>& sources, int64_t batch_stride,
               at::ScalarType dtype, int64_t channels, const at::Device& device,
               const at::Tensor& boxes, const c10::optional<at::Tensor>& flip_opt, int64_t size,
               double out_scale, bool channels_last) {
  const at::Tensor flip = flip_opt.has_value() ? *flip_opt : at::Tensor();
  check_boxes_and_flip(boxes, flip, static_cast<int64_t>(sources.size()), device);
  TORCH_CHECK(size >= 1, "size must be >= 1, got ", size);
  TORCH_CHECK(std::isfinite(out_scale), "out_scale must be finite, got ", out_scale);
  const int64_t n = boxes.size(0);
  at::Tensor out = at::empty(
      {n, channels, size, size}, at::TensorOptions().dtype(at::kFloat).device(device),
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor b = boxes.contiguous();
  const at::Tensor f = flip.defined() ? flip.contiguous() : flip;
  if (device.is_cuda()) {
#ifdef WITH_CUDA
    resized_crop_cuda(sources, batch_stride, dtype, channels, b, f, static_cast<float>(out_scale),
                      out);
#endif
  } else {
    check_box_values(b, sources);
    resized_crop_cpu(sources, dtype, channels, b, f, static_cast<float>(out_scale), out);
  }
  return out;
}

}  // namespace

void check_boxes_and_flip(const at::Tensor& boxes, const at::Tensor& flip, int64_t batch,
                          const at::Device& device) {
  SIMCLR_CHECK_DEFINED(boxes);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "boxes must have shape [N, 4] (top, left, height, width), got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kLong, "boxes must be int64, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == device, "boxes must be on the images' device ", device, ", got ",
              boxes.device());
  const int64_t n = boxes.size(0);
  TORCH_CHECK(batch > 0 ? n % batch == 0 : n == 0, "boxes must have a multiple of the ", batch,
              " images as rows (crop n reads image n % B), got ", n);
  if (flip.defined()) {
    TORCH_CHECK(flip.dim() == 1 && flip.size(0) == n, "flip must have shape [", n,
                "] (one per box), got ", flip.sizes());
    TORCH_CHECK(flip.scalar_type() == at::kBool, "flip must be bool, got ", flip.scalar_type());
    TORCH_CHECK(flip.device() == device, "flip must be on the images' device ", device, ", got ",
                flip.device());
  }
}

// On the CPU the boxes are read for free, so a bad box is an error naming it. (CUDA: reading
// them would synchronize; the kernel clamps them into the image, see crop_math.h clamp_box.)
void check_box_values(const at::Tensor& boxes, const std::vector<SourceImage>& sources) {
  const int64_t n = boxes.size(0), batch = static_cast<int64_t>(sources.size());
  const int64_t* b = boxes.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const Box box{b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]};
    const SourceImage& s = sources[i % batch];
    TORCH_CHECK(box.height >= 1 && box.width >= 1, "boxes[", i, "] = (top ", box.top, ", left ",
                box.left, ", height ", box.height, ", width ", box.width,
                ") must have height and width >= 1");
    TORCH_CHECK(box_inside(box, s.height, s.width), "boxes[", i, "] = (top ", box.top, ", left ",
                box.left, ", height ", box.height, ", width ", box.width,
                ") must lie inside image ", i % batch, " of size ", s.height, " x ", s.width);
  }
}

std::vector<SourceImage> batch_sources(const at::Tensor& images, const char* op) {
  SIMCLR_CHECK_DEFINED(images);
  check_backend_available(images, op);
  TORCH_CHECK(images.dim() == 4, "images must be a 4-d batch [B, C, H, W], got shape ",
              images.sizes());
  TORCH_CHECK(supported_dtype(images.scalar_type()),
              "images must be uint8 or floating (float32, float64, bfloat16, float16), got ",
              images.scalar_type());
  TORCH_CHECK(images.size(1) >= 1, "images must have at least one channel, got shape ",
              images.sizes());
  const int64_t batch = images.size(0);
  std::vector<SourceImage> sources;
  sources.reserve(batch);
  for (int64_t i = 0; i < batch; ++i) {
    // Strides and sizes only (no view objects): the data pointer advances by the batch stride.
    SourceImage s{static_cast<const char*>(images.const_data_ptr()) +
                      i * images.stride(0) * images.element_size(),
                  images.size(2),   images.size(3),
                  images.stride(1), images.stride(2), images.stride(3)};
    sources.push_back(s);
  }
  return sources;
}

std::vector<SourceImage> list_sources(const std::vector<at::Tensor>& images, const char* op) {
  TORCH_CHECK(!images.empty(), "images must be a non-empty list of [C, H, W] tensors");
  const at::Tensor& first = images[0];
  SIMCLR_CHECK_DEFINED(first);
  check_backend_available(first, op);
  TORCH_CHECK(supported_dtype(first.scalar_type()),
              "images must be uint8 or floating (float32, float64, bfloat16, float16), got ",
              first.scalar_type());
  std::vector<SourceImage> sources;
  sources.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& img = images[i];
    TORCH_CHECK(img.defined(), "images[", i, "] must be a tensor, got None");
    TORCH_CHECK(img.dim() == 3, "images[", i, "] must be 3-d [C, H, W], got shape ", img.sizes());
    TORCH_CHECK(img.scalar_type() == first.scalar_type(), "images[", i, "] has dtype ",
                img.scalar_type(), ", but images[0] has ", first.scalar_type());
    TORCH_CHECK(img.device() == first.device(), "images[", i, "] is on ", img.device(),
                ", but images[0] is on ", first.device());
    TORCH_CHECK(img.size(0) == first.size(0) && img.size(0) >= 1, "images[", i, "] has ",
                img.size(0), " channels, but images[0] has ", first.size(0),
                " (all need the same number, at least 1)");
    sources.push_back(describe(img));
  }
  return sources;
}

at::Tensor resized_crop(const at::Tensor& images, const at::Tensor& boxes,
                        const c10::optional<at::Tensor>& flip, int64_t size, double out_scale,
                        bool channels_last) {
  const std::vector<SourceImage> sources = batch_sources(images, "resized_crop");
  return run(sources, images.stride(0), images.scalar_type(), images.size(1), images.device(),
             boxes, flip, size, out_scale, channels_last);
}

at::Tensor resized_crop_list(const std::vector<at::Tensor>& images, const at::Tensor& boxes,
                             const c10::optional<at::Tensor>& flip, int64_t size,
                             double out_scale, bool channels_last) {
  const std::vector<SourceImage> sources = list_sources(images, "resized_crop");
  return run(sources, -1, images[0].scalar_type(), images[0].size(0), images[0].device(), boxes,
             flip, size, out_scale, channels_last);
}

at::Tensor image_sizes(const std::vector<at::Tensor>& images, bool pin_memory) {
  const int64_t n = static_cast<int64_t>(images.size());
  at::Tensor sizes =
      at::empty({n, 2}, at::TensorOptions().dtype(at::kLong).pinned_memory(pin_memory));
  int64_t* p = sizes.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(images[i].defined() && images[i].dim() == 3, "images[", i,
                "] must be a 3-d [C, H, W] tensor");
    p[2 * i] = images[i].size(1);
    p[2 * i + 1] = images[i].size(2);
  }
  return sizes;
}

}  // namespace crop
}  // namespace simclr_ext
