// CPU helper shared by attention_pool and masked_pool:
//   out[m, c] = sum_p features[rows[m], c, p] * weights[m, p] / HW
// When images have at least 16 rows each on average, the rows of one image are pooled by one
// matrix product, weights [k, HW] x image [HW, C], so the image is read once for all of them; an
// image or weights holding NaN or inf take a plain loop instead, which keeps IEEE's NaN and
// inf * 0 = NaN. With fewer rows an image, the plain loop pools up to 8 rows of an image at once,
// reading each channel of the image once for all of them, in parallel over images and channels.
#pragma once

#include <ATen/ATen.h>

namespace lavise_fast {

// The pairs grouped by image: order [M] int64, a stable argsort of rows (undefined when rows are
// already in order: the identity), and rows[order].
struct PoolOrder {
  at::Tensor order, sorted_rows;
};
PoolOrder pool_order(const at::Tensor& rows);

// features [N, C, H, W] contiguous floating; weights [M, H*W] float32 in the grouped order (row s
// weighs pair by.order[s]) -> out [M, C] float32 in the pairs' order:
//   out[by.order[s], c] = sum_p features[by.sorted_rows[s], c, p] * weights[s, p] / HW
at::Tensor weighted_pool_cpu(const at::Tensor& features, const PoolOrder& by, const at::Tensor& weights);

}  // namespace lavise_fast
