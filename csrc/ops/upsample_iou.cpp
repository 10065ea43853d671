#include "upsample_iou.h"

namespace lavise_fast {

void check_upsample_iou(
    const at::Tensor& activations,
    const at::Tensor& thresholds,
    const at::Tensor& masks,
    const at::Tensor& rows) {
  check_rank(activations, "activations", 4, "[N, K, h, w]");
  check_floating(activations, "activations");
  check_rank(thresholds, "thresholds", 1, "[K]");
  check_floating(thresholds, "thresholds");
  TORCH_CHECK_VALUE(
      thresholds.size(0) == activations.size(1), "thresholds must have one entry per channel of activations (K = ",
      activations.size(1), "), got ", thresholds.size(0));
  check_rank(masks, "masks", 3, "[M, H, W]");
  const auto s = masks.scalar_type();
  TORCH_CHECK_TYPE(s == at::kBool || s == at::kByte, "masks must be bool or uint8, got ", s);
  check_rank(rows, "rows", 1, "[M]");
  TORCH_CHECK_VALUE(
      rows.size(0) == masks.size(0), "rows must have one entry per mask (M = ", masks.size(0), "), got ",
      rows.size(0));
  TORCH_CHECK_VALUE(
      masks.size(0) == 0 || activations.size(2) * activations.size(3) > 0,
      "activations must have at least one spatial position, got shape ", activations.sizes());
  check_same_device(thresholds, "thresholds", activations, "activations");
  check_same_device(masks, "masks", activations, "activations");
  check_same_device(rows, "rows", activations, "activations");
  check_index_range(rows, "rows", activations.size(0), "N");
}

MasksByImage group_masks_by_image(const at::Tensor& rows, int64_t num_images) {
  auto r = rows.to(at::kCPU, at::kLong).contiguous();
  const int64_t* rp = r.data_ptr<int64_t>();
  const int64_t M = r.numel();
  MasksByImage groups;
  groups.start.assign(num_images + 1, 0);
  groups.order.resize(M);
  for (int64_t m = 0; m < M; ++m) {
    ++groups.start[rp[m] + 1];
  }
  for (int64_t n = 0; n < num_images; ++n) {
    groups.start[n + 1] += groups.start[n];
  }
  std::vector<int64_t> fill(groups.start.begin(), groups.start.end() - 1);
  for (int64_t m = 0; m < M; ++m) {
    groups.order[fill[rp[m]]++] = m;
  }
  for (int64_t n = 0; n < num_images; ++n) {
    if (groups.start[n + 1] > groups.start[n]) {
      groups.images.push_back(n);
    }
  }
  return groups;
}

}  // namespace lavise_fast
