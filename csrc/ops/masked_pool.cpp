#include "masked_pool.h"

namespace lavise_fast {

void check_masked_pool(const at::Tensor& features, const at::Tensor& masks, const at::Tensor& rows) {
  check_rank(features, "features", 4, "[N, C, h, w]");
  check_floating(features, "features");
  check_rank(masks, "masks", 3, "[M, H, W]");
  check_mask_dtype(masks, "masks");
  check_rank(rows, "rows", 1, "[M]");
  TORCH_CHECK_VALUE(
      rows.size(0) == masks.size(0), "rows must have one entry per mask (M = ", masks.size(0), "), got ",
      rows.size(0));
  TORCH_CHECK_VALUE(
      masks.size(0) == 0 || (masks.size(1) > 0 && masks.size(2) > 0),
      "masks must have at least one pixel, got shape ", masks.sizes());
  TORCH_CHECK_VALUE(
      masks.size(0) == 0 || features.size(2) * features.size(3) > 0,
      "features must have at least one spatial position, got shape ", features.sizes());
  check_same_device(masks, "masks", features, "features");
  TORCH_CHECK_VALUE(
      rows.device() == features.device() || rows.device().is_cpu(), "rows must be on the same device as features (",
      features.device(), ") or on the CPU, got ", rows.device());
  check_index_range(rows, "rows", features.size(0), "N");  // CPU rows: checked with no device sync
}

}  // namespace lavise_fast
