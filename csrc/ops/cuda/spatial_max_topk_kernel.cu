#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>

#include "../spatial_max_topk.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

// maxima[map] = max of the HW values of map (NaN ignored; NaN if all are NaN),
// one warp per map (grid-stride over maps).
template <typename scalar_t>
__global__ void spatial_max_cuda_kernel(
    const scalar_t* __restrict__ features,
    int64_t maps,
    int64_t HW,
    float* __restrict__ maxima) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps_per_block = blockDim.x / kWarpSize;
  const int64_t stride = warps_per_block * gridDim.x;
  for (int64_t map = blockIdx.x * warps_per_block + threadIdx.x / kWarpSize; map < maps; map += stride) {
    const scalar_t* x = features + map * HW;
    float m = -std::numeric_limits<float>::infinity();
    bool any_number = false;
    for (int64_t p = lane; p < HW; p += kWarpSize) {
      const float v = static_cast<float>(x[p]);
      m = v > m ? v : m;
      any_number = any_number || v == v;
    }
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
      const float other = __shfl_down_sync(kFullMask, m, offset);
      m = other > m ? other : m;
    }
    any_number = __any_sync(kFullMask, any_number);
    if (lane == 0) {
      maxima[map] = any_number ? m : std::numeric_limits<float>::quiet_NaN();
    }
  }
}

// One thread per channel: inserts the N maxima of the batch, in image order,
// into the channel's ranked list (values/indices [C, P] contiguous).
__global__ void update_topk_cuda_kernel(
    const float* __restrict__ maxima,
    int64_t N,
    int64_t C,
    int64_t P,
    int64_t base_index,
    float* __restrict__ values,
    int64_t* __restrict__ indices) {
  LAVISE_CUDA_1D_KERNEL_LOOP(c, C) {
    float* v = values + c * P;
    int64_t* id = indices + c * P;
    for (int64_t n = 0; n < N; ++n) {
      insert_ranked(v, id, P, 1, maxima[n * C + c], base_index + n);
    }
  }
}

template <typename scalar_t>
void spatial_max_topk_impl(
    const at::Tensor& features,
    at::Tensor& values,
    at::Tensor& indices,
    int64_t base_index,
    at::Tensor& maxima) {
  const int64_t N = features.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const int64_t P = values.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t maps = N * C;
  const int64_t warps_per_block = kThreads / kWarpSize;
  spatial_max_cuda_kernel<scalar_t><<<grid_size(maps, warps_per_block), kThreads, 0, stream>>>(
      features.data_ptr<scalar_t>(), maps, HW, maxima.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (P == 0) {
    return;
  }
  update_topk_cuda_kernel<<<grid_size(C), kThreads, 0, stream>>>(
      maxima.data_ptr<float>(), N, C, P, base_index, values.data_ptr<float>(), indices.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor spatial_max_topk_kernel(
    const at::Tensor& features,
    at::Tensor& values,
    at::Tensor& indices,
    int64_t base_index) {
  check_spatial_max_topk(features, values, indices);
  TORCH_CHECK_VALUE(base_index >= 0, "base_index must be non-negative, got ", base_index);
  auto maxima = at::empty({features.size(0), features.size(1)}, features.options().dtype(at::kFloat));
  if (features.numel() == 0) {
    return maxima;
  }
  c10::cuda::CUDAGuard guard(features.device());
  auto x = features.contiguous();
  update_contiguous_state(values, indices, [&](at::Tensor& v, at::Tensor& i) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_max_topk_cuda", [&] {
      spatial_max_topk_impl<scalar_t>(x, v, i, base_index, maxima);
    });
  });
  return maxima;
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("spatial_max_topk", &spatial_max_topk_kernel);
}

}  // namespace lavise_fast
