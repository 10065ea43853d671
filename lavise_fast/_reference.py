"""Plain-PyTorch definitions of every operator in :mod:`lavise_fast.ops`.

These are the ground truth of the tests and a fallback: short, obviously right and
slow (they materialise what the fused kernels avoid). Shapes and semantics are those
of the wrappers in :mod:`lavise_fast.ops`; DESIGN.md section 4 is the specification.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lavise_fast.merges import compress_sketch, merge_ranked

__all__ = [
    "spatial_max_topk",
    "attention_pool",
    "masked_pool",
    "upsample_iou",
    "cosine_topk",
    "quantile_sketch_update",
]


def spatial_max_topk(
    features: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, base_index: int = 0
) -> torch.Tensor:
    """maxima[n, c] = max_hw features[n, c] (NaN ignored, NaN if all NaN); values/indices [C, P]
    updated in place to the P best (max, base_index + n) per channel."""
    N, C = features.shape[:2]
    flat = features.float().flatten(2)
    nan = flat.isnan()
    maxima = flat.masked_fill(nan, -math.inf).amax(2) if flat.shape[2] else flat.new_full((N, C), -math.inf)
    maxima = maxima.masked_fill(nan.all(2), math.nan)
    if N:
        new_idx = torch.arange(base_index, base_index + N, device=features.device).expand(C, N)
        v, i = merge_ranked(values, indices, maxima.t(), new_idx, values.shape[1])
        values.copy_(v)
        indices.copy_(i)
    return maxima


def _attention_weights(a: torch.Tensor, mode: str, thresholds: torch.Tensor | None) -> torch.Tensor:
    if mode == "projection":
        # w = a / ||a||, 0 where ||a|| = 0. A NaN or +-inf in `a` makes the whole row z[m] NaN: the
        # kernels' weight a * (1 / ||a||) is NaN * 0 or inf * 0 = NaN at that position, which
        # makes every channel's sum NaN; here every weight is NaN, which gives the same row.
        norm = a.flatten(1).norm(dim=1)[:, None, None]
        finite = a.flatten(1).isfinite().all(1)[:, None, None]
        w = torch.where(norm > 0, a / norm, torch.zeros_like(a))
        return torch.where(finite, w, torch.full_like(a, math.nan))
    return (a > thresholds[:, None, None]).float()  # strict: NaN never passes, nothing passes +inf


def attention_pool(
    features: torch.Tensor,
    rows: torch.Tensor,
    filters: torch.Tensor,
    mode: str = "projection",
    thresholds: torch.Tensor | None = None,
) -> torch.Tensor:
    """z[m] = mean_hw(features[rows[m]] * w_m), w_m = a/||a|| or 1[a > thresholds[filters[m]]],
    a = features[rows[m], filters[m]]. [N,C,H,W], [M], [M] -> [M, C] float32."""
    rows, filters = rows.long(), filters.long()
    x = features.float()
    a = x[rows, filters]
    t = thresholds.float()[filters] if thresholds is not None else None
    w = _attention_weights(a, mode, t)
    return (x[rows] * w[:, None]).mean((2, 3))


def masked_pool(features: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """z[m] = mean_hw(features[rows[m]] * nearest_exact(masks[m], h x w)); bool/uint8 masks are
    binary (non-zero = 1), floating masks are weights. -> [M, C] float32."""
    h, w = features.shape[2:]
    weights = masks.float() if masks.is_floating_point() else (masks != 0).float()
    m = F.interpolate(weights[:, None], size=(h, w), mode="nearest-exact")[:, 0]
    return (features.float()[rows.long()] * m[:, None]).mean((2, 3))


def upsample_iou(
    activations: torch.Tensor, thresholds: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """inter/union [M, K] int64 of (bilinear_upsample(activations[rows[m], k]) > thresholds[k]) with masks[m]."""
    H, W = masks.shape[1:]
    up = F.interpolate(activations.float(), size=(H, W), mode="bilinear", align_corners=False)
    on = (up > thresholds.float()[None, :, None, None])[rows.long()]
    mk = masks.bool()[:, None]
    return (on & mk).sum((2, 3)), (on | mk).sum((2, 3))


def cosine_topk(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest cosine similarities per query, descending, ties to the smaller index. A NaN
    similarity (a query or key holding NaN or +-inf) never enters: the slots it would take
    are left empty (-inf / -1), after every real similarity."""
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).t()
    # Every real similarity is >= -1 (or so), so -inf sorts the NaN ones after all of them.
    values, indices = torch.sort(sims.masked_fill(sims.isnan(), -math.inf), dim=1, descending=True, stable=True)
    values, indices = values[:, :k], indices[:, :k]
    indices = indices.masked_fill(values == -math.inf, -1)
    return values.contiguous(), indices.contiguous()


def quantile_sketch_update(
    features: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, summary: torch.Tensor, floor_rank: float = 0.0
) -> None:
    """Adds every position of features [N, C, H, W] to the per-channel sketch (means/weights
    [C, capacity] float64, summary [C, 4] = count, nan_count, min, max), in place. With a
    floor (the CPU kernel's, see ``ops.quantile_sketch_update``) the numbers below it enter as
    128 bins of (count, mean), merged after the old centroids and before the values."""
    C, capacity = features.shape[1], means.shape[1]
    x = features.float().transpose(0, 1).reshape(C, -1).double()
    floor, lo = _sketch_floor(means, weights, summary, x.shape[1], floor_rank)
    nan = x.isnan()
    summary[:, 1] += nan.sum(1).double()
    valid = ~nan
    n_valid = valid.sum(1).double()
    if x.shape[1]:
        summary[:, 2] = torch.minimum(summary[:, 2], x.masked_fill(nan, math.inf).amin(1))
        summary[:, 3] = torch.maximum(summary[:, 3], x.masked_fill(nan, -math.inf).amax(1))
    summary[:, 0] += n_valid
    bin_m, bin_w, alone = _floor_bins(x, valid, floor, lo)
    m, w = compress_sketch(
        torch.cat([means, bin_m, x.masked_fill(~alone, 0.0)], 1),
        torch.cat([weights, bin_w, alone.double()], 1),
        summary[:, 0],
        capacity,
    )
    changed = (n_valid > 0)[:, None]  # a channel with no new value keeps its centroids as they were
    means.copy_(torch.where(changed, m, means))
    weights.copy_(torch.where(changed, w, weights))


_FLOOR_BINS, _FLOOR_MIN_COUNT, _FLOOR_MIN_BATCH = 128, 16384, 4096


def _floor_bins(x: torch.Tensor, valid: torch.Tensor, floor: torch.Tensor, lo: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bin means [C, B], bin weights [C, B], which values enter alone [C, n]) for values x [C, n]
    (valid: not NaN) under the floors [C] (-inf: none) over [lo, floor) in B equal-width bins."""
    C = x.shape[0]
    if not (floor > -math.inf).any():  # no floor: every number enters alone
        return x.new_zeros(C, 0), x.new_zeros(C, 0), valid
    binned = (x < floor[:, None]) & (x > -math.inf)
    scale = _FLOOR_BINS / torch.where(floor > lo, floor - lo, torch.ones_like(floor))
    b = ((x - lo[:, None]) * scale[:, None]).masked_fill(~binned, 0.0)
    b = torch.where(b < 1.0, 0.0, torch.where(b >= _FLOOR_BINS - 1, _FLOOR_BINS - 1.0, b)).long()
    bin_w = torch.zeros(C, _FLOOR_BINS, dtype=torch.float64).scatter_add_(1, b, binned.double())
    bin_s = torch.zeros(C, _FLOOR_BINS, dtype=torch.float64).scatter_add_(1, b, x.masked_fill(~binned, 0.0))
    return torch.where(bin_w > 0, bin_s / bin_w.clamp_min(1.0), 0.0), bin_w, valid & ~binned


def _sketch_floor(means: torch.Tensor, weights: torch.Tensor, summary: torch.Tensor, n_batch: int,
                  floor_rank: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor [C] (-inf: none), the old min [C]): the mean of the first centroid whose weight
    before it is >= floor_rank * count, where the sketch and the batch are large enough."""
    count, lo = summary[:, 0], summary[:, 2].clone()  # the min before this batch
    none = torch.full_like(count, -math.inf)
    if not floor_rank > 0 or n_batch < _FLOOR_MIN_BATCH:
        return none, lo
    before = torch.cumsum(weights, 1) - weights
    past = (before >= floor_rank * count[:, None]) & (weights > 0)
    first = past.long().argmax(1)
    at = means.gather(1, first[:, None])[:, 0]
    ok = past.any(1) & (count >= _FLOOR_MIN_COUNT) & lo.isfinite() & at.isfinite() & (lo < at)
    return torch.where(ok, at, none), lo
