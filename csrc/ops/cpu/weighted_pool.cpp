#include "weighted_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu_helpers.h"

namespace lavise_fast {
namespace {

// True when none of x[0..n) is NaN or +-inf.
LAVISE_CPU_CLONES bool all_finite(const float* x, int64_t n) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    bad |= !(std::fabs(x[i]) <= 3.402823466e38f);
  }
  return bad == 0;
}

constexpr int64_t kRowsPerProduct = 16;  // the fewest rows an image, on average, for matrix products

// out[c] = sum_p image[c * HW + p] * w[p] for c < C, in IEEE order: for images with few rows, and
// for non-finite inputs, whose NaN and inf * 0 a matrix library need not propagate.
LAVISE_CPU_CLONES void pool_image(const float* image, int64_t C, int64_t HW, const float* w, float* out) {
  for (int64_t c = 0; c < C; ++c) {
    const float* x = image + c * HW;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t p = 0; p < HW; ++p) {
      acc += x[p] * w[p];
    }
    out[c] = acc;
  }
}

// The image's pooled vectors, out[m] = w[m] @ image^T for its k rows (image [C, HW] float32,
// w [k, HW]): one matrix product when everything is finite, the IEEE loop otherwise.
at::Tensor pool_group(const at::Tensor& image, const at::Tensor& w) {
  const int64_t C = image.size(0), HW = image.size(1), k = w.size(0);
  const float* x = image.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  if (all_finite(x, C * HW) && all_finite(wp, k * HW)) {
    return at::mm(w, image.t());
  }
  auto out = at::empty({k, C}, w.options());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      pool_image(x, C, HW, wp + m * HW, o + m * C);
    }
  });
  return out;
}

// Few rows an image: the plain loop over all rows at once, in parallel (a matrix product per image
// would cost more in calls than it saves). out[order[s]] = features[sorted_rows[s]] . weights[s].
template <typename scalar_t>
void pool_rows(const at::Tensor& features, const int64_t* order, const int64_t* sorted_rows, const float* weights,
               at::Tensor& out) {
  const int64_t M = out.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const scalar_t* x = features.data_ptr<scalar_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, M, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer;
    int64_t current = -1;
    const float* image = nullptr;
    for (int64_t s = begin; s < end; ++s) {
      if (sorted_rows[s] != current) {
        current = sorted_rows[s];
        if constexpr (std::is_same_v<scalar_t, float>) {
          image = x + current * C * HW;
        } else {
          buffer.resize(C * HW);
          for (int64_t i = 0; i < C * HW; ++i) {
            buffer[i] = static_cast<float>(x[current * C * HW + i]);
          }
          image = buffer.data();
        }
      }
      pool_image(image, C, HW, weights + s * HW, o + (order ? order[s] : s) * C);
    }
  });
}

}  // namespace

PoolOrder pool_order(const at::Tensor& rows) {
  const int64_t M = rows.size(0);
  if (M < 2 || rows.narrow(0, 1, M - 1).ge(rows.narrow(0, 0, M - 1)).all().item<bool>()) {
    return {at::Tensor(), rows};  // already grouped: nothing to permute
  }
  auto order = at::argsort(rows, /*stable=*/true);
  return {order, rows.index_select(0, order)};
}

at::Tensor weighted_pool_cpu(const at::Tensor& features, const PoolOrder& by, const at::Tensor& weights) {
  const int64_t M = by.sorted_rows.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  auto out = at::empty({M, C}, features.options().dtype(at::kFloat));
  if (M == 0 || C == 0) {
    return out;
  }
  const int64_t* r = by.sorted_rows.data_ptr<int64_t>();
  const int64_t* order = by.order.defined() ? by.order.data_ptr<int64_t>() : nullptr;
  int64_t images = 1;
  for (int64_t s = 1; s < M; ++s) {
    images += r[s] != r[s - 1];
  }
  if (M < kRowsPerProduct * images) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "weighted_pool_cpu", [&] {
      pool_rows<scalar_t>(features, order, r, weights.data_ptr<float>(), out);
    });
  } else {
    // Rows of one image become one [k, HW] x [HW, C] product: the image is read once for all of them.
    for (int64_t start = 0; start < M;) {
      int64_t stop = start + 1;
      while (stop < M && r[stop] == r[start]) {
        ++stop;
      }
      auto image = features.select(0, r[start]).reshape({C, HW}).to(at::kFloat).contiguous();
      auto pooled = pool_group(image, weights.narrow(0, start, stop - start));
      if (order) {
        out.index_copy_(0, by.order.narrow(0, start, stop - start), pooled);
      } else {
        out.narrow(0, start, stop - start).copy_(pooled);
      }
      start = stop;
    }
  }
  return out.mul_(1.0 / static_cast<double>(HW));
}

}  // namespace lavise_fast
