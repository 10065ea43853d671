#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../upsample_iou.h"
#include "cuda_helpers.h"

namespace lavise_fast {
namespace {

using namespace lavise_fast::cuda;

// Masks that one pass over the upsampled map counts at once (per-thread counters).
constexpr int kMaskGroup = 8;

// Masks packed as bitsets: bits[m, q] holds pixels 32q .. 32q + 31 of mask m
// (row-major), one thread per word (grid-stride).
__global__ void pack_masks_cuda_kernel(
    const uint8_t* __restrict__ masks,
    int64_t M,
    int64_t HW,
    int64_t words,
    uint32_t* __restrict__ bits) {
  LAVISE_CUDA_1D_KERNEL_LOOP(i, M * words) {
    const int64_t m = i / words, q = i % words;
    const uint8_t* s = masks + m * HW;
    uint32_t word = 0;
    for (int b = 0; b < 32 && q * 32 + b < HW; ++b) {
      word |= static_cast<uint32_t>(s[q * 32 + b] != 0) << b;
    }
    bits[i] = word;
  }
}

// One block per (image with masks, channel k) pair (grid-stride). The block
// evaluates the thresholded bilinear map 32 pixels (one bitset word) per thread
// at a time and counts |B| and |B & mask| for up to kMaskGroup masks of the image
// per pass; images with more masks take more passes.
template <typename scalar_t>
__global__ void upsample_iou_cuda_kernel(
    const scalar_t* __restrict__ activations,
    const float* __restrict__ thresholds,
    const uint32_t* __restrict__ mask_bits,
    const int64_t* __restrict__ mask_area,
    const int64_t* __restrict__ images,  // images that have masks
    const int64_t* __restrict__ start,   // start[n] .. start[n + 1]: masks of image n in `order`
    const int64_t* __restrict__ order,   // mask indices sorted by row
    const LinearTap* __restrict__ ty,    // [H]
    const LinearTap* __restrict__ tx,    // [W]
    int64_t jobs,
    int64_t K,
    int64_t h,
    int64_t w,
    int64_t H,
    int64_t W,
    int64_t words,
    bool stage,
    int64_t* __restrict__ inter,
    int64_t* __restrict__ uni) {
  float* staged = shared_floats();
  __shared__ int64_t scratch[kWarpSize];
  const int64_t HW = H * W;
  for (int64_t job = blockIdx.x; job < jobs; job += gridDim.x) {
    const int64_t n = images[job / K], k = job % K;
    const scalar_t* src = activations + (n * K + k) * h * w;
    if (stage) {
      for (int64_t p = threadIdx.x; p < h * w; p += blockDim.x) {
        staged[p] = static_cast<float>(src[p]);
      }
      __syncthreads();
    }
    auto a = [&](int64_t p) { return stage ? staged[p] : static_cast<float>(src[p]); };
    const float t = thresholds[k];
    const int64_t s0 = start[n], s1 = start[n + 1];
    int64_t area = 0;
    for (int64_t g = s0; g < s1; g += kMaskGroup) {
      const int64_t group = s1 - g < kMaskGroup ? s1 - g : kMaskGroup;
      int64_t count[kMaskGroup];
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        count[j] = 0;
      }
      int64_t on_count = 0;
      for (int64_t q = threadIdx.x; q < words; q += blockDim.x) {
        int64_t p = q * 32;
        int64_t y = p / W, x = p - y * W;
        uint32_t on = 0;
        for (int b = 0; b < 32 && p < HW; ++b, ++p) {
          const LinearTap& yt = ty[y];
          const LinearTap& xt = tx[x];
          const int64_t r0 = yt.i0 * w, r1 = yt.i1 * w;
          const float v = bilinear_value(a(r0 + xt.i0), a(r0 + xt.i1), a(r1 + xt.i0), a(r1 + xt.i1), yt, xt);
          on |= static_cast<uint32_t>(v > t) << b;
          if (++x == W) {
            x = 0;
            ++y;
          }
        }
        on_count += __popc(on);
#pragma unroll
        for (int j = 0; j < kMaskGroup; ++j) {
          if (j < group) {
            count[j] += __popc(on & mask_bits[order[g + j] * words + q]);
          }
        }
      }
      if (g == s0) {
        area = block_sum(on_count, scratch);
      }
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        if (j < group) {
          const int64_t c = block_sum(count[j], scratch);
          if (threadIdx.x == 0) {
            const int64_t m = order[g + j];
            inter[m * K + k] = c;
            uni[m * K + k] = area + mask_area[m] - c;
          }
        }
      }
    }
    if (stage) {
      __syncthreads();  // before the next job overwrites the staged map
    }
  }
}

// Copies a host vector of taps to the device as raw bytes.
at::Tensor taps_to_device(const std::vector<LinearTap>& taps, const at::Device& device) {
  const int64_t bytes = static_cast<int64_t>(taps.size() * sizeof(LinearTap));
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  std::memcpy(host.data_ptr<uint8_t>(), taps.data(), bytes);
  return host.to(device);
}

std::tuple<at::Tensor, at::Tensor> upsample_iou_kernel(
    const at::Tensor& activations,
    const at::Tensor& thresholds,
    const at::Tensor& masks,
    const at::Tensor& rows) {
  check_upsample_iou(activations, thresholds, masks, rows);
  const int64_t N = activations.size(0), K = activations.size(1), M = masks.size(0);
  auto inter = at::empty({M, K}, activations.options().dtype(at::kLong));
  auto uni = at::empty({M, K}, activations.options().dtype(at::kLong));
  if (M == 0 || K == 0) {
    return {inter, uni};
  }
  c10::cuda::CUDAGuard guard(activations.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t H = masks.size(1), W = masks.size(2), HW = H * W;
  const int64_t h = activations.size(2), w = activations.size(3);
  const int64_t words = (HW + 31) / 32;
  auto x = activations.contiguous();
  auto t = thresholds.to(at::kFloat).contiguous();
  auto mk = masks.contiguous();

  auto bits = at::empty({M, words}, mk.options().dtype(at::kInt));
  pack_masks_cuda_kernel<<<grid_size(M * words), kThreads, 0, stream>>>(
      reinterpret_cast<const uint8_t*>(mk.data_ptr()), M, HW, words,
      reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto area = at::count_nonzero(mk.view({M, HW}), at::IntArrayRef{1});  // int64 [M]

  // Group the masks by image on the host (rows were already read by the checks).
  const MasksByImage groups = group_masks_by_image(rows, N);
  const std::vector<int64_t>& start = groups.start;
  const std::vector<int64_t>& order = groups.order;
  const std::vector<int64_t>& images = groups.images;
  // One device buffer: start [N + 1] | order [M] | images.
  std::vector<int64_t> packed;
  packed.reserve(start.size() + order.size() + images.size());
  packed.insert(packed.end(), start.begin(), start.end());
  packed.insert(packed.end(), order.begin(), order.end());
  packed.insert(packed.end(), images.begin(), images.end());
  auto index = at::tensor(packed, at::TensorOptions().dtype(at::kLong)).to(x.device());
  const int64_t* start_d = index.data_ptr<int64_t>();
  const int64_t* order_d = start_d + (N + 1);
  const int64_t* images_d = order_d + M;

  // Bilinear taps exactly as the CPU kernel computes them, on the host.
  std::vector<LinearTap> taps(H + W);
  for (int64_t y = 0; y < H; ++y) {
    taps[y] = bilinear_tap(y, h, H);
  }
  for (int64_t xx = 0; xx < W; ++xx) {
    taps[H + xx] = bilinear_tap(xx, w, W);
  }
  auto taps_d = taps_to_device(taps, x.device());
  const LinearTap* ty = reinterpret_cast<const LinearTap*>(taps_d.data_ptr<uint8_t>());
  const LinearTap* tx = ty + H;

  const int64_t jobs = static_cast<int64_t>(images.size()) * K;
  const bool stage = h * w <= kMaxSharedFloats;
  const size_t shared = stage ? static_cast<size_t>(h * w) * sizeof(float) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_iou_cuda", [&] {
    upsample_iou_cuda_kernel<scalar_t><<<grid_size(jobs, 1), kThreads, shared, stream>>>(
        x.data_ptr<scalar_t>(), t.data_ptr<float>(), reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>()),
        area.data_ptr<int64_t>(), images_d, start_d, order_d, ty, tx, jobs, K, h, w, H, W, words, stage,
        inter.data_ptr<int64_t>(), uni.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {inter, uni};
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CUDA, m) {
  m.impl("upsample_iou", &upsample_iou_kernel);
}

}  // namespace lavise_fast
