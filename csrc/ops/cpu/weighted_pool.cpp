#include "weighted_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "cpu_helpers.h"

namespace lavise_fast {
namespace {

// out[c] = scale * sum_p image[c * HW + p] * w[p] for c < C.
LAVISE_CPU_CLONES void pool_image(const float* image, int64_t C, int64_t HW, const float* w, float scale, float* out) {
  for (int64_t c = 0; c < C; ++c) {
    const float* x = image + c * HW;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t p = 0; p < HW; ++p) {
      acc += x[p] * w[p];
    }
    out[c] = acc * scale;
  }
}

template <typename scalar_t>
void weighted_pool_impl(
    const at::Tensor& features,
    const int64_t* order,
    const int64_t* sorted_rows,
    const float* weights,
    at::Tensor& out) {
  const int64_t M = out.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const scalar_t* x = features.data_ptr<scalar_t>();
  float* o = out.data_ptr<float>();
  const float scale = 1.0f / static_cast<float>(HW);
  at::parallel_for(0, M, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer;
    int64_t current = -1;
    const float* image = nullptr;
    for (int64_t s = begin; s < end; ++s) {
      const int64_t r = sorted_rows[s];
      if (r != current) {
        current = r;
        if constexpr (std::is_same_v<scalar_t, float>) {
          image = x + r * C * HW;
        } else {
          buffer.resize(C * HW);
          for (int64_t i = 0; i < C * HW; ++i) {
            buffer[i] = static_cast<float>(x[r * C * HW + i]);
          }
          image = buffer.data();
        }
      }
      const int64_t m = order[s];
      pool_image(image, C, HW, weights + m * HW, scale, o + m * C);
    }
  });
}

}  // namespace

at::Tensor weighted_pool_cpu(const at::Tensor& features, const at::Tensor& rows, const at::Tensor& weights) {
  const int64_t M = rows.size(0), C = features.size(1);
  auto out = at::empty({M, C}, features.options().dtype(at::kFloat));
  if (M == 0 || C == 0) {
    return out;
  }
  auto order = at::argsort(rows, /*stable=*/true);
  auto sorted_rows = rows.index_select(0, order);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "weighted_pool_cpu", [&] {
    weighted_pool_impl<scalar_t>(
        features, order.data_ptr<int64_t>(), sorted_rows.data_ptr<int64_t>(), weights.data_ptr<float>(), out);
  });
  return out;
}

}  // namespace lavise_fast
