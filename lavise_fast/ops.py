"""The fused operators of lavise_fast, on CPU and CUDA (``torch.ops.lavise_fast.*``).

Each wrapper calls the compiled kernel for the tensors' device; each has a fake
(meta) kernel so that the ops trace under ``torch.compile`` and a plain-PyTorch twin
in :mod:`lavise_fast._reference`. Features may be float32, float16 or bfloat16;
sums accumulate in float32 and outputs are float32 unless stated. None of the ops
has a backward: they are for inference over a frozen network.
"""

from __future__ import annotations

import importlib

import torch

from lavise_fast.errors import MissingPackageError

try:
    importlib.import_module("lavise_fast._C")  # registers torch.ops.lavise_fast
except ImportError as error:  # the package still imports; the first op call says how to build
    _BUILD_ERROR: ImportError | None = error
else:
    _BUILD_ERROR = None

BUILD_COMMAND = "pip install --no-build-isolation ."

__all__ = [
    "spatial_max_topk",
    "attention_pool",
    "masked_pool",
    "upsample_iou",
    "cosine_topk",
    "quantile_sketch_update",
    "has_cuda_kernels",
]



class _MissingLibrary:
    """Stands in for ``torch.ops.lavise_fast`` when ``_C`` did not load: any op raises one clear error."""

    def __getattr__(self, name: str):
        raise MissingPackageError(
            f"lavise_fast's compiled operator library (lavise_fast._C) is not built or does not load, so the op "
            f"{name!r} cannot run. Build it against the installed torch with `{BUILD_COMMAND}` (or `python setup.py "
            f"build_ext --inplace` in a checkout). Cause: {_BUILD_ERROR}"
        ) from _BUILD_ERROR


_ops = torch.ops.lavise_fast if _BUILD_ERROR is None else _MissingLibrary()


def has_cuda_kernels() -> bool:
    """Whether this build of lavise_fast._C contains the CUDA kernels."""
    return _BUILD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("lavise_fast::masked_pool", "CUDA")


def spatial_max_topk(
    features: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, base_index: int = 0
) -> torch.Tensor:
    """Spatial maxima of a batch and a running top-P of images per channel.

    ``maxima[n, c] = max_{h,w} features[n, c, h, w]`` (NaN positions ignored; NaN when all are).
    ``values`` [C, P] float32 and ``indices`` [C, P] int64 are updated in place to hold the P
    largest maxima seen so far per channel, descending, with image ``n`` indexed
    ``base_index + n``; ties keep the smaller index first; empty slots hold -inf / -1.

    Non-finite values: a NaN maximum (a map of only NaN) never enters; +inf and -inf are
    values: a +inf maximum ranks first, a -inf one (a map of only -inf, or -inf and NaN)
    still enters, before the empty slots.

    Args:
        features: [N, C, H, W].
        values: [C, P] float32, the running top-P maxima (updated in place).
        indices: [C, P] int64, their image indices (updated in place).
        base_index: the index of the batch's first image.
    Returns:
        maxima [N, C] float32.
    """
    return _ops.spatial_max_topk.default(features, values, indices, int(base_index))


def attention_pool(
    features: torch.Tensor,
    rows: torch.Tensor,
    filters: torch.Tensor,
    mode: str = "projection",
    thresholds: torch.Tensor | None = None,
) -> torch.Tensor:
    """LaViSE filter attention: ``z[m] = mean_{h,w}(features[rows[m]] * w_m)``.

    With ``a = features[rows[m], filters[m]]``: ``w_m = a / ||a||_2`` (0 where ``||a|| = 0``) in
    mode ``"projection"``, ``w_m = 1[a > thresholds[filters[m]]]`` in mode ``"activation"``.
    The mean runs over all H*W positions.

    Non-finite values follow IEEE arithmetic of ``mean(x * w)`` (NaN propagates, inf * 0 is
    NaN). projection: a map ``a`` holding NaN or +-inf makes the whole row ``z[m]`` NaN.
    activation: ``>`` is strict and never true for NaN: a threshold of -inf selects every
    position whose ``a`` is neither NaN nor -inf; +inf and NaN select none (z = 0 where the
    features are finite).

    Args:
        features: [N, C, H, W].
        rows: [M] int, the image of each pooled vector.
        filters: [M] int, the filter whose map weighs it.
        mode: ``"projection"`` or ``"activation"``.
        thresholds: [C] float32 (activation mode; None in projection mode).
    Returns:
        [M, C] float32.
    """
    return _ops.attention_pool.default(features, rows, filters, mode, thresholds)


def masked_pool(features: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Average pooling under object masks: ``z[m] = mean_{h,w}(features[rows[m]] * mask_m)``.

    ``mask_m`` is ``masks[m]`` (any H x W) resized to the feature grid h x w like
    ``F.interpolate(mode="nearest-exact")``; bool and uint8 masks are binary (any non-zero
    value is 1, so 0/255 masks work), floating masks are used as weights. The mean runs over
    all h*w positions. Non-finite features or weights follow IEEE arithmetic of
    ``mean(x * mask)``: NaN propagates, and inf under a weight of 0 gives NaN.

    Args:
        features: [N, C, h, w].
        masks: [M, H, W] bool, uint8 or floating, on features' device.
        rows: [M] int, the image each mask belongs to, on features' device or on the CPU. CPU rows
            are range-checked on the host and copied without waiting for the GPU; rows on the GPU
            cost one device synchronisation for that check.
    Returns:
        [M, C] float32.
    """
    return _ops.masked_pool.default(features, masks, rows)


def upsample_iou(
    activations: torch.Tensor, thresholds: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlap of thresholded, upsampled activation maps with masks.

    ``B[m, k] = upsample(activations[rows[m], k]) > thresholds[k]``, the upsampling to the
    masks' H x W being ``F.interpolate(mode="bilinear", align_corners=False)``; returns
    ``inter[m, k] = |B & masks[m]|`` and ``union[m, k] = |B | masks[m]|``. The N*K*H*W
    upsampled maps are never materialised.

    Non-finite values: the upsampled value is F.interpolate's, in IEEE arithmetic (NaN
    spreads to the pixels it weighs on, inf times a tap weight of 0 is NaN); a NaN value is
    never on. A threshold of -inf turns on every pixel whose value is neither NaN nor -inf;
    +inf and NaN turn on none (inter = 0, union = mask area).

    Args:
        activations: [N, K, h, w].
        thresholds: [K].
        masks: [M, H, W] bool/uint8.
        rows: [M] int, the image each mask belongs to.
    Returns:
        (inter, union), each [M, K] int64.
    """
    return _ops.upsample_iou.default(activations, thresholds, masks, rows)


def cosine_topk(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k keys of largest cosine similarity for every query.

    ``sim[r, v] = <q_r, k_v> / (max(|q_r|, 1e-12) * max(|k_v|, 1e-12))``; values descending,
    ties to the smaller key index. Keys are scanned in chunks, so the R x V matrix of
    similarities is never materialised.

    Non-finite values: a query or key holding NaN or +-inf has NaN similarities, which never
    enter: a query with fewer than k valid keys leaves its last slots empty (-inf / -1).

    Args:
        queries: [R, D].
        keys: [V, D].
        k: how many keys per query, 0 <= k <= V.
    Returns:
        (values [R, k] float32, indices [R, k] int64).
    """
    return _ops.cosine_topk.default(queries, keys, int(k))


def quantile_sketch_update(
    features: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, summary: torch.Tensor, floor_rank: float = 0.0
) -> None:
    """Adds every position of ``features`` [N, C, H, W] to a per-channel quantile sketch, in place.

    The sketch of channel c is at most ``capacity`` centroids ``means[c]``, ``weights[c]``
    (float64, sorted by mean, unused slots of weight 0) and ``summary[c]`` = (count,
    nan_count, min, max). NaN is counted in nan_count and otherwise ignored; +-inf are values
    (count, min, max): a centroid holding -inf has mean -inf, else one holding +inf has mean
    +inf. See :class:`lavise_fast.stats.ChannelQuantiles`, which owns these tensors and reads
    quantiles from them.

    With ``floor_rank`` r in (0, 1), on the CPU, a channel whose sketch holds at least 16,384
    values and whose batch brings at least 4,096 has a floor f: the mean of its first centroid
    with weight before it >= r * count. The batch's numbers below f skip the sort: they enter as
    128 equal-width bins over [min, f), each one item (count, mean). Quantiles whose values lie
    above every floor used are those of the sketch without one; below, they are approximate.
    The CUDA kernel sorts every value whatever ``floor_rank``.

    Args:
        features: [N, C, H, W].
        means: [C, capacity] float64, the centroids' means (updated in place).
        weights: [C, capacity] float64, their weights (updated in place).
        summary: [C, 4] float64: count, nan_count, min, max (updated in place).
        floor_rank: 0 (no floor, the default) or the floor's rank in (0, 1).
    """
    _ops.quantile_sketch_update.default(features, means, weights, summary, float(floor_rank))


# ----------------------------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes only, for torch.compile and meta tensors.


def _register_fakes() -> None:
    """Registers the fake kernels (only when ``_C`` loaded: the ops must exist)."""

    @torch.library.register_fake("lavise_fast::spatial_max_topk")
    def _(features, values, indices, base_index):
        torch._check(features.dim() == 4, lambda: f"features must be 4-D [N, C, H, W], got {features.dim()}-D")
        torch._check(values.shape[0] == features.shape[1], lambda: "values must have one row per channel")
        return features.new_empty((features.shape[0], features.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("lavise_fast::attention_pool")
    def _(features, rows, filters, mode="projection", thresholds=None):
        torch._check(features.dim() == 4, lambda: f"features must be 4-D [N, C, H, W], got {features.dim()}-D")
        torch._check(rows.shape[0] == filters.shape[0], lambda: "rows and filters must have the same length")
        return features.new_empty((rows.shape[0], features.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("lavise_fast::masked_pool")
    def _(features, masks, rows):
        torch._check(features.dim() == 4, lambda: f"features must be 4-D [N, C, h, w], got {features.dim()}-D")
        torch._check(masks.dim() == 3, lambda: f"masks must be 3-D [M, H, W], got {masks.dim()}-D")
        return features.new_empty((masks.shape[0], features.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("lavise_fast::upsample_iou")
    def _(activations, thresholds, masks, rows):
        torch._check(activations.dim() == 4, lambda: "activations must be 4-D [N, K, h, w]")
        torch._check(masks.dim() == 3, lambda: "masks must be 3-D [M, H, W]")
        shape = (masks.shape[0], activations.shape[1])
        return activations.new_empty(shape, dtype=torch.int64), activations.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake("lavise_fast::cosine_topk")
    def _(queries, keys, k):
        torch._check(queries.dim() == 2 and keys.dim() == 2, lambda: "queries and keys must be 2-D")
        torch._check(k <= keys.shape[0], lambda: "k must be at most the number of keys")
        shape = (queries.shape[0], k)
        return queries.new_empty(shape, dtype=torch.float32), queries.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake("lavise_fast::quantile_sketch_update")
    def _(features, means, weights, summary, floor_rank=0.0):
        torch._check(features.dim() == 4, lambda: "features must be 4-D [N, C, H, W]")
        return None


if _BUILD_ERROR is None:
    _register_fakes()
