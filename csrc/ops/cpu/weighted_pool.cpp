#include "weighted_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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
constexpr int kBlockRows = 8;  // rows of one image pooled together by the plain loop
constexpr int64_t kBlockChannels = 64;  // channels of one work item of the plain loop

// out[j][c] = sum_p image[c * HW + p] * w[j][p] for j < K and c in [c0, c1), in IEEE arithmetic (NaN
// and inf * 0 = NaN kept): each channel's row is read once for all K rows, its products summed in
// eight lanes, then the lanes and the HW % 8 last positions.
template <int K>
inline __attribute__((always_inline)) void pool_block_k(const float* image, int64_t c0, int64_t c1, int64_t HW,
                                                        const float* const* w, float* const* out) {
  const int64_t vectors = HW / 8;
  for (int64_t c = c0; c < c1; ++c) {
    const float* x = image + c * HW;
    float8 acc[K];
    for (int j = 0; j < K; ++j) {
      acc[j] = float8{0, 0, 0, 0, 0, 0, 0, 0};
    }
    for (int64_t v = 0; v < vectors; ++v) {
      float8 xv;
      std::memcpy(&xv, x + 8 * v, sizeof(float8));
      for (int j = 0; j < K; ++j) {
        float8 wv;
        std::memcpy(&wv, w[j] + 8 * v, sizeof(float8));
        acc[j] += xv * wv;
      }
    }
    for (int j = 0; j < K; ++j) {
      const float8 a = acc[j];
      float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      for (int64_t p = 8 * vectors; p < HW; ++p) {
        sum += x[p] * w[j][p];
      }
      out[j][c] = sum;
    }
  }
}

// pool_block_k for k in [1, kBlockRows] rows.
LAVISE_CPU_CLONES void pool_block(const float* image, int64_t c0, int64_t c1, int64_t HW, const float* const* w,
                                  float* const* out, int k) {
  switch (k) {
    case 1: pool_block_k<1>(image, c0, c1, HW, w, out); break;
    case 2: pool_block_k<2>(image, c0, c1, HW, w, out); break;
    case 3: pool_block_k<3>(image, c0, c1, HW, w, out); break;
    case 4: pool_block_k<4>(image, c0, c1, HW, w, out); break;
    case 5: pool_block_k<5>(image, c0, c1, HW, w, out); break;
    case 6: pool_block_k<6>(image, c0, c1, HW, w, out); break;
    case 7: pool_block_k<7>(image, c0, c1, HW, w, out); break;
    default: pool_block_k<kBlockRows>(image, c0, c1, HW, w, out); break;
  }
}

// The plain loop: out[s] = image[s] . weights[s] for rows [begin, end) of one image (image [C, HW]
// float32, weights [.., HW] in the grouped order, out rows order[s] or s), channels [c0, c1), in
// blocks of kBlockRows rows that read the image once.
void pool_rows_of_image(const float* image, int64_t c0, int64_t c1, int64_t HW, const float* weights,
                        const int64_t* order, int64_t C, int64_t begin, int64_t end, float* out) {
  for (int64_t s = begin; s < end; s += kBlockRows) {
    const int k = static_cast<int>(std::min<int64_t>(kBlockRows, end - s));
    const float* w[kBlockRows];
    float* o[kBlockRows];
    for (int j = 0; j < k; ++j) {
      w[j] = weights + (s + j) * HW;
      o[j] = out + (order ? order[s + j] : s + j) * C;
    }
    pool_block(image, c0, c1, HW, w, o, k);
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
  at::parallel_for(0, C, kBlockChannels, [&](int64_t begin, int64_t end) {
    pool_rows_of_image(x, begin, end, HW, wp, nullptr, C, 0, k, o);
  });
  return out;
}

// Few rows an image: the plain loop, in parallel over work items of (image, kBlockChannels
// channels) (a matrix product per image would cost more in calls than it saves).
// out[order[s]] = features[sorted_rows[s]] . weights[s].
template <typename scalar_t>
void pool_rows(const at::Tensor& features, const int64_t* order, const int64_t* sorted_rows, const float* weights,
               at::Tensor& out) {
  const int64_t M = out.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const scalar_t* x = features.data_ptr<scalar_t>();
  float* o = out.data_ptr<float>();
  std::vector<int64_t> starts;  // the first sorted row of each image, then M
  for (int64_t s = 0; s < M; ++s) {
    if (s == 0 || sorted_rows[s] != sorted_rows[s - 1]) {
      starts.push_back(s);
    }
  }
  starts.push_back(M);
  const int64_t blocks = (C + kBlockChannels - 1) / kBlockChannels;
  const int64_t items = (static_cast<int64_t>(starts.size()) - 1) * blocks;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / blocks, c0 = (item % blocks) * kBlockChannels;
      const int64_t c1 = std::min(C, c0 + kBlockChannels);
      const scalar_t* src = x + sorted_rows[starts[g]] * C * HW;
      const float* image;
      if constexpr (std::is_same_v<scalar_t, float>) {
        image = src;
      } else {  // the item's channels in float32, at their place in a whole-image buffer
        buffer.resize(C * HW);
        for (int64_t i = c0 * HW; i < c1 * HW; ++i) {
          buffer[i] = static_cast<float>(src[i]);
        }
        image = buffer.data();
      }
      pool_rows_of_image(image, c0, c1, HW, weights, order, C, starts[g], starts[g + 1], o);
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
