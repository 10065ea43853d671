#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../upsample_iou.h"
#include "cpu_helpers.h"

namespace lavise_fast {
namespace {

// on[x] = r0[x] * l0 + r1[x] * l1 > t (the height step of PyTorch's bilinear order); returns sum(on).
LAVISE_CPU_CLONES int64_t threshold_row(
    const float* r0, const float* r1, float l0, float l1, float t, int64_t W, uint8_t* on) {
  int64_t count = 0;
  for (int64_t x = 0; x < W; ++x) {
    const uint8_t v = (r0[x] * l0 + r1[x] * l1) > t;
    on[x] = v;
    count += v;
  }
  return count;
}

// sum(a & b) over n bytes holding 0 or 1.
LAVISE_CPU_CLONES int64_t count_both(const uint8_t* a, const uint8_t* b, int64_t n) {
  int64_t count = 0;
  for (int64_t x = 0; x < n; ++x) {
    count += a[x] & b[x];
  }
  return count;
}

// Separable upsampling: the width step once per source row (tmp[i, X] =
// a[i, x0] * l0 + a[i, x1] * l1), then one vectorised height step per output row.
template <typename scalar_t>
void upsample_iou_impl(
    const at::Tensor& activations,
    const float* thresholds,
    const uint8_t* masks,
    const std::vector<int64_t>& mask_area,
    const MasksByImage& groups,
    int64_t H,
    int64_t W,
    at::Tensor& inter,
    at::Tensor& uni) {
  const int64_t K = activations.size(1);
  const int64_t h = activations.size(2), w = activations.size(3);
  std::vector<LinearTap> ty(H), tx(W);
  for (int64_t y = 0; y < H; ++y) {
    ty[y] = bilinear_tap(y, h, H);
  }
  for (int64_t x = 0; x < W; ++x) {
    tx[x] = bilinear_tap(x, w, W);
  }
  const scalar_t* act = activations.data_ptr<scalar_t>();
  int64_t* out_i = inter.data_ptr<int64_t>();
  int64_t* out_u = uni.data_ptr<int64_t>();
  // Only images that have masks do any work.
  const std::vector<int64_t>& start = groups.start;
  const std::vector<int64_t>& order = groups.order;
  const std::vector<int64_t>& images = groups.images;
  const int64_t jobs = static_cast<int64_t>(images.size()) * K;
  at::parallel_for(0, jobs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a(h * w), tmp(h * W);
    std::vector<uint8_t> on(W);
    std::vector<int64_t> counts;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = images[job / K], k = job % K;
      const scalar_t* src = act + (n * K + k) * h * w;
      for (int64_t p = 0; p < h * w; ++p) {
        a[p] = static_cast<float>(src[p]);
      }
      for (int64_t i = 0; i < h; ++i) {
        const float* ai = a.data() + i * w;
        float* ti = tmp.data() + i * W;
        for (int64_t x = 0; x < W; ++x) {
          ti[x] = ai[tx[x].i0] * tx[x].l0 + ai[tx[x].i1] * tx[x].l1;
        }
      }
      const int64_t first = start[n], last = start[n + 1];
      counts.assign(last - first, 0);
      const float t = thresholds[k];
      int64_t area = 0;
      for (int64_t y = 0; y < H; ++y) {
        const LinearTap& yt = ty[y];
        area += threshold_row(tmp.data() + yt.i0 * W, tmp.data() + yt.i1 * W, yt.l0, yt.l1, t, W, on.data());
        for (int64_t s = first; s < last; ++s) {
          counts[s - first] += count_both(on.data(), masks + (order[s] * H + y) * W, W);
        }
      }
      for (int64_t s = first; s < last; ++s) {
        const int64_t m = order[s];
        out_i[m * K + k] = counts[s - first];
        out_u[m * K + k] = area + mask_area[m] - counts[s - first];
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
  auto x = activations.contiguous();
  auto t = thresholds.to(at::kFloat).contiguous();
  auto mk = (masks.scalar_type() == at::kBool ? masks.view(at::kByte) : masks.ne(0).view(at::kByte)).contiguous();
  const uint8_t* mp = mk.data_ptr<uint8_t>();
  std::vector<int64_t> area(M);
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      int64_t c = 0;
      for (int64_t p = 0; p < H * W; ++p) {
        c += mp[m * H * W + p];
      }
      area[m] = c;
    }
  });
  const MasksByImage groups = group_masks_by_image(rows, N);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upsample_iou_cpu", [&] {
    upsample_iou_impl<scalar_t>(x, t.data_ptr<float>(), mp, area, groups, H, W, inter, uni);
  });
  return {inter, uni};
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("upsample_iou", &upsample_iou_kernel);
}

}  // namespace lavise_fast
