#include "spatial_max_topk.h"

namespace lavise_fast {

void check_spatial_max_topk(const at::Tensor& features, const at::Tensor& values, const at::Tensor& indices) {
  check_rank(features, "features", 4, "[N, C, H, W]");
  check_floating(features, "features");
  check_rank(values, "values", 2, "[C, P]");
  check_rank(indices, "indices", 2, "[C, P]");
  check_dtype(values, "values", at::kFloat);
  check_dtype(indices, "indices", at::kLong);
  TORCH_CHECK_VALUE(
      values.size(0) == features.size(1), "values must have one row per channel of features (C = ",
      features.size(1), "), got shape ", values.sizes());
  TORCH_CHECK_VALUE(
      indices.sizes() == values.sizes(), "indices must have the shape of values ", values.sizes(), ", got ",
      indices.sizes());
  TORCH_CHECK_VALUE(
      features.size(0) == 0 || features.size(2) * features.size(3) > 0,
      "features must have at least one spatial position, got shape ", features.sizes());
  check_same_device(values, "values", features, "features");
  check_same_device(indices, "indices", features, "features");
}

}  // namespace lavise_fast
