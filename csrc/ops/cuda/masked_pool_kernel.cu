#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../masked_pool.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

// weights[m, y * w + x] = masks[m, sy(y), sx(x)] (nearest-exact source pixel),
// one thread per output position (grid-stride). Binary (bool, uint8) masks give
// 1 for any non-zero value; floating masks are weights.
template <typename mask_t>
__global__ void resize_masks_cuda_kernel(
    const mask_t* __restrict__ masks,
    int64_t M,
    int64_t H,
    int64_t W,
    int64_t h,
    int64_t w,
    bool is_binary,
    float* __restrict__ weights) {
  LAVISE_CUDA_1D_KERNEL_LOOP(i, M * h * w) {
    const int64_t x = i % w;
    const int64_t y = (i / w) % h;
    const int64_t m = i / (h * w);
    const int64_t sy = nearest_exact_source(y, H, h);
    const int64_t sx = nearest_exact_source(x, W, w);
    const float v = static_cast<float>(masks[(m * H + sy) * W + sx]);
    weights[i] = is_binary ? static_cast<float>(v != 0.0f) : v;
  }
}

at::Tensor masked_pool_kernel(const at::Tensor& features, const at::Tensor& masks, const at::Tensor& rows) {
  check_masked_pool(features, masks, rows);
  const int64_t M = masks.size(0), h = features.size(2), w = features.size(3);
  if (M == 0 || features.size(1) == 0) {
    return at::empty({M, features.size(1)}, features.options().dtype(at::kFloat));
  }
  c10::cuda::CUDAGuard guard(features.device());
  auto x = features.contiguous();
  auto mk = masks.contiguous();
  // CPU rows (already range-checked on the host) are copied without waiting for the device.
  auto r = rows.to(x.device(), at::kLong, /*non_blocking=*/true).contiguous();
  const int64_t H = mk.size(1), W = mk.size(2);
  const bool is_binary = !at::isFloatingType(mk.scalar_type());
  auto weights = at::empty({M, h * w}, x.options().dtype(at::kFloat));
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, mk.scalar_type(), "masked_pool_cuda", [&] {
    resize_masks_cuda_kernel<scalar_t><<<grid_size(M * h * w), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        mk.data_ptr<scalar_t>(), M, H, W, h, w, is_binary, weights.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_pool_cuda", [&] {
    out = weighted_pool_cuda<scalar_t>(x, r, weights);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("masked_pool", &masked_pool_kernel);
}

}  // namespace lavise_fast
