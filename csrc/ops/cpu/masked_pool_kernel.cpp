#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../masked_pool.h"
#include "weighted_pool.h"

namespace lavise_fast {
namespace {

// weights[s, y * w + x] = masks[order[s], sy(y), sx(x)] (nearest-exact source pixel; order null: s).
template <typename mask_t>
void resize_masks_impl(const at::Tensor& masks, const int64_t* order, int64_t h, int64_t w, at::Tensor& weights) {
  const int64_t M = masks.size(0), H = masks.size(1), W = masks.size(2);
  std::vector<int64_t> sy(h), sx(w);
  for (int64_t y = 0; y < h; ++y) {
    sy[y] = nearest_exact_source(y, H, h);
  }
  for (int64_t x = 0; x < w; ++x) {
    sx[x] = nearest_exact_source(x, W, w);
  }
  const mask_t* src = masks.data_ptr<mask_t>();
  // bool and uint8 masks are binary (any non-zero byte is on, e.g. 0/255 images); floating masks are weights.
  const bool is_binary = !at::isFloatingType(masks.scalar_type());
  float* dst = weights.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t y = 0; y < h; ++y) {
        const mask_t* row = src + ((order ? order[m] : m) * H + sy[y]) * W;
        float* out = dst + (m * h + y) * w;
        for (int64_t x = 0; x < w; ++x) {
          out[x] = is_binary ? static_cast<float>(row[sx[x]] != mask_t(0)) : static_cast<float>(row[sx[x]]);
        }
      }
    }
  });
}

at::Tensor masked_pool_kernel(const at::Tensor& features, const at::Tensor& masks, const at::Tensor& rows) {
  check_masked_pool(features, masks, rows);
  const int64_t M = masks.size(0), h = features.size(2), w = features.size(3);
  if (M == 0 || features.size(1) == 0) {
    return at::empty({M, features.size(1)}, features.options().dtype(at::kFloat));
  }
  auto x = features.contiguous();
  auto mk = masks.contiguous();
  const auto by = pool_order(rows.to(at::kLong).contiguous());
  auto weights = at::empty({M, h * w}, x.options().dtype(at::kFloat));
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, mk.scalar_type(), "masked_pool_cpu", [&] {
    resize_masks_impl<scalar_t>(mk, by.order.defined() ? by.order.data_ptr<int64_t>() : nullptr, h, w, weights);
  });
  return weighted_pool_cpu(x, by, weights);  // weights in the grouped order
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("masked_pool", &masked_pool_kernel);
}

}  // namespace lavise_fast
