// LARS on CUDA: two multi-tensor-apply launches per (device, dtype) bucket, whatever the
// tensor count (common/multi_tensor_apply.cuh), after one asynchronous upload of the plan:
//   1. NormFunctor: per chunk, partial sums of w^2 and g'^2 -> partial[2 * global_chunk + {0,1}]
//   2. UpdateFunctor: each block re-reduces its own tensor's chunk partials (in a fixed order,
//      so every block of a tensor gets the same bits), takes lr * trust_ratio, updates its chunk.
// A bucket with a tensor of more than kReduceOnceChunks chunks gets a third launch between the
// two, tensor_sums_kernel, which reduces each tensor's partials once (the same reduction, so the
// same bits); the update blocks then read that instead of all partials of their tensor each.
// The trust ratio and the element update are lars_math.h's, shared with the CPU kernel.
// No host synchronization: hyperparameters travel in the plan, norms stay on the device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/multi_tensor_apply.cuh"
#include "lars/lars.h"
#include "lars/lars_math.h"

namespace simclr_ext {
namespace lars {

namespace {

constexpr int kBlock = 512;
// Elements per chunk (one block): 16 packed iterations of kILP elements per thread.
constexpr int64_t kChunk = 32768;
// Elements per packed load: 16 bytes for fp32 (8 for half, 32 = two loads for fp64).
constexpr int kILP = 4;
static_assert(kChunk % (kBlock * kILP) == 0, "a chunk is whole packed iterations");

template <typename T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

// Per-tensor data carried in the plan.
template <typename acc_t>
struct LarsInfo {
  acc_t lr;
  acc_t weight_decay;
  acc_t momentum;
  acc_t eta;
  int32_t adaptation;  // 0: trust ratio 1 (biases, norm layers), no norm pass
  int32_t nesterov;
  int32_t packed;  // w, g, v all aligned for Pack loads
};

template <int kDepth, typename acc_t>
using Entry = mta::TensorEntry<kDepth, LarsInfo<acc_t>>;

// Every update block re-reading all chunk partials of its tensor costs (chunks per tensor)^2
// reads per tensor: nothing for ResNet-50 (<= 72 chunks) but ~40% extra traffic at 2^30
// elements. Above this count, one reduction per tensor (a third launch) replaces it; at this
// count each of the 512 threads of an update block reads one (w, g) pair.
constexpr int64_t kReduceOnceChunks = kBlock;

// (sum w^2, sum g'^2) of tensor e from its chunk partials, on every thread of the block, in a
// fixed order: the update blocks and tensor_sums_kernel run this same code with kBlock threads,
// so they get the same bits.
template <typename acc_t>
__device__ void tensor_sums(const Entry<3, acc_t>& e, int64_t chunk_size,
                            const acc_t* __restrict__ partial, acc_t& sw, acc_t& sg) {
  const int64_t n_chunks = mta::chunks_of(e.numel, chunk_size);
  sw = 0;
  sg = 0;
  for (int64_t c = threadIdx.x; c < n_chunks; c += kBlock) {
    sw += partial[2 * (e.first_chunk + c)];
    sg += partial[2 * (e.first_chunk + c) + 1];
  }
  __shared__ acc_t smem[kBlock / 32 + 1];
  sw = mta::block_sum<kBlock>(sw, smem);
  sg = mta::block_sum<kBlock>(sg, smem);
}

// One block per tensor of the plan: sums[2 t + {0, 1}] = tensor t's (sum w^2, sum g'^2);
// tensors without adaptation write nothing (the update never reads them).
template <typename acc_t>
__global__ void __launch_bounds__(kBlock)
    tensor_sums_kernel(const Entry<3, acc_t>* __restrict__ entries, int64_t chunk_size,
                       const acc_t* __restrict__ partial, acc_t* __restrict__ sums) {
  const Entry<3, acc_t>& e = entries[blockIdx.x];
  if (!e.info.adaptation) return;  // uniform over the block: no divergent barrier
  acc_t sw, sg;
  tensor_sums(e, chunk_size, partial, sw, sg);
  if (threadIdx.x == 0) {
    sums[2 * blockIdx.x] = sw;
    sums[2 * blockIdx.x + 1] = sg;
  }
}

__device__ inline float device_sqrt(float x) { return sqrtf(x); }
__device__ inline double device_sqrt(double x) { return sqrt(x); }

// Slots: addr[0] params w (scalar_t), addr[1] grads g (scalar_t), addr[2] momentum v (acc_t,
// unused here). Writes partial[2 * (first_chunk + chunk)] = sum w^2 and [.. + 1] = sum g'^2 over
// the chunk; tensors without adaptation write nothing (the update never reads them).
template <typename scalar_t, typename acc_t>
struct NormFunctor {
  __device__ void operator()(const Entry<3, acc_t>& e, int32_t /*tensor*/, int32_t chunk,
                             int64_t chunk_size, acc_t* __restrict__ partial) const {
    if (!e.info.adaptation) return;  // uniform over the block: no divergent barrier below
    const int64_t begin = static_cast<int64_t>(chunk) * chunk_size;
    const int64_t n = e.numel - begin < chunk_size ? e.numel - begin : chunk_size;
    const scalar_t* __restrict__ w = static_cast<const scalar_t*>(e.addr[0]) + begin;
    const scalar_t* __restrict__ g = static_cast<const scalar_t*>(e.addr[1]) + begin;
    const acc_t wd = e.info.weight_decay;
    acc_t sw = 0, sg = 0;
    int64_t tail = 0;
    if (e.info.packed) {
      const int64_t n_pack = n / kILP;
      for (int64_t i = threadIdx.x; i < n_pack; i += kBlock) {
        const Pack<scalar_t> wp = reinterpret_cast<const Pack<scalar_t>*>(w)[i];
        const Pack<scalar_t> gp = reinterpret_cast<const Pack<scalar_t>*>(g)[i];
#pragma unroll
        for (int k = 0; k < kILP; ++k) {
          const acc_t wk = static_cast<acc_t>(wp.v[k]);
          const acc_t gk = decayed_grad(wk, static_cast<acc_t>(gp.v[k]), wd);
          sw += wk * wk;
          sg += gk * gk;
        }
      }
      tail = n_pack * kILP;
    }
    for (int64_t i = tail + threadIdx.x; i < n; i += kBlock) {
      const acc_t wk = static_cast<acc_t>(w[i]);
      const acc_t gk = decayed_grad(wk, static_cast<acc_t>(g[i]), wd);
      sw += wk * wk;
      sg += gk * gk;
    }
    __shared__ acc_t smem[kBlock / 32 + 1];
    sw = mta::block_sum<kBlock>(sw, smem);
    sg = mta::block_sum<kBlock>(sg, smem);
    if (threadIdx.x == 0) {
      partial[2 * (e.first_chunk + chunk)] = sw;
      partial[2 * (e.first_chunk + chunk) + 1] = sg;
    }
  }
};

// Slots: addr[0] params w (scalar_t, in/out), addr[1] grads g (scalar_t), addr[2] momentum v
// (acc_t, in/out). partial: NormFunctor's output for the whole plan; sums: tensor_sums_kernel's
// output, or nullptr when that launch was skipped.
template <typename scalar_t, typename acc_t>
struct UpdateFunctor {
  __device__ void operator()(const Entry<3, acc_t>& e, int32_t tensor, int32_t chunk,
                             int64_t chunk_size, const acc_t* __restrict__ partial,
                             const acc_t* __restrict__ sums) const {
    acc_t scaled_lr = e.info.lr;
    if (e.info.adaptation) {
      // The tensor's norms: reduced once per tensor when the bucket has a large tensor, else
      // each block of the tensor repeats this small reduction (<= kReduceOnceChunks pairs)
      // instead of paying a third launch. `sums` is uniform over the launch.
      acc_t sw, sg;
      if (sums != nullptr) {
        sw = sums[2 * static_cast<int64_t>(tensor)];
        sg = sums[2 * static_cast<int64_t>(tensor) + 1];
      } else {
        tensor_sums(e, chunk_size, partial, sw, sg);
      }
      scaled_lr *= trust_ratio(device_sqrt(sw), device_sqrt(sg), e.info.eta, true);
    }
    const int64_t begin = static_cast<int64_t>(chunk) * chunk_size;
    const int64_t n = e.numel - begin < chunk_size ? e.numel - begin : chunk_size;
    scalar_t* __restrict__ w = static_cast<scalar_t*>(e.addr[0]) + begin;
    const scalar_t* __restrict__ g = static_cast<const scalar_t*>(e.addr[1]) + begin;
    acc_t* __restrict__ v = static_cast<acc_t*>(e.addr[2]) + begin;
    const acc_t wd = e.info.weight_decay;
    const acc_t m = e.info.momentum;
    const bool nesterov = e.info.nesterov != 0;
    int64_t tail = 0;
    if (e.info.packed) {
      const int64_t n_pack = n / kILP;
      for (int64_t i = threadIdx.x; i < n_pack; i += kBlock) {
        Pack<scalar_t> wp = reinterpret_cast<const Pack<scalar_t>*>(w)[i];
        const Pack<scalar_t> gp = reinterpret_cast<const Pack<scalar_t>*>(g)[i];
        Pack<acc_t> vp = reinterpret_cast<const Pack<acc_t>*>(v)[i];
#pragma unroll
        for (int k = 0; k < kILP; ++k) {
          acc_t wk = static_cast<acc_t>(wp.v[k]);
          update_element(wk, vp.v[k], static_cast<acc_t>(gp.v[k]), wd, m, scaled_lr, nesterov);
          wp.v[k] = static_cast<scalar_t>(wk);
        }
        reinterpret_cast<Pack<scalar_t>*>(w)[i] = wp;
        reinterpret_cast<Pack<acc_t>*>(v)[i] = vp;
      }
      tail = n_pack * kILP;
    }
    for (int64_t i = tail + threadIdx.x; i < n; i += kBlock) {
      acc_t wk = static_cast<acc_t>(w[i]);
      acc_t vk = v[i];
      update_element(wk, vk, static_cast<acc_t>(g[i]), wd, m, scaled_lr, nesterov);
      v[i] = vk;
      w[i] = static_cast<scalar_t>(wk);
    }
  }
};

bool is_aligned(const at::Tensor& t, size_t bytes) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0;
}

}  // namespace

void lars_step_cuda(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                    const std::vector<at::Tensor>& momentum_buffers,
                    const std::vector<TensorHyper>& hyper) {
  const c10::cuda::CUDAGuard guard(params[0].device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "lars_step_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const size_t n = params.size();
        std::vector<LarsInfo<acc_t>> infos(n);
        bool any_adaptation = false;
        bool large_tensor = false;  // an adapting tensor of more than kReduceOnceChunks chunks
        for (size_t t = 0; t < n; ++t) {
          const TensorHyper& h = hyper[t];
          infos[t].lr = static_cast<acc_t>(h.lr);
          infos[t].weight_decay = static_cast<acc_t>(h.weight_decay);
          infos[t].momentum = static_cast<acc_t>(h.momentum);
          infos[t].eta = static_cast<acc_t>(h.eta);
          infos[t].adaptation = h.adaptation ? 1 : 0;
          infos[t].nesterov = h.nesterov ? 1 : 0;
          infos[t].packed = is_aligned(params[t], sizeof(Pack<scalar_t>)) &&
                            is_aligned(grads[t], sizeof(Pack<scalar_t>)) &&
                            is_aligned(momentum_buffers[t], sizeof(Pack<acc_t>));
          any_adaptation = any_adaptation || h.adaptation;
          large_tensor = large_tensor ||
                         (h.adaptation && mta::chunks_of(params[t].numel(), kChunk) >
                                              kReduceOnceChunks);
        }
        const auto plan = mta::make_plan<3, LarsInfo<acc_t>>(
            {&params, &grads, &momentum_buffers}, infos, kChunk, params[0].device());
        if (plan.num_chunks == 0) return;
        // [num_chunks][2] partial sums; entries of non-adapting tensors stay unwritten/unread.
        at::Tensor partial = at::empty(
            {2 * plan.num_chunks},
            params[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        if (any_adaptation) {
          mta::multi_tensor_apply<kBlock>(plan, NormFunctor<scalar_t, acc_t>{},
                                          partial.data_ptr<acc_t>());
        }
        // [num_tensors][2] per-tensor sums, only for a bucket with a large tensor.
        at::Tensor sums;
        if (large_tensor) {
          sums = at::empty({2 * plan.num_tensors}, partial.options());
          tensor_sums_kernel<acc_t>
              <<<static_cast<unsigned>(plan.num_tensors), kBlock, 0,
                 at::cuda::getCurrentCUDAStream()>>>(plan.entries, plan.chunk_size,
                                                     partial.data_ptr<acc_t>(),
                                                     sums.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        mta::multi_tensor_apply<kBlock>(
            plan, UpdateFunctor<scalar_t, acc_t>{},
            static_cast<const acc_t*>(partial.data_ptr<acc_t>()),
            static_cast<const acc_t*>(sums.defined() ? sums.data_ptr<acc_t>() : nullptr));
      });
}

}  // namespace lars
}  // namespace simclr_ext
