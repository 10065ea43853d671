// spatial_max_topk: per-image spatial maxima and a running top-P of images per channel.
//   maxima[n, c] = max_{h,w} features[n, c, h, w]   (NaN positions ignored; NaN if all are NaN)
//   values[c, :], indices[c, :] hold the P best (max, image index) seen so far, best first.
#pragma once

#include "common.h"
#include "ranking.h"

namespace lavise_fast {

// features [N, C, H, W] floating; values [C, P] float32; indices [C, P] int64.
void check_spatial_max_topk(const at::Tensor& features, const at::Tensor& values, const at::Tensor& indices);

}  // namespace lavise_fast
