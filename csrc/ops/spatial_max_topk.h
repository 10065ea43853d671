// spatial_max_topk: per-image spatial maxima and a running top-P of images per channel.
//   maxima[n, c] = max_{h,w} features[n, c, h, w]   (NaN positions ignored; NaN if all are NaN)
//   values[c, :], indices[c, :] hold the P best (max, image index) seen so far, best first.
#pragma once

#include "common.h"
#include "ranking.h"

namespace lavise_fast {

// features [N, C, H, W] floating; values [C, P] float32; indices [C, P] int64.
void check_spatial_max_topk(const at::Tensor& features, const at::Tensor& values, const at::Tensor& indices);

// Runs update(v, i) on contiguous versions of the running state (the tensors themselves
// when already contiguous), then writes copies back into values and indices.
template <typename Update>
void update_contiguous_state(at::Tensor& values, at::Tensor& indices, Update&& update) {
  auto v = values.is_contiguous() ? values : values.contiguous();
  auto i = indices.is_contiguous() ? indices : indices.contiguous();
  update(v, i);
  if (!v.is_same(values)) {
    values.copy_(v);
  }
  if (!i.is_same(indices)) {
    indices.copy_(i);
  }
}

}  // namespace lavise_fast
