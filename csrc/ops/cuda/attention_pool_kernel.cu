#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../attention_pool.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

// weights[m, p] from the attention map a = features[rows[m], filters[m]], one
// block per row m (grid-stride): projection block-reduces the sum of squares.
template <typename scalar_t>
__global__ void attention_weights_cuda_kernel(
    const scalar_t* __restrict__ features,
    const int64_t* __restrict__ rows,
    const int64_t* __restrict__ filters,
    int64_t M,
    int64_t C,
    int64_t HW,
    bool projection,
    const float* __restrict__ thresholds,
    float* __restrict__ weights) {
  __shared__ float scratch[kWarpSize];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const scalar_t* a = features + (rows[m] * C + filters[m]) * HW;
    float* wm = weights + m * HW;
    float inv_norm = 0.0f, threshold = 0.0f;
    if (projection) {
      float ss = 0.0f;
      for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
        const float v = static_cast<float>(a[p]);
        ss += v * v;
      }
      inv_norm = inverse_norm(block_sum(ss, scratch));
    } else {
      threshold = thresholds[filters[m]];
    }
    for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
      wm[p] = attention_weight(static_cast<float>(a[p]), projection, inv_norm, threshold);
    }
  }
}

template <typename scalar_t>
at::Tensor attention_pool_impl(
    const at::Tensor& features,
    const at::Tensor& rows,
    const at::Tensor& filters,
    bool projection,
    const float* thresholds) {
  const int64_t M = rows.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  auto weights = at::empty({M, HW}, features.options().dtype(at::kFloat));
  attention_weights_cuda_kernel<scalar_t><<<grid_size(M, 1), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      features.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), filters.data_ptr<int64_t>(), M, C, HW, projection,
      thresholds, weights.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return weighted_pool_cuda<scalar_t>(features, rows, weights);
}

at::Tensor attention_pool_kernel(
    const at::Tensor& features,
    const at::Tensor& rows,
    const at::Tensor& filters,
    c10::string_view mode,
    const std::optional<at::Tensor>& thresholds) {
  const auto parsed = check_attention_pool(features, rows, filters, std::string(mode), thresholds);
  const bool projection = parsed == AttentionMode::Projection;
  const int64_t M = rows.size(0), HW = features.size(2) * features.size(3);
  if (M == 0 || features.size(1) == 0) {
    return at::empty({M, features.size(1)}, features.options().dtype(at::kFloat));
  }
  c10::cuda::CUDAGuard guard(features.device());
  auto x = features.contiguous();
  auto r = rows.to(at::kLong).contiguous();
  auto f = filters.to(at::kLong).contiguous();
  at::Tensor t;
  if (!projection) {
    t = thresholds->to(at::kFloat).contiguous();
  }
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "attention_pool_cuda", [&] {
    out = attention_pool_impl<scalar_t>(x, r, f, projection, projection ? nullptr : t.data_ptr<float>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("attention_pool", &attention_pool_kernel);
}

}  // namespace lavise_fast
