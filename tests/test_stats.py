"""Streaming, mergeable per-filter statistics: TopImages and ChannelQuantiles (DESIGN.md section 5).

Every test runs on CPU and CUDA (the ``device`` fixture of conftest.py). The ground truth is
one exact computation over everything the stream saw: a stable sort for TopImages,
``torch.quantile`` for ChannelQuantiles.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from lavise_fast.stats import ChannelQuantiles, TopImages, safe_floor_rank

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality (NaN equals NaN), whatever the devices."""
    assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, equal_nan=True)


def exact_top(maxima: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best images per channel by one exact sort. maxima [C, total] lists the images in
    increasing index order ``index`` [total], so a stable descending sort puts the smaller
    index first among equal maxima; missing slots are -inf / -1."""
    C, total = maxima.shape
    order = torch.sort(maxima, dim=1, descending=True, stable=True).indices[:, :k]
    values = torch.full((C, k), -math.inf)
    indices = torch.full((C, k), -1, dtype=torch.int64)
    values[:, : min(k, total)] = maxima.gather(1, order)
    indices[:, : min(k, total)] = index[order]
    return values, indices


def tied_batch(n: int, C: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, C, 3, 4]: small integers in the first half of the channels (their maxima repeat
    a lot), Gaussian values in the others."""
    half = C // 2
    ints = torch.randint(-3, 4, (n, half, 3, 4)).float()
    return torch.cat([ints, torch.randn(n, C - half, 3, 4)], 1).to(dtype)


# ----------------------------------------------------------------------------------------------
# TopImages


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_top_images_stream_equals_one_sort(device, dtype):
    C, k = 7, 12
    tops = TopImages(C, k, device=device)
    all_maxima = []
    for _ in range(60):
        x = tied_batch(int(torch.randint(0, 9, ())), C, dtype)  # 0 to 8 images per batch
        maxima = tops.update(x.to(device))
        assert maxima.shape == (x.shape[0], C) and maxima.dtype == torch.float32
        assert_equal(maxima, x.float().amax((2, 3)))
        all_maxima.append(maxima.cpu())
    maxima = torch.cat(all_maxima).t()
    total = maxima.shape[1]
    assert tops.seen == total > 4 * k
    values, indices = exact_top(maxima, torch.arange(total), k)
    assert tops.values.device.type == device
    assert_equal(tops.values, values)
    assert_equal(tops.indices, indices)
    tied = tops.values[: C // 2, 1:] == tops.values[: C // 2, :-1]
    assert tied.any(), "the test should produce ties"
    assert (tops.indices[:, 1:] > tops.indices[:, :-1])[tops.values[:, 1:] == tops.values[:, :-1]].all()


@pytest.mark.parametrize("split", ["halves", "interleaved"])
def test_top_images_merge_equals_one_stream(device, split):
    C, k = 6, 10
    whole = TopImages(C, k, device=device)
    parts = [TopImages(C, k, device=device), TopImages(C, k, device=device)]
    base = 0
    n_batches = 30
    for b in range(n_batches):
        x = tied_batch(int(torch.randint(1, 7, ())), C).to(device)
        part = (b >= n_batches // 2) if split == "halves" else b % 2
        parts[part].update(x, base_index=base)  # each stream covers its own image indices
        whole.update(x, base_index=base)
        base += x.shape[0]
    a_values, a_indices = parts[0].values.clone(), parts[0].indices.clone()
    merged = parts[0].merge(parts[1])
    assert merged is parts[0]
    assert_equal(merged.values, whole.values)
    assert_equal(merged.indices, whole.indices)
    assert merged.seen == whole.seen == base
    # The other way round gives the same.
    other = TopImages(C, k, device=device)
    other.values.copy_(a_values)
    other.indices.copy_(a_indices)
    parts[1].merge(other)
    assert_equal(parts[1].values, whole.values)
    assert_equal(parts[1].indices, whole.indices)


def test_top_images_fewer_images_than_k(device):
    tops = TopImages(3, 8, device=device)
    x = torch.randn(5, 3, 2, 2)
    tops.update(x.to(device))
    values, indices = exact_top(x.amax((2, 3)).t(), torch.arange(5), 8)
    assert_equal(tops.values, values)
    assert_equal(tops.indices, indices)
    assert tops.indices[:, 5:].eq(-1).all() and tops.values[:, 5:].eq(-math.inf).all()


def test_top_images_errors(device):
    with pytest.raises(ValueError, match="num_channels"):
        TopImages(0, 3, device=device)
    with pytest.raises(ValueError, match="k must"):
        TopImages(3, -1, device=device)
    tops = TopImages(3, 2, device=device)
    with pytest.raises(ValueError, match="features"):
        tops.update(torch.randn(2, 4, 3, 3, device=device))
    with pytest.raises(ValueError, match="features"):
        tops.update(torch.randn(3, 3, 3, device=device))
    with pytest.raises(ValueError, match="merge"):
        tops.merge(TopImages(3, 5, device=device))


# ----------------------------------------------------------------------------------------------
# ChannelQuantiles

Q = 0.995
CONTINUOUS = {0: "log-normal", 1: "Student-t (3 dof)", 2: "negative", 3: "ReLU-like (half zeros)"}
CONSTANT = 3.25


def mixed_batch(n: int, H: int = 16, W: int = 16) -> torch.Tensor:
    """[n, 6, H, W]: log-normal, Student-t with 3 degrees of freedom (heavy tails), all
    negative, ReLU of a Gaussian (half exact zeros), a constant, all zeros."""
    shape = (n, H, W)
    lognormal = torch.randn(shape).exp()
    student = torch.randn(shape) / (torch.randn((3, *shape)).pow(2).sum(0) / 3).sqrt()
    negative = -2.0 - 0.5 * torch.randn(shape).exp()
    relu = torch.randn(shape).relu()
    constant = torch.full(shape, CONSTANT)
    zeros = torch.zeros(shape)
    return torch.stack([lognormal, student, negative, relu, constant, zeros], 1)


def share_above(values: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per channel, the share of values strictly above the estimate. values [C, total]."""
    return (values > estimate.cpu()[:, None]).double().mean(1)


def assert_accurate(estimate: torch.Tensor, values: torch.Tensor) -> None:
    """The 0.995 estimate leaves between 0.49 % and 0.51 % of each continuous channel above it,
    and is exact for the constant and the all-zero channel."""
    exact = torch.quantile(values.double(), Q, dim=1)
    share = share_above(values, estimate)
    for c, name in CONTINUOUS.items():
        assert 0.0049 <= share[c] <= 0.0051, (
            f"{name}: {share[c]:.5f} of the values lie above the estimate {estimate[c]:.6g} "
            f"(torch.quantile: {exact[c]:.6g})"
        )
    assert estimate[4].item() == CONSTANT
    assert estimate[5].item() == 0.0


def test_channel_quantiles_accuracy_over_a_long_stream(device):
    # 100 batches of 8 images of 16 x 16: 204,800 values per channel.
    sketch = ChannelQuantiles(6, device=device)
    batches = [mixed_batch(8) for _ in range(100)]
    for x in batches:
        sketch.update(x.to(device))
    values = torch.cat(batches).transpose(0, 1).reshape(6, -1)
    assert values.shape[1] >= 200_000
    assert_equal(sketch.count, torch.full((6,), float(values.shape[1]), dtype=torch.float64))
    assert_equal(sketch.nan_count, torch.zeros(6, dtype=torch.float64))
    estimate = sketch.quantile(Q)
    assert estimate.shape == (6,) and estimate.dtype == torch.float32
    assert_accurate(estimate.cpu(), values)
    # The extremes are the stream's min and max.
    assert_equal(sketch.quantile(0.0), values.amin(1))
    assert_equal(sketch.quantile(1.0), values.amax(1))


def test_channel_quantiles_merge(device):
    # Two sketches over 50 batches each, merged: as accurate as one over all 100.
    sketches = [ChannelQuantiles(6, device=device), ChannelQuantiles(6, device=device)]
    batches = [mixed_batch(8) for _ in range(100)]
    for b, x in enumerate(batches):
        sketches[b % 2].update(x.to(device))
    merged = sketches[0].merge(sketches[1])
    assert merged is sketches[0]
    values = torch.cat(batches).transpose(0, 1).reshape(6, -1)
    assert_equal(merged.count, torch.full((6,), float(values.shape[1]), dtype=torch.float64))
    assert_accurate(merged.quantile(Q).cpu(), values)


def test_channel_quantiles_memory_does_not_grow(device):
    sketch = ChannelQuantiles(5, capacity=64, device=device)
    initial = [tuple(t.shape) for t in (sketch.means, sketch.weights, sketch.summary)]
    assert initial == [(5, 64), (5, 64), (5, 4)]
    for b in range(200):
        sketch.update(torch.randn(2, 5, 4, 4, device=device) * (b + 1))
        if b + 1 == 10:
            after_10 = [tuple(t.shape) for t in (sketch.means, sketch.weights, sketch.summary)]
    after_200 = [tuple(t.shape) for t in (sketch.means, sketch.weights, sketch.summary)]
    assert after_10 == after_200 == initial
    assert (sketch.weights > 0).sum(1).le(64).all()
    assert_equal(sketch.count, torch.full((5,), 200 * 2 * 16.0, dtype=torch.float64))


def test_channel_quantiles_exact_while_small(device):
    # 300 values per channel in 3 batches, capacity 1024: every centroid is a singleton, so
    # the quantiles are torch.quantile's (linear interpolation), exactly.
    def batch() -> torch.Tensor:
        shape = (4, 5, 5)
        return torch.stack(
            [
                torch.randn(shape),
                torch.randn(shape).exp(),
                -3.0 - torch.rand(shape),
                torch.randint(0, 5, shape).float(),  # repeated values
            ],
            1,
        )

    sketch = ChannelQuantiles(4, capacity=1024, device=device)
    batches = [batch() for _ in range(3)]
    for x in batches:
        sketch.update(x.to(device))
    values = torch.cat(batches).transpose(0, 1).reshape(4, -1).double()
    assert values.shape[1] == 300
    for q in [0.0, 0.001, 0.1, 0.25, 0.5, 0.77, 0.9, 0.995, 1.0]:
        assert_equal(sketch.quantile(q), torch.quantile(values, q, dim=1).float())


def test_channel_quantiles_nan_is_counted_and_ignored(device):
    sketch = ChannelQuantiles(3, device=device)
    batches = []
    for _ in range(2):
        x = torch.randn(4, 3, 6, 5)
        x[torch.rand(x.shape) < 0.1] = math.nan
        x[:, 2] = math.nan  # a channel with no number at all
        batches.append(x)
        sketch.update(x.to(device))
    values = torch.cat(batches).transpose(0, 1).reshape(3, -1).double()
    assert_equal(sketch.nan_count, values.isnan().sum(1).double())
    assert_equal(sketch.count, (~values.isnan()).sum(1).double())
    for q in [0.0, 0.5, 0.995, 1.0]:
        estimate = sketch.quantile(q)
        assert_equal(estimate[:2], torch.nanquantile(values[:2], q, dim=1).float())
        assert estimate[2].isnan()


def test_a_safe_floor_keeps_the_quantile_of_a_drifting_stream(device):
    # Images sorted by class, as an unshuffled ImageFolder gives them: the first 15 % fire high,
    # the rest low, and one early outlier stretches the range the bins cover. 20 batches of
    # 8 images of 32 x 32 (8,192 values a channel a batch): floors from the third batch on.
    total, q = 160, 0.995
    batches = [torch.randn(8, 3, 32, 32) * (4.0 if i < 3 else 1.0) + (4.0 if i < 3 else 0.0) for i in range(20)]
    batches[0][0, :, 0, 0] = -500.0
    safe, plain, fixed = (ChannelQuantiles(3, device=device) for _ in range(3))
    seen, ranks = 0, []
    for x in batches:
        ranks.append(safe_floor_rank(q, seen, total))
        safe.update(x.to(device), ranks[-1])
        plain.update(x.to(device))
        fixed.update(x.to(device), 0.97)  # a floor that ignores how much of the stream is still to come
        seen += x.shape[0]
    assert ranks[0] == 0.0 and 0.5 < ranks[2] < ranks[-1] < q  # no floor before any image, then rising
    values = torch.cat(batches).transpose(0, 1).reshape(3, -1)
    assert_close(safe.quantile(q).cpu(), plain.quantile(q).cpu(), rtol=1e-6, atol=0)
    assert ((share_above(values, safe.quantile(q)) - (1 - q)).abs() <= 0.02 * (1 - q)).all()
    if device == "cpu":  # (the CUDA kernel sorts every value: no floor to get wrong)
        # The control: later batches of high images bin their values near the quantile.
        assert ((share_above(values, fixed.quantile(q)) - (1 - q)).abs() > 0.02 * (1 - q)).any()


def test_safe_floor_rank():
    assert safe_floor_rank(0.995, 0, 100) == 0.0  # nothing seen yet
    assert safe_floor_rank(0.995, 50, None) == 0.0  # the stream's length is unknown
    assert safe_floor_rank(0.995, 5, 1000) == 0.0  # 1 - 2 * 0.005 * 200 < 1/2: no floor
    assert safe_floor_rank(0.995, 500, 1000) == pytest.approx(1 - 2 * 0.005 * 2)
    assert safe_floor_rank(0.9, 1000, 1000, margin=1.0) == pytest.approx(0.9)
    assert safe_floor_rank(0.995, 250, 1000) < safe_floor_rank(0.995, 750, 1000)


def test_channel_quantiles_errors(device):
    with pytest.raises(ValueError, match="num_channels"):
        ChannelQuantiles(0, device=device)
    with pytest.raises(ValueError, match="capacity"):
        ChannelQuantiles(3, capacity=7, device=device)
    sketch = ChannelQuantiles(3, device=device)
    with pytest.raises(ValueError, match="features"):
        sketch.update(torch.randn(2, 4, 3, 3, device=device))
    with pytest.raises(ValueError, match="features"):
        sketch.update(torch.randn(3, 3, 3, device=device))
    for rank in [-0.1, 1.0, math.nan]:
        with pytest.raises(ValueError, match="floor_rank"):
            sketch.update(torch.randn(2, 3, 3, 3, device=device), rank)
    for q in [-0.01, 1.01, math.nan]:
        with pytest.raises(ValueError, match="q must"):
            sketch.quantile(q)
    with pytest.raises(ValueError, match="merge"):
        sketch.merge(ChannelQuantiles(3, capacity=64, device=device))
    with pytest.raises(ValueError, match="merge"):
        sketch.merge(ChannelQuantiles(4, device=device))
