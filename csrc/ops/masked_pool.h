// masked_pool: average pooling of features under object masks.
//   z[m, :] = mean_{h,w} features[rows[m], :, h, w] * resize(masks[m])[h, w]
//   resize = F.interpolate(mode="nearest-exact") from H x W to h x w.
#pragma once

#include "common.h"

namespace lavise_fast {

// features [N, C, h, w] floating; masks [M, H, W] bool/uint8/floating, on features' device;
// rows [M] int, on features' device or on the CPU (then its range check needs no device sync).
void check_masked_pool(const at::Tensor& features, const at::Tensor& masks, const at::Tensor& rows);

// Source index of output position `dst` for nearest-exact resizing, computed
// exactly as PyTorch does (float scale, floor, clamp).
LAVISE_HOST_DEVICE int64_t nearest_exact_source(int64_t dst, int64_t in_size, int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const int64_t src = static_cast<int64_t>(floorf(static_cast<float>((dst + 0.5) * scale)));
  return src < in_size - 1 ? src : in_size - 1;
}

}  // namespace lavise_fast
