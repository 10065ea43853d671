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

}  // namespace lavise_fast
