#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "../spatial_max_topk.h"

namespace lavise_fast {
namespace {

// Max of n values ignoring NaN; NaN when all are NaN. Eight independent
// accumulators so that the compiler can keep them in one vector register.
template <typename scalar_t>
float spatial_max(const scalar_t* x, int64_t n) {
  constexpr int kLanes = 8;
  float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = -std::numeric_limits<float>::infinity();
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = static_cast<float>(x[i + l]);
      acc[l] = v > acc[l] ? v : acc[l];
    }
  }
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    acc[0] = v > acc[0] ? v : acc[0];
  }
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) {
    m = acc[l] > m ? acc[l] : m;
  }
  if (m == -std::numeric_limits<float>::infinity()) {
    // Either a true -inf maximum or only NaN: tell them apart.
    bool any_number = false;
    for (int64_t k = 0; k < n && !any_number; ++k) {
      any_number = !std::isnan(static_cast<float>(x[k]));
    }
    return any_number ? m : std::numeric_limits<float>::quiet_NaN();
  }
  return m;
}

template <typename scalar_t>
void spatial_max_topk_impl(
    const at::Tensor& features,
    at::Tensor& values,
    at::Tensor& indices,
    int64_t base_index,
    at::Tensor& maxima) {
  const int64_t N = features.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const scalar_t* x = features.data_ptr<scalar_t>();
  float* out = maxima.data_ptr<float>();
  at::parallel_for(0, N * C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      out[nc] = spatial_max(x + nc * HW, HW);
    }
  });
  const int64_t P = values.size(1);
  float* vals = values.data_ptr<float>();
  int64_t* idx = indices.data_ptr<int64_t>();
  at::parallel_for(0, C, 8, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      float* v = vals + c * P;
      int64_t* id = idx + c * P;
      for (int64_t n = 0; n < N; ++n) {
        insert_ranked(v, id, P, 1, out[n * C + c], base_index + n);
      }
    }
  });
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
  auto x = features.contiguous();
  // Work on contiguous copies of the running state when needed, then write back.
  auto v = values.is_contiguous() ? values : values.contiguous();
  auto i = indices.is_contiguous() ? indices : indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_max_topk_cpu", [&] {
    spatial_max_topk_impl<scalar_t>(x, v, i, base_index, maxima);
  });
  if (!v.is_same(values)) {
    values.copy_(v);
  }
  if (!i.is_same(indices)) {
    indices.copy_(i);
  }
  return maxima;
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("spatial_max_topk", &spatial_max_topk_kernel);
}

}  // namespace lavise_fast
