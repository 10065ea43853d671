// CPU helper shared by attention_pool and masked_pool:
//   out[m, :] = features[rows[m]] (C x HW) @ weights[m] (HW) / HW
// computed as one matrix product per distinct row, so no M x C x HW product is formed.
#pragma once

#include <ATen/ATen.h>

namespace lavise_fast {

// features [N, C, H, W] contiguous (any floating type); rows [M] int64; weights [M, H*W] float32.
at::Tensor weighted_pool_cpu(const at::Tensor& features, const at::Tensor& rows, const at::Tensor& weights);

}  // namespace lavise_fast
