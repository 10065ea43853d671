#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../spatial_max_topk.h"
#include "cpu_helpers.h"

namespace lavise_fast {
namespace {

// Eight floats in one vector (GCC/Clang vector extension: AVX in the avx2 clone, two SSE
// registers in the default one). `a > b ? a : b` keeps b when a is NaN: a vector max.
typedef float float8 __attribute__((vector_size(32)));

// Max of n values ignoring NaN; NaN when all are NaN. Four vector accumulators of eight
// lanes, so that the loads, not the max latency, set the pace.
LAVISE_CPU_CLONES float max_ignoring_nan(const float* x, int64_t n) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  const float8 lowest = {kLowest, kLowest, kLowest, kLowest, kLowest, kLowest, kLowest, kLowest};
  float8 acc0 = lowest, acc1 = lowest, acc2 = lowest, acc3 = lowest;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    float8 v0, v1, v2, v3;
    std::memcpy(&v0, x + i, sizeof(float8));
    std::memcpy(&v1, x + i + 8, sizeof(float8));
    std::memcpy(&v2, x + i + 16, sizeof(float8));
    std::memcpy(&v3, x + i + 24, sizeof(float8));
    acc0 = v0 > acc0 ? v0 : acc0;
    acc1 = v1 > acc1 ? v1 : acc1;
    acc2 = v2 > acc2 ? v2 : acc2;
    acc3 = v3 > acc3 ? v3 : acc3;
  }
  for (; i + 8 <= n; i += 8) {
    float8 v0;
    std::memcpy(&v0, x + i, sizeof(float8));
    acc0 = v0 > acc0 ? v0 : acc0;
  }
  acc0 = acc1 > acc0 ? acc1 : acc0;
  acc2 = acc3 > acc2 ? acc3 : acc2;
  acc0 = acc2 > acc0 ? acc2 : acc0;
  float m = kLowest;
  for (int l = 0; l < 8; ++l) {
    m = acc0[l] > m ? acc0[l] : m;
  }
  for (; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
  }
  if (m == kLowest) {  // a true -inf maximum, or only NaN: tell them apart
    for (int64_t k = 0; k < n; ++k) {
      if (!std::isnan(x[k])) {
        return m;
      }
    }
    return std::numeric_limits<float>::quiet_NaN();
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
    if constexpr (std::is_same_v<scalar_t, float>) {
      for (int64_t nc = begin; nc < end; ++nc) {
        out[nc] = max_ignoring_nan(x + nc * HW, HW);
      }
    } else {
      std::vector<float> row(HW);
      for (int64_t nc = begin; nc < end; ++nc) {
        for (int64_t p = 0; p < HW; ++p) {
          row[p] = static_cast<float>(x[nc * HW + p]);
        }
        out[nc] = max_ignoring_nan(row.data(), HW);
      }
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
  update_contiguous_state(values, indices, [&](at::Tensor& v, at::Tensor& i) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_max_topk_cpu", [&] {
      spatial_max_topk_impl<scalar_t>(x, v, i, base_index, maxima);
    });
  });
  return maxima;
}

}  // namespace

TORCH_LIBRARY_IMPL(lavise_fast, CPU, m) {
  m.impl("spatial_max_topk", &spatial_max_topk_kernel);
}

}  // namespace lavise_fast
