#include "weighted_pool.h"

namespace lavise_fast {

at::Tensor weighted_pool_cpu(const at::Tensor& features, const at::Tensor& rows, const at::Tensor& weights) {
  const int64_t M = rows.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  auto out = at::empty({M, C}, features.options().dtype(at::kFloat));
  if (M == 0 || C == 0) {
    return out;
  }
  auto order = at::argsort(rows, /*stable=*/true);
  auto sorted_rows = rows.index_select(0, order);
  const int64_t* r = sorted_rows.data_ptr<int64_t>();
  const float inv_hw = 1.0f / static_cast<float>(HW);
  const auto flat = features.view({features.size(0), C, HW});
  for (int64_t start = 0; start < M;) {
    int64_t stop = start + 1;
    while (stop < M && r[stop] == r[start]) {
      ++stop;
    }
    auto members = order.narrow(0, start, stop - start);
    auto image = flat.select(0, r[start]).to(at::kFloat);            // [C, HW]
    auto w = weights.index_select(0, members);                         // [m, HW]
    auto pooled = at::mm(w, image.t()).mul_(inv_hw);                   // [m, C]
    out.index_copy_(0, members, pooled);
    start = stop;
  }
  return out;
}

}  // namespace lavise_fast
