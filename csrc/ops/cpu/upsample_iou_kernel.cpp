#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../upsample_iou.h"

namespace lavise_fast {
namespace {

// Masks packed as bitsets: bits[m, word], one bit per pixel in row-major order.
at::Tensor pack_masks(const at::Tensor& masks, int64_t words) {
  const int64_t M = masks.size(0), HW = masks.size(1) * masks.size(2);
  auto bits = at::zeros({M, words}, masks.options().dtype(at::kLong));
  const uint8_t* src = reinterpret_cast<const uint8_t*>(masks.data_ptr());
  uint64_t* dst = reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>());
  at::parallel_for(0, M, 4, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const uint8_t* s = src + m * HW;
      uint64_t* d = dst + m * words;
      for (int64_t p = 0; p < HW; ++p) {
        d[p >> 6] |= static_cast<uint64_t>(s[p] != 0) << (p & 63);
      }
    }
  });
  return bits;
}

template <typename scalar_t>
void upsample_iou_impl(
    const at::Tensor& activations,
    const float* thresholds,
    const at::Tensor& mask_bits,
    const std::vector<int64_t>& mask_area,
    const std::vector<int64_t>& order,   // mask indices sorted by row
    const std::vector<int64_t>& start,   // start[n] .. start[n + 1]: masks of image n in `order`
    int64_t H,
    int64_t W,
    at::Tensor& inter,
    at::Tensor& uni) {
  const int64_t N = activations.size(0), K = activations.size(1);
  const int64_t h = activations.size(2), w = activations.size(3);
  const int64_t words = mask_bits.size(1);
  std::vector<LinearTap> ty(H), tx(W);
  for (int64_t y = 0; y < H; ++y) {
    ty[y] = bilinear_tap(y, h, H);
  }
  for (int64_t x = 0; x < W; ++x) {
    tx[x] = bilinear_tap(x, w, W);
  }
  const scalar_t* act = activations.data_ptr<scalar_t>();
  const uint64_t* mb = reinterpret_cast<const uint64_t*>(mask_bits.data_ptr<int64_t>());
  int64_t* out_i = inter.data_ptr<int64_t>();
  int64_t* out_u = uni.data_ptr<int64_t>();
  // Only (image, channel) pairs that have masks do any work.
  std::vector<int64_t> images;
  for (int64_t n = 0; n < N; ++n) {
    if (start[n + 1] > start[n]) {
      images.push_back(n);
    }
  }
  const int64_t jobs = static_cast<int64_t>(images.size()) * K;
  at::parallel_for(0, jobs, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> bits(words);
    std::vector<float> a(h * w), row(w);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = images[job / K], k = job % K;
      const scalar_t* src = act + (n * K + k) * h * w;
      for (int64_t p = 0; p < h * w; ++p) {
        a[p] = static_cast<float>(src[p]);
      }
      const float t = thresholds[k];
      std::fill(bits.begin(), bits.end(), 0);
      int64_t area = 0;
      for (int64_t y = 0; y < H; ++y) {
        const LinearTap& yt = ty[y];
        const float* r0 = a.data() + yt.i0 * w;
        const float* r1 = a.data() + yt.i1 * w;
        const int64_t base = y * W;
        for (int64_t x = 0; x < W; ++x) {
          const LinearTap& xt = tx[x];
          const float v = bilinear_value(r0[xt.i0], r0[xt.i1], r1[xt.i0], r1[xt.i1], yt, xt);
          const uint64_t on = v > t;
          area += static_cast<int64_t>(on);
          bits[(base + x) >> 6] |= on << ((base + x) & 63);
        }
      }
      for (int64_t s = start[n]; s < start[n + 1]; ++s) {
        const int64_t m = order[s];
        const uint64_t* mm = mb + m * words;
        int64_t count = 0;
        for (int64_t q = 0; q < words; ++q) {
          count += __builtin_popcountll(bits[q] & mm[q]);
        }
        out_i[m * K + k] = count;
        out_u[m * K + k] = area + mask_area[m] - count;
      }
    }
  });
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
  const int64_t H = masks.size(1), W = masks.size(2);
  const int64_t words = (H * W + 63) / 64;
  auto x = activations.contiguous();
  auto t = thresholds.to(at::kFloat).contiguous();
  auto mk = masks.contiguous();
  auto bits = pack_masks(mk, words);
  std::vector<int64_t> area(M);
  const uint64_t* b = reinterpret_cast<const uint64_t*>(bits.data_ptr<int64_t>());
  for (int64_t m = 0; m < M; ++m) {
    int64_t c = 0;
    for (int64_t q = 0; q < words; ++q) {
      c += __builtin_popcountll(b[m * words + q]);
    }
    area[m] = c;
  }
  auto r = rows.to(at::kLong).contiguous();
  const int64_t* rp = r.data_ptr<int64_t>();
  std::vector<int64_t> start(N + 1, 0), order(M);
  for (int64_t m = 0; m < M; ++m) {
    ++start[rp[m] + 1];
  }
  for (int64_t n = 0; n < N; ++n) {
    start[n + 1] += start[n];
  }
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t m = 0; m < M; ++m) {
    order[fill[rp[m]]++] = m;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_iou_cpu", [&] {
    upsample_iou_impl<scalar_t>(x, t.data_ptr<float>(), bits, area, order, start, H, W, inter, uni);
  });
  return {inter, uni};
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("upsample_iou", &upsample_iou_kernel);
}

}  // namespace lavise_fast
