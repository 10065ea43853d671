#include "attention_pool.h"

namespace lavise_fast {

AttentionMode check_attention_pool(
    const at::Tensor& features,
    const at::Tensor& rows,
    const at::Tensor& filters,
    const std::string& mode,
    const std::optional<at::Tensor>& thresholds) {
  check_rank(features, "features", 4, "[N, C, H, W]");
  check_floating(features, "features");
  check_rank(rows, "rows", 1, "[M]");
  check_rank(filters, "filters", 1, "[M]");
  TORCH_CHECK_VALUE(
      rows.size(0) == filters.size(0), "rows and filters must have the same length M, got ", rows.size(0),
      " and ", filters.size(0));
  check_same_device(rows, "rows", features, "features");
  check_same_device(filters, "filters", features, "features");
  TORCH_CHECK_VALUE(
      rows.size(0) == 0 || features.size(1) == 0 || features.size(2) * features.size(3) > 0,
      "features must have at least one spatial position, got shape ", features.sizes());
  check_index_range(rows, "rows", features.size(0), "N");
  check_index_range(filters, "filters", features.size(1), "C");
  TORCH_CHECK_VALUE(
      mode == "projection" || mode == "activation", "mode must be 'projection' or 'activation', got '", mode,
      "'");
  if (mode == "projection") {
    return AttentionMode::Projection;
  }
  TORCH_CHECK_VALUE(thresholds.has_value(), "mode='activation' needs thresholds [C], got None");
  const auto& t = *thresholds;
  check_rank(t, "thresholds", 1, "[C]");
  check_floating(t, "thresholds");
  TORCH_CHECK_VALUE(
      t.size(0) == features.size(1), "thresholds must have one entry per channel of features (C = ",
      features.size(1), "), got ", t.size(0));
  check_same_device(t, "thresholds", features, "features");
  return AttentionMode::Activation;
}

}  // namespace lavise_fast
