// LARS on the CPU: one fused parallel loop over the chunks of every tensor of the bucket.
//   pass 1 (parallel over all chunks): per-chunk partial sums of w^2 and g'^2
//   host  (serial, one value per chunk): per-tensor norms -> scaled_lr = lr * trust_ratio
//   pass 2 (parallel over all chunks): the momentum update of w and v
// Tensors without layer adaptation skip pass 1. Chunk partials are summed in a fixed order, so
// a step is deterministic whatever the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "common/numeric.h"
#include "lars/lars.h"
#include "lars/lars_math.h"

namespace simclr_ext {
namespace lars {

namespace {

// Elements per chunk: big enough to amortize scheduling, small enough to balance two to a few
// dozen threads over ResNet-sized parameter sets.
constexpr int64_t kChunk = 32768;
// Sum of squares in fp32 over at most this many elements before spilling into fp64: keeps the
// fp32 round-off of a norm ~1e-7 relative while the inner loop stays a vectorized fp32 loop.
constexpr int64_t kSubBlock = 1024;
// A bucket with fewer elements runs on the calling thread: waking the pool costs more than the
// work (and, on a busy machine, waits for a descheduled worker for milliseconds).
constexpr int64_t kParallelMinElements = int64_t(1) << 18;

// fn(begin, end) over chunk indices: in parallel for big buckets, inline for small ones.
template <typename F>
void for_chunks(int64_t num_chunks, int64_t total_elements, const F& fn) {
  if (total_elements < kParallelMinElements) {
    fn(0, num_chunks);
  } else {
    at::parallel_for(0, num_chunks, 1, fn);
  }
}

struct Chunk {
  int32_t tensor;
  int64_t begin;
  int64_t end;
};

// Independent partial sums per variable: one vector accumulator would make the loop wait on the
// add latency each iteration; kLanes of them (4 SSE / 2 AVX registers of fp32) keep it streaming.
constexpr int kLanes = 16;

template <typename scalar_t, typename acc_t>
void chunk_sumsq(const scalar_t* __restrict__ w, const scalar_t* __restrict__ g, int64_t n,
                 acc_t weight_decay, double& sum_w, double& sum_g) {
  for (int64_t s = 0; s < n; s += kSubBlock) {
    const int64_t e = std::min(n, s + kSubBlock);
    acc_t sw[kLanes] = {}, sg[kLanes] = {};
    int64_t i = s;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        const acc_t wi = static_cast<acc_t>(w[i + j]);
        const acc_t gi = decayed_grad(wi, static_cast<acc_t>(g[i + j]), weight_decay);
        sw[j] += wi * wi;
        sg[j] += gi * gi;
      }
    }
    for (; i < e; ++i) {
      const acc_t wi = static_cast<acc_t>(w[i]);
      const acc_t gi = decayed_grad(wi, static_cast<acc_t>(g[i]), weight_decay);
      sw[0] += wi * wi;
      sg[0] += gi * gi;
    }
    acc_t tw = 0, tg = 0;
    for (int j = 0; j < kLanes; ++j) {
      tw += sw[j];
      tg += sg[j];
    }
    sum_w += static_cast<double>(tw);
    sum_g += static_cast<double>(tg);
  }
}

template <typename scalar_t, typename acc_t, bool kNesterov>
void chunk_update(scalar_t* __restrict__ w, const scalar_t* __restrict__ g, acc_t* __restrict__ v,
                  int64_t n, acc_t weight_decay, acc_t momentum, acc_t scaled_lr) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    acc_t wi = static_cast<acc_t>(w[i]);
    acc_t vi = v[i];
    update_element(wi, vi, static_cast<acc_t>(g[i]), weight_decay, momentum, scaled_lr,
                   kNesterov);
    v[i] = vi;
    w[i] = static_cast<scalar_t>(wi);
  }
}

}  // namespace

void lars_step_cpu(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                   const std::vector<at::Tensor>& momentum_buffers,
                   const std::vector<TensorHyper>& hyper) {
  const int64_t num_tensors = static_cast<int64_t>(params.size());
  // Chunk table over all tensors; first_chunk[t] .. first_chunk[t + 1] are tensor t's chunks.
  std::vector<Chunk> chunks;
  std::vector<int64_t> first_chunk(num_tensors + 1, 0);
  int64_t total_elements = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    first_chunk[t] = static_cast<int64_t>(chunks.size());
    const int64_t n = params[t].numel();
    total_elements += n;
    for (int64_t b = 0; b < n; b += kChunk) {
      chunks.push_back(Chunk{static_cast<int32_t>(t), b, std::min(n, b + kChunk)});
    }
  }
  first_chunk[num_tensors] = static_cast<int64_t>(chunks.size());
  const int64_t num_chunks = first_chunk[num_tensors];

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, params[0].scalar_type(), "lars_step_cpu", [&] {
        using acc_t = accumulation_t<scalar_t>;
        std::vector<scalar_t*> w_ptr(num_tensors);
        std::vector<const scalar_t*> g_ptr(num_tensors);
        std::vector<acc_t*> v_ptr(num_tensors);
        for (int64_t t = 0; t < num_tensors; ++t) {
          w_ptr[t] = params[t].data_ptr<scalar_t>();
          g_ptr[t] = grads[t].data_ptr<scalar_t>();
          v_ptr[t] = momentum_buffers[t].data_ptr<acc_t>();
        }

        // Pass 1: partial sums of squares, [num_chunks][2] = (sum w^2, sum g'^2).
        std::vector<double> partial(2 * num_chunks, 0.0);
        for_chunks(num_chunks, total_elements, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            const Chunk& ck = chunks[c];
            const TensorHyper& h = hyper[ck.tensor];
            if (!h.adaptation) continue;
            chunk_sumsq<scalar_t, acc_t>(w_ptr[ck.tensor] + ck.begin, g_ptr[ck.tensor] + ck.begin,
                                         ck.end - ck.begin, static_cast<acc_t>(h.weight_decay),
                                         partial[2 * c], partial[2 * c + 1]);
          }
        });

        // Per tensor: norms in fp64, summed chunk by chunk in order, then lr * trust.
        std::vector<acc_t> scaled_lr(num_tensors);
        for (int64_t t = 0; t < num_tensors; ++t) {
          const TensorHyper& h = hyper[t];
          double sw = 0.0, sg = 0.0;
          if (h.adaptation) {
            for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
              sw += partial[2 * c];
              sg += partial[2 * c + 1];
            }
          }
          const double trust = trust_ratio(std::sqrt(sw), std::sqrt(sg), h.eta, h.adaptation);
          scaled_lr[t] = static_cast<acc_t>(h.lr * trust);
        }

        // Pass 2: the update, chunk by chunk.
        for_chunks(num_chunks, total_elements, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            const Chunk& ck = chunks[c];
            const TensorHyper& h = hyper[ck.tensor];
            const int64_t t = ck.tensor;
            const int64_t n = ck.end - ck.begin;
            const acc_t wd = static_cast<acc_t>(h.weight_decay);
            const acc_t m = static_cast<acc_t>(h.momentum);
            if (h.nesterov) {
              chunk_update<scalar_t, acc_t, true>(w_ptr[t] + ck.begin, g_ptr[t] + ck.begin,
                                                  v_ptr[t] + ck.begin, n, wd, m, scaled_lr[t]);
            } else {
              chunk_update<scalar_t, acc_t, false>(w_ptr[t] + ck.begin, g_ptr[t] + ck.begin,
                                                   v_ptr[t] + ck.begin, n, wd, m, scaled_lr[t]);
            }
          }
        });
      });
}

}  // namespace lars
}  // namespace simclr_ext
