"""Streaming, mergeable per-filter statistics over a stream of feature maps.

Both classes keep a fixed amount of state per channel, whatever the number of
images: :class:`TopImages` the P best images of every channel by spatial maximum,
:class:`ChannelQuantiles` a quantile sketch of every channel's activations over all
positions of all images. ``merge`` combines two streams (e.g. two ranks of a
distributed sweep).
"""

from __future__ import annotations

import math

import torch

from lavise_fast import ops
from lavise_fast.errors import InputError
from lavise_fast.merges import merge_ranked, merge_sketches
from lavise_fast.validate import int_at_least, positive_int

__all__ = ["TopImages", "ChannelQuantiles", "safe_floor_rank"]


def safe_floor_rank(quantile: float, seen: int, total: int | None, margin: float = 2.0) -> float:
    """The ``floor_rank`` for :meth:`ChannelQuantiles.update` that leaves the stream's
    ``quantile`` untouched, once ``seen`` of its ``total`` items (images) are in the sketch:
    ``r = 1 - margin * (1 - quantile) * total / seen``, or 0 (no floor) when r <= 1/2 or the
    total is unknown.

    Why it is safe: at most a share 1 - q of the whole stream lies above its q-quantile Q, so
    at most (1 - q) * total of the seen items do, and the seen items' value at rank
    1 - (1 - q) * total / seen is at most Q. ``margin`` (>= 1) keeps the sketch's own error at
    that rank far from Q, so every number at or above Q enters one by one.

    Args:
        quantile: the quantile that must stay as without a floor, in (0, 1).
        seen: items already in the sketch (>= 0).
        total: items in the whole stream (None: unknown).
        margin: how many times the bound's distance to stay below it (default 2).
    """
    if not total or seen <= 0:
        return 0.0
    rank = 1.0 - margin * (1.0 - quantile) * total / seen
    return rank if 0.5 < rank < 1.0 else 0.0


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


class TopImages:
    """The ``k`` images of largest spatial maximum for each of ``num_channels`` channels.

    ``values`` [C, k] float32 and ``indices`` [C, k] int64 are sorted by value, descending,
    ties to the smaller image index; empty slots hold -inf / -1. Images are indexed by
    their position in the stream unless ``update`` is given ``base_index``. NaN positions are
    ignored and an image whose map is all NaN never enters; +-inf maxima are values (see
    :func:`lavise_fast.ops.spatial_max_topk`).

    Args:
        num_channels: C, at least 1.
        k: how many images to keep per channel, at least 0.
        device: where the state lives (None: the CPU); it follows the features' device on ``update``.
    """

    def __init__(self, num_channels: int, k: int, device: torch.device | str | None = None) -> None:
        self.num_channels, self.k = positive_int("num_channels", num_channels), int_at_least("k", k, 0)
        dev = _device(device)
        self.values = torch.full((num_channels, k), -math.inf, dtype=torch.float32, device=dev)
        self.indices = torch.full((num_channels, k), -1, dtype=torch.int64, device=dev)
        self.seen = 0

    def update(self, features: torch.Tensor, base_index: int | None = None) -> torch.Tensor:
        """Adds a batch [N, C, H, W]; returns its spatial maxima [N, C] float32.

        Args:
            features: the batch's feature maps [N, C, H, W].
            base_index: the stream index of the batch's first image; None: the number of images seen so far.
        """
        if features.dim() != 4 or features.shape[1] != self.num_channels:
            raise InputError(
                f"features must have shape [N, {self.num_channels}, H, W], got {tuple(features.shape)}"
            )
        self._follow(features.device)
        base = self.seen if base_index is None else int(base_index)
        maxima = ops.spatial_max_topk(features, self.values, self.indices, base)
        self.seen = max(self.seen, base + features.shape[0])
        return maxima

    def merge(self, other: TopImages) -> TopImages:
        """Folds in another stream's state (same channels and k); the result is the one a
        single stream over both would give. Returns self.

        Args:
            other: the other stream's state, on any device.
        """
        if (other.num_channels, other.k) != (self.num_channels, self.k):
            raise InputError(
                f"cannot merge TopImages({other.num_channels}, {other.k}) into TopImages({self.num_channels}, {self.k})"
            )
        v, i = merge_ranked(
            self.values, self.indices, other.values.to(self.values.device), other.indices.to(self.values.device), self.k
        )
        self.values.copy_(v)
        self.indices.copy_(i)
        self.seen = max(self.seen, other.seen)
        return self

    def to(self, device: torch.device | str) -> TopImages:
        """Moves the state to ``device``. Returns self.

        Args:
            device: the device to move to.
        """
        self.values, self.indices = self.values.to(device), self.indices.to(device)
        return self

    def _follow(self, device: torch.device) -> None:
        if self.values.device != device:
            self.to(device)


class ChannelQuantiles:
    """A streaming, mergeable quantile sketch of each channel over all positions of all images.

    Per channel at most ``capacity`` centroids (a merging t-digest with a logit scale: each
    centroid holds about q(1-q)/delta of the data, fine in both tails), plus the count, the
    number of NaN (ignored), the min and the max. Memory is ``capacity * 16`` bytes per
    channel whatever the number of images. Singletons are exact: while a channel has seen
    fewer values than about ``capacity / 2`` the quantiles equal ``torch.quantile``'s.
    An update with a ``floor_rank`` (what ``explain`` passes, from :func:`safe_floor_rank`)
    lets the CPU skip sorting the values far below the quantile it needs.

    Args:
        num_channels: C, at least 1.
        capacity: the most centroids per channel, at least 8.
        device: where the state lives (None: the CPU); it follows the features' device on ``update``.
    """

    def __init__(self, num_channels: int, capacity: int = 1024, device: torch.device | str | None = None) -> None:
        self.num_channels = positive_int("num_channels", num_channels)
        self.capacity = int_at_least("capacity", capacity, 8)
        dev = _device(device)
        self.means = torch.zeros(num_channels, capacity, dtype=torch.float64, device=dev)
        self.weights = torch.zeros_like(self.means)
        self.summary = torch.zeros(num_channels, 4, dtype=torch.float64, device=dev)
        self.summary[:, 2] = math.inf
        self.summary[:, 3] = -math.inf

    @property
    def count(self) -> torch.Tensor:
        """Non-NaN values seen per channel, [C] float64."""
        return self.summary[:, 0]

    @property
    def nan_count(self) -> torch.Tensor:
        """NaN values seen (and ignored) per channel, [C] float64."""
        return self.summary[:, 1]

    def update(self, features: torch.Tensor, floor_rank: float = 0.0) -> None:
        """Adds every position of a batch [N, C, H, W].

        Args:
            features: the batch's feature maps [N, C, H, W].
            floor_rank: 0 (the default: every value enters one by one), or a rank r in (0, 1)
                below which the batch may enter coarsely: on the CPU, the numbers below the
                sketch's value at rank r skip the sort and enter as 128 bins (see
                ``ops.quantile_sketch_update``). Quantiles above every such floor are unchanged;
                :func:`safe_floor_rank` gives an r that keeps a known quantile so.
        """
        if features.dim() != 4 or features.shape[1] != self.num_channels:
            raise InputError(
                f"features must have shape [N, {self.num_channels}, H, W], got {tuple(features.shape)}"
            )
        if not (floor_rank == 0 or 0 < floor_rank < 1):
            raise InputError(f"floor_rank must be 0 (no floor) or lie in (0, 1), got {floor_rank!r}")
        self._follow(features.device)
        ops.quantile_sketch_update(features, self.means, self.weights, self.summary, float(floor_rank))

    def merge(self, other: ChannelQuantiles) -> ChannelQuantiles:
        """Folds in another sketch of the same channels and capacity. Returns self.

        Args:
            other: the other stream's sketch, on any device.
        """
        if (other.num_channels, other.capacity) != (self.num_channels, self.capacity):
            raise InputError(
                f"cannot merge ChannelQuantiles({other.num_channels}, capacity={other.capacity}) into "
                f"ChannelQuantiles({self.num_channels}, capacity={self.capacity})"
            )
        dev = self.means.device
        merge_sketches(
            self.means, self.weights, self.summary, other.means.to(dev), other.weights.to(dev), other.summary.to(dev)
        )
        return self

    def quantile(self, q: float) -> torch.Tensor:
        """The q-quantile of every channel, [C] float32 (NaN for a channel with no value).

        Linear interpolation between centroid means placed at their centre positions, with
        the min at position 0 and the max at position count - 1: the convention of
        ``torch.quantile(interpolation="linear")``, exact while centroids are singletons.
        NaN values were ignored (see :attr:`nan_count`); +-inf are values: a quantile between
        -inf and anything is -inf, one between a number and +inf is +inf (``torch.quantile``
        gives NaN there).

        Args:
            q: the quantile, in [0, 1].
        """
        if not 0.0 <= float(q) <= 1.0:
            raise InputError(f"q must lie in [0, 1], got {q!r}")
        total = self.summary[:, 0]
        lo, hi = self.summary[:, 2], self.summary[:, 3]
        w = self.weights
        used = w > 0
        centre = torch.cumsum(w, 1) - w + (w - 1) / 2
        last = (total - 1).clamp_min(0)[:, None]
        centre = torch.where(used, centre, last)
        means = torch.where(used, self.means, hi[:, None])
        pos = torch.cat([torch.zeros_like(last), centre, last], 1)
        val = torch.cat([lo[:, None], means, hi[:, None]], 1)
        target = (float(q) * last).contiguous()
        right = torch.searchsorted(pos.contiguous(), target, right=True).clamp(1, pos.shape[1] - 1)
        left = right - 1
        p0, p1 = pos.gather(1, left), pos.gather(1, right)
        v0, v1 = val.gather(1, left), val.gather(1, right)
        span = p1 - p0
        t = torch.where(span > 0, (target - p0) / span.clamp_min(1e-300), torch.zeros_like(span))
        between = v0 + t * (v1 - v0)
        # An infinite end wins (-inf if both are): no NaN from inf - inf or -inf + inf.
        between = torch.where(v1 == math.inf, v1, between)
        between = torch.where(v0 == -math.inf, v0, between)
        est = torch.where(t > 0, between, v0)[:, 0]
        est = torch.minimum(torch.maximum(est, lo), hi)
        return torch.where(total > 0, est, torch.full_like(est, math.nan)).float()

    def to(self, device: torch.device | str) -> ChannelQuantiles:
        """Moves the state to ``device``. Returns self.

        Args:
            device: the device to move to.
        """
        self.means, self.weights, self.summary = (t.to(device) for t in (self.means, self.weights, self.summary))
        return self

    def _follow(self, device: torch.device) -> None:
        if self.means.device != device:
            self.to(device)
