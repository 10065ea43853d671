// upsample_iou: intersection and union of thresholded, upsampled activation maps with masks.
//   B[m, k] = bilinear_upsample(activations[rows[m], k], H x W, align_corners=False) > thresholds[k]
//   inter[m, k] = |B & masks[m]|,  union[m, k] = |B | masks[m]|   (int64)
// The N*K*H*W upsampled maps are never materialised.
#pragma once

#include "common.h"

#include <vector>

namespace lavise_fast {

// activations [N, K, h, w] floating; thresholds [K] floating; masks [M, H, W] bool/uint8; rows [M] int.
void check_upsample_iou(
    const at::Tensor& activations,
    const at::Tensor& thresholds,
    const at::Tensor& masks,
    const at::Tensor& rows);

// Masks grouped by image: order[start[n] .. start[n + 1]) are the masks of image n (in
// increasing mask index), images the images that have at least one mask.
struct MasksByImage {
  std::vector<int64_t> start, order, images;
};

// rows [M] int (any device; read on the host), each in [0, num_images).
MasksByImage group_masks_by_image(const at::Tensor& rows, int64_t num_images);

// Source indices and weights of output position `dst` for bilinear resizing with
// align_corners=False, computed as PyTorch does: a float scale, and the source coordinate
// scale * (dst + 0.5) - 0.5 rounded to float once, as F.interpolate gets it on CPU (its
// kernels are built with FMA, which contracts the expression). Two roundings in float
// (product, then difference) can land on the next integer, e.g. 4.0 instead of 3.99999976
// for 9 -> 31, dst = 15: another tap, and with an infinite activation NaN where
// F.interpolate has a number. The double expression is exact (a 24-bit scale times a short
// dst + 0.5), so the one cast is the one rounding.
struct LinearTap {
  int64_t i0, i1;
  float l0, l1;
};

LAVISE_HOST_DEVICE LinearTap bilinear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  LinearTap t;
  if (in_size == out_size) {
    t.i0 = dst;
    t.i1 = dst;
    t.l0 = 1.0f;
    t.l1 = 0.0f;
    return t;
  }
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = static_cast<float>(static_cast<double>(scale) * (static_cast<double>(dst) + 0.5) - 0.5);
  src = src < 0.0f ? 0.0f : src;
  const int64_t i0 = static_cast<int64_t>(floorf(src));
  t.i0 = i0 < in_size - 1 ? i0 : in_size - 1;
  float l1 = src - static_cast<float>(t.i0);
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  t.l1 = l1;
  t.l0 = 1.0f - l1;
  t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
  return t;
}

// Bilinear value from the four neighbours, in PyTorch's order: width first, then height.
LAVISE_HOST_DEVICE float bilinear_value(float a00, float a01, float a10, float a11, const LinearTap& y, const LinearTap& x) {
  return (a00 * x.l0 + a01 * x.l1) * y.l0 + (a10 * x.l0 + a11 * x.l1) * y.l1;
}

}  // namespace lavise_fast
