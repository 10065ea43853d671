#include "weighted_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
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

// out[c] = sum_p image[c * HW + p] * w[p] for c < C, in IEEE order: the fallback for
// non-finite inputs, whose NaN and inf * 0 a matrix library need not propagate.
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

// One image's pooled vectors: out [k, C] = w [k, HW] @ image [C, HW]^T, one matrix product when
// everything is finite.
void pool_group(const at::Tensor& image, const at::Tensor& w, at::Tensor out) {
  const int64_t C = image.size(0), HW = image.size(1), k = w.size(0);
  const float* x = image.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  if (all_finite(x, C * HW) && all_finite(wp, k * HW)) {
    at::mm_out(out, w, image.t());
    return;
  }
  float* o = out.data_ptr<float>();
  at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      pool_image(x, C, HW, wp + m * HW, o + m * C);
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
  if (M == 0 || C == 0) {
    return at::empty({M, C}, features.options().dtype(at::kFloat));
  }
  // Pairs of one image become one [k, HW] x [HW, C] product: the image is read once for all of them.
  auto sorted_out = at::empty({M, C}, features.options().dtype(at::kFloat));
  const int64_t* r = by.sorted_rows.data_ptr<int64_t>();
  for (int64_t start = 0; start < M;) {
    int64_t stop = start + 1;
    while (stop < M && r[stop] == r[start]) {
      ++stop;
    }
    auto image = features.select(0, r[start]).reshape({C, HW}).to(at::kFloat).contiguous();
    pool_group(image, weights.narrow(0, start, stop - start), sorted_out.narrow(0, start, stop - start));
    start = stop;
  }
  sorted_out.mul_(1.0 / static_cast<double>(HW));
  if (!by.order.defined()) {
    return sorted_out;
  }
  return at::empty_like(sorted_out).index_copy_(0, by.order, sorted_out);
}

}  // namespace lavise_fast
