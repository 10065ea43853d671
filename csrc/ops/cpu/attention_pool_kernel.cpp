#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../attention_pool.h"
#include "weighted_pool.h"

namespace lavise_fast {
namespace {

// weights[m, p] from the attention map a = features[rows[m], filters[m]].
template <typename scalar_t>
void attention_weights_impl(
    const at::Tensor& features,
    const at::Tensor& rows,
    const at::Tensor& filters,
    bool projection,
    const float* thresholds,
    at::Tensor& weights) {
  const int64_t M = rows.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const scalar_t* x = features.data_ptr<scalar_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* f = filters.data_ptr<int64_t>();
  float* w = weights.data_ptr<float>();
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const scalar_t* a = x + (r[m] * C + f[m]) * HW;
      float* wm = w + m * HW;
      float inv_norm = 0.0f, threshold = 0.0f;
      if (projection) {
        float ss = 0.0f;
        for (int64_t p = 0; p < HW; ++p) {
          const float v = static_cast<float>(a[p]);
          ss += v * v;
        }
        inv_norm = inverse_norm(ss);
      } else {
        threshold = thresholds[f[m]];
      }
      for (int64_t p = 0; p < HW; ++p) {
        wm[p] = attention_weight(static_cast<float>(a[p]), projection, inv_norm, threshold);
      }
    }
  });
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
  auto x = features.contiguous();
  const auto by = pool_order(rows.to(at::kLong).contiguous());
  auto r = by.sorted_rows;  // the weights are made in the grouped order: no copy of them to sort
  auto f = by.order.defined() ? filters.to(at::kLong).index_select(0, by.order) : filters.to(at::kLong).contiguous();
  at::Tensor t;
  if (!projection) {
    t = thresholds->to(at::kFloat).contiguous();
  }
  auto weights = at::empty({M, HW}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "attention_pool_cpu", [&] {
    attention_weights_impl<scalar_t>(x, r, f, projection, projection ? nullptr : t.data_ptr<float>(), weights);
  });
  return weighted_pool_cpu(x, by, weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("attention_pool", &attention_pool_kernel);
}

}  // namespace lavise_fast
