#include "quantile_sketch.h"

namespace lavise_fast {

void check_quantile_sketch(
    const at::Tensor& features,
    const at::Tensor& means,
    const at::Tensor& weights,
    const at::Tensor& summary,
    double floor_rank) {
  check_rank(features, "features", 4, "[N, C, H, W]");
  TORCH_CHECK_VALUE(
      floor_rank == 0.0 || (floor_rank > 0.0 && floor_rank < 1.0),
      "floor_rank must be 0 (no floor) or lie in (0, 1), got ", floor_rank);
  check_floating(features, "features");
  check_rank(means, "means", 2, "[C, capacity]");
  check_rank(weights, "weights", 2, "[C, capacity]");
  check_rank(summary, "summary", 2, "[C, 4]");
  check_dtype(means, "means", at::kDouble);
  check_dtype(weights, "weights", at::kDouble);
  check_dtype(summary, "summary", at::kDouble);
  const int64_t C = features.size(1);
  TORCH_CHECK_VALUE(
      means.size(0) == C, "means must have one row per channel of features (C = ", C, "), got shape ",
      means.sizes());
  TORCH_CHECK_VALUE(means.size(1) >= 8, "means must hold at least 8 centroids per channel, got ", means.size(1));
  TORCH_CHECK_VALUE(
      weights.sizes() == means.sizes(), "weights must have the shape of means ", means.sizes(), ", got ",
      weights.sizes());
  TORCH_CHECK_VALUE(
      summary.size(0) == C && summary.size(1) == kSummaryFields, "summary must have shape [", C, ", 4], got ",
      summary.sizes());
  TORCH_CHECK_VALUE(
      means.is_contiguous() && weights.is_contiguous() && summary.is_contiguous(),
      "means, weights and summary must be contiguous (they are updated in place)");
  check_same_device(means, "means", features, "features");
  check_same_device(weights, "weights", features, "features");
  check_same_device(summary, "summary", features, "features");
}

}  // namespace lavise_fast
