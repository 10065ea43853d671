"""Plain-PyTorch merges of two streams' states: ranked top-k lists and quantile sketches.

:class:`lavise_fast.stats.TopImages` and :class:`lavise_fast.stats.ChannelQuantiles` merge with these
(a merge runs once per rank of a distributed sweep, so it needs no kernel); the sketch's compression step
is the one the CUDA/C++ kernels implement (``csrc/ops/quantile_sketch.h``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["merge_ranked", "compress_sketch", "merge_sketches"]


def merge_ranked(
    values_a: torch.Tensor, indices_a: torch.Tensor, values_b: torch.Tensor, indices_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of two ranked lists per row: larger value first, ties to the smaller
    index, empty slots (index < 0) and NaN last (returned as -inf / -1). [R, *] -> [R, k].

    Args:
        values_a: [R, Ka] the first list's values.
        indices_a: [R, Ka] their indices (< 0: an empty slot).
        values_b: [R, Kb] the second list's values.
        indices_b: [R, Kb] their indices (< 0: an empty slot).
        k: how many to keep per row (at most Ka + Kb are returned).

    Returns:
        ``(values [R, k] float32, indices [R, k] int64)``.
    """
    v = torch.cat([values_a, values_b], 1).float()
    i = torch.cat([indices_a, indices_b], 1).long()
    empty = (i < 0) | v.isnan()
    v = v.masked_fill(empty, -math.inf)
    i = i.masked_fill(empty, -1)
    # Lexicographic order through stable sorts, least significant key first.
    order = torch.sort(i, dim=1, stable=True).indices
    v, i, empty = v.gather(1, order), i.gather(1, order), empty.gather(1, order)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices
    v, i, empty = v.gather(1, order), i.gather(1, order), empty.gather(1, order)
    order = torch.sort(empty.to(torch.uint8), dim=1, stable=True).indices
    v, i = v.gather(1, order), i.gather(1, order)
    return v[:, :k].contiguous(), i[:, :k].contiguous()


def compress_sketch(
    means: torch.Tensor, weights: torch.Tensor, total: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compresses weighted items [C, L] (weight 0 = absent; the order of the columns breaks
    ties of equal means) into at most `capacity` centroids per row (see quantile_sketch.h).

    Items sorted by mean share a centroid when ``floor(delta * log(q / (1 - q)))`` is equal, with q the
    item's mid-rank ``(weight below + w / 2) / total`` and ``delta = (capacity - 2) / (2 log(2 total))``.

    Args:
        means: [C, L] the items' means (+-inf allowed).
        weights: [C, L] their weights (<= 0: absent).
        total: [C] the row's total weight (the sketch's count).
        capacity: the most centroids per row (the output's width).

    Returns:
        ``(means [C, capacity] float64, weights [C, capacity] float64)``, unused slots 0 / 0.
    """
    C, L = means.shape
    absent = weights <= 0
    order = torch.sort(means.masked_fill(absent, math.inf), dim=1, stable=True).indices
    order = order.gather(1, torch.sort(absent.gather(1, order).to(torch.uint8), dim=1, stable=True).indices)
    m, w, absent = means.gather(1, order), weights.gather(1, order), absent.gather(1, order)
    before = torch.cumsum(w, 1) - w
    below = before + 0.5 * w
    safe_total = total.clamp_min(1.0)[:, None]
    delta = (capacity - 2) / (2.0 * torch.log(2.0 * safe_total))
    bucket = torch.floor(delta * torch.log(below / (safe_total - below)))
    new = torch.ones_like(absent)
    new[:, 1:] = bucket[:, 1:] != bucket[:, :-1]
    segment = torch.cumsum(new.long(), 1) - 1
    segment = segment.masked_fill(absent, capacity)  # a dump column, dropped below
    out_w = torch.zeros(C, capacity + 1, dtype=torch.float64, device=means.device)
    out_wm = torch.zeros_like(out_w)
    out_neg, out_pos = torch.zeros_like(out_w), torch.zeros_like(out_w)
    out_w.scatter_add_(1, segment, w.masked_fill(absent, 0.0))
    out_wm.scatter_add_(1, segment, (w * m).masked_fill(absent | ~m.isfinite(), 0.0))
    # A centroid holding an infinity has that infinite mean; one holding both -inf and +inf
    # (possible when most values are infinite) has mean -inf, as in the kernels, which keep
    # the first infinity of a centroid in ascending order.
    out_neg.scatter_add_(1, segment, ((m == -math.inf) & ~absent).double())
    out_pos.scatter_add_(1, segment, ((m == math.inf) & ~absent).double())
    out_w = out_w[:, :capacity].contiguous()
    out_m = torch.where(out_w > 0, out_wm[:, :capacity] / out_w.clamp_min(1e-300), torch.zeros_like(out_w))
    out_m = torch.where(out_pos[:, :capacity] > 0, math.inf, out_m)
    out_m = torch.where(out_neg[:, :capacity] > 0, -math.inf, out_m)
    return out_m, out_w


def merge_sketches(
    means: torch.Tensor,
    weights: torch.Tensor,
    summary: torch.Tensor,
    other_means: torch.Tensor,
    other_weights: torch.Tensor,
    other_summary: torch.Tensor,
) -> None:
    """Merges another sketch of the same channels into (means, weights, summary), in place.

    Args:
        means: [C, capacity] float64 centroid means, updated.
        weights: [C, capacity] float64 centroid weights, updated.
        summary: [C, 4] float64 (count, NaN count, min, max) per channel, updated.
        other_means: [C, L] the other sketch's centroid means.
        other_weights: [C, L] its centroid weights.
        other_summary: [C, 4] its (count, NaN count, min, max).
    """
    summary[:, 0] += other_summary[:, 0]
    summary[:, 1] += other_summary[:, 1]
    summary[:, 2] = torch.minimum(summary[:, 2], other_summary[:, 2])
    summary[:, 3] = torch.maximum(summary[:, 3], other_summary[:, 3])
    m, w = compress_sketch(
        torch.cat([means, other_means], 1), torch.cat([weights, other_weights], 1), summary[:, 0], means.shape[1]
    )
    means.copy_(m)
    weights.copy_(w)
