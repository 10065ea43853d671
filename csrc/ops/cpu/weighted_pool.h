// CPU helper shared by attention_pool and masked_pool:
//   out[m, c] = sum_p features[rows[m], c, p] * weights[m, p] / HW
// Rows are visited in sorted order so that each image (C x HW) is read from cache for
// all of its outputs; no M x C x HW product is ever formed.
#pragma once

#include <ATen/ATen.h>

namespace lavise_fast {

// features [N, C, H, W] contiguous floating; rows [M] int64; weights [M, H*W] float32 -> [M, C] float32.
at::Tensor weighted_pool_cpu(const at::Tensor& features, const at::Tensor& rows, const at::Tensor& weights);

}  // namespace lavise_fast
