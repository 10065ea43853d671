// attention_pool: filter-attention pooling of LaViSE.
//   z[m, :] = mean_{h,w} features[rows[m], :, h, w] * w_m[h, w]
//   projection: w_m = a / ||a||_2 (0 where ||a|| = 0);  activation: w_m = 1[a > thresholds[filters[m]]]
//   with a = features[rows[m], filters[m]].
#pragma once

#include "common.h"

#include <string>

namespace lavise_fast {

enum class AttentionMode { Projection, Activation };

// Parses `mode` and checks every argument; returns the mode.
AttentionMode check_attention_pool(
    const at::Tensor& features,
    const at::Tensor& rows,
    const at::Tensor& filters,
    const std::string& mode,
    const std::optional<at::Tensor>& thresholds);

// Spatial weight of one position given the attention map's inverse norm (projection)
// or threshold (activation).
LAVISE_HOST_DEVICE float attention_weight(float a, bool projection, float inv_norm, float threshold) {
  return projection ? a * inv_norm : (a > threshold ? 1.0f : 0.0f);
}

LAVISE_HOST_DEVICE float inverse_norm(float sum_squares) {
  return sum_squares > 0.0f ? 1.0f / sqrtf(sum_squares) : 0.0f;
}

}  // namespace lavise_fast
