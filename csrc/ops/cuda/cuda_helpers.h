// Helpers shared by the CUDA kernels: launch sizes, grid-stride loops, warp and
// block reductions, and the weighted pooling that attention_pool and masked_pool share.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace lavise_fast {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr unsigned int kFullMask = 0xffffffffu;

// Dynamic shared memory a kernel may use without opting in (48 KB), less room
// for the kernels' own static shared arrays.
constexpr int64_t kMaxSharedBytes = 44 * 1024;
constexpr int64_t kMaxSharedFloats = kMaxSharedBytes / static_cast<int64_t>(sizeof(float));

// Grid-stride loop over [0, n) with a 64-bit index.
#define LAVISE_CUDA_1D_KERNEL_LOOP(i, n)                                                   \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Blocks for `items` work items of which one block covers `per_block`; capped
// (the kernels use grid-stride loops) and at least one.
inline unsigned int grid_size(int64_t items, int64_t per_block = kThreads) {
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// The block's dynamic shared memory, as floats.
__device__ __forceinline__ float* shared_floats() {
  extern __shared__ float lavise_shared_floats[];
  return lavise_shared_floats;
}

// Sum over the warp; the result is valid in lane 0.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(kFullMask, v, offset);
  }
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, every thread calling); the
// result is returned to every thread. `scratch` holds kWarpSize entries.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : T(0);
    v = warp_sum(v);
    if (lane == 0) {
      scratch[0] = v;
    }
  }
  __syncthreads();
  return scratch[0];
}

// out[m, c] = sum_p features[rows[m], c, p] * weights[m, p] / HW, one block per
// row m (grid-stride), one warp per channel. The weight row is staged in dynamic
// shared memory when `stage` (HW <= kMaxSharedFloats).
template <typename scalar_t>
__global__ void weighted_pool_kernel(
    const scalar_t* __restrict__ features,
    const int64_t* __restrict__ rows,
    const float* __restrict__ weights,
    int64_t M,
    int64_t C,
    int64_t HW,
    bool stage,
    float* __restrict__ out) {
  float* staged = shared_floats();
  const int lane = threadIdx.x % kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  const float inv_hw = 1.0f / static_cast<float>(HW);
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const float* w = weights + m * HW;
    if (stage) {
      for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
        staged[p] = w[p];
      }
      __syncthreads();
      w = staged;
    }
    const scalar_t* image = features + rows[m] * C * HW;
    for (int64_t c = threadIdx.x / kWarpSize; c < C; c += warps) {
      const scalar_t* x = image + c * HW;
      float acc = 0.0f;
      for (int64_t p = lane; p < HW; p += kWarpSize) {
        acc += static_cast<float>(x[p]) * w[p];
      }
      acc = warp_sum(acc);
      if (lane == 0) {
        out[m * C + c] = acc * inv_hw;
      }
    }
    if (stage) {
      __syncthreads();  // before the next row overwrites the staged weights
    }
  }
}

// Launches weighted_pool_kernel: features [N, C, H, W] contiguous, rows [M] int64
// contiguous, weights [M, H*W] float32 contiguous -> [M, C] float32.
template <typename scalar_t>
at::Tensor weighted_pool_cuda(const at::Tensor& features, const at::Tensor& rows, const at::Tensor& weights) {
  const int64_t M = rows.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  auto out = at::empty({M, C}, features.options().dtype(at::kFloat));
  if (M == 0 || C == 0) {
    return out;
  }
  const bool stage = HW <= kMaxSharedFloats;
  const size_t shared = stage ? static_cast<size_t>(HW) * sizeof(float) : 0;
  weighted_pool_kernel<scalar_t><<<grid_size(M, 1), kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
      features.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), weights.data_ptr<float>(), M, C, HW, stage,
      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace cuda
}  // namespace lavise_fast
