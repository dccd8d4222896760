// Multi-tensor apply: one kernel launch walks fixed-size chunks of many tensors, the pattern of
// NVIDIA/apex csrc/multi_tensor_apply.cuh used by fused optimizers. A caller's functor gets one
// chunk per block: its tensor's entry (slot addresses, numel, per-tensor info) and the chunk's
// index within the tensor.
//
// Unlike apex, which packs at most ~110 tensors / 320 chunks into the kernel's argument block
// and so launches more often as the tensor count grows, the launch plan lives in one device
// buffer written by a single asynchronous copy from pinned host memory:
//   entries [num_tensors]: TensorEntry (addr[depth], numel, first_chunk, info)
//   chunks  [num_chunks]:  ChunkRef (tensor, chunk)
// so every stage is exactly one launch whatever the tensor count, and nothing waits on the host
// (the caching host allocator keeps the pinned block until the copy has run on the stream).
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <array>
#include <cstring>
#include <vector>

#include "common/reduce.cuh"  // block_sum, which the functors use for per-chunk sums

namespace simclr_ext {
namespace mta {

// One tensor of the list: addr[d] is the data pointer of slot d (e.g. 0: params, 1: grads,
// 2: momentum; the functor's comment names them), info is the caller's per-tensor POD data.
template <int kDepth, typename Info>
struct TensorEntry {
  void* addr[kDepth];
  int64_t numel;
  int64_t first_chunk;  // this tensor's chunks are first_chunk .. first_chunk + num_chunks(numel)
  Info info;
};

struct ChunkRef {
  int32_t tensor;  // index into the entries
  int32_t chunk;   // chunk index within that tensor: elements [chunk * chunk_size, ...)
};

template <int kDepth, typename Info>
struct Plan {
  using Entry = TensorEntry<kDepth, Info>;
  at::Tensor buffer;  // device bytes holding entries and chunks; keep alive while kernels run
  const Entry* entries = nullptr;
  const ChunkRef* chunks = nullptr;
  int64_t num_tensors = 0;
  int64_t num_chunks = 0;
  int64_t chunk_size = 0;
};

C10_HOST_DEVICE inline int64_t chunks_of(int64_t numel, int64_t chunk_size) {
  return (numel + chunk_size - 1) / chunk_size;
}

// Builds the plan for lists[0..kDepth) (same length, tensor t of each list has the same numel)
// and uploads it to `device` on the current stream. infos[t] is copied into entry t.
template <int kDepth, typename Info>
Plan<kDepth, Info> make_plan(const std::array<const std::vector<at::Tensor>*, kDepth>& lists,
                             const std::vector<Info>& infos, int64_t chunk_size,
                             const at::Device& device) {
  using Entry = TensorEntry<kDepth, Info>;
  Plan<kDepth, Info> plan;
  const int64_t n = static_cast<int64_t>(lists[0]->size());
  plan.num_tensors = n;
  plan.chunk_size = chunk_size;
  std::vector<Entry> entries(n);
  std::vector<ChunkRef> chunks;
  for (int64_t t = 0; t < n; ++t) {
    Entry& e = entries[t];
    for (int d = 0; d < kDepth; ++d) e.addr[d] = (*lists[d])[t].data_ptr();
    e.numel = (*lists[0])[t].numel();
    e.first_chunk = static_cast<int64_t>(chunks.size());
    e.info = infos[t];
    const int64_t nc = chunks_of(e.numel, chunk_size);
    TORCH_CHECK(t < INT32_MAX && nc < INT32_MAX, "multi_tensor_apply: too many tensors or chunks");
    for (int64_t c = 0; c < nc; ++c) {
      chunks.push_back(ChunkRef{static_cast<int32_t>(t), static_cast<int32_t>(c)});
    }
  }
  plan.num_chunks = static_cast<int64_t>(chunks.size());
  if (plan.num_chunks == 0) return plan;
  TORCH_CHECK(plan.num_chunks <= INT32_MAX, "multi_tensor_apply: too many chunks for one grid");

  // Layout: entries, then chunks at a 16-byte aligned offset.
  const int64_t entry_bytes = n * static_cast<int64_t>(sizeof(Entry));
  const int64_t chunk_offset = (entry_bytes + 15) / 16 * 16;
  const int64_t total = chunk_offset + plan.num_chunks * static_cast<int64_t>(sizeof(ChunkRef));
  at::Tensor host =
      at::empty({total}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), entries.data(), entry_bytes);
  std::memcpy(static_cast<char*>(host.data_ptr()) + chunk_offset, chunks.data(),
              plan.num_chunks * sizeof(ChunkRef));
  plan.buffer = at::empty({total}, at::TensorOptions().dtype(at::kByte).device(device));
  // Asynchronous on the current stream: copy_ records the pinned block's use on the stream.
  plan.buffer.copy_(host, /*non_blocking=*/true);
  const char* base = static_cast<const char*>(plan.buffer.data_ptr());
  plan.entries = reinterpret_cast<const Entry*>(base);
  plan.chunks = reinterpret_cast<const ChunkRef*>(base + chunk_offset);
  return plan;
}

// One block per chunk: functor(entry, tensor_index, chunk_index, chunk_size, args...).
template <int kBlock, typename Entry, typename Functor, typename... Args>
__global__ void __launch_bounds__(kBlock)
    multi_tensor_apply_kernel(const Entry* __restrict__ entries,
                              const ChunkRef* __restrict__ chunks, int64_t chunk_size,
                              Functor functor, Args... args) {
  const ChunkRef c = chunks[blockIdx.x];
  functor(entries[c.tensor], c.tensor, c.chunk, chunk_size, args...);
}

// One launch over every chunk of the plan, on the current stream.
template <int kBlock, int kDepth, typename Info, typename Functor, typename... Args>
void multi_tensor_apply(const Plan<kDepth, Info>& plan, Functor functor, Args... args) {
  if (plan.num_chunks == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  multi_tensor_apply_kernel<kBlock><<<static_cast<unsigned>(plan.num_chunks), kBlock, 0, stream>>>(
      plan.entries, plan.chunks, plan.chunk_size, functor, args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mta
}  // namespace simclr_ext
