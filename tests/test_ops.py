"""The operator library (``torch.ops.lavise_fast``) against its plain-PyTorch twins.

Every check runs on CPU and CUDA (the ``device`` fixture of conftest.py), on fresh random
inputs of odd sizes, for every feature dtype, with non-contiguous and empty inputs, and the
reference (:mod:`lavise_fast._reference`, run on CPU) is the ground truth. Integer outputs
and indices are compared exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lavise_fast import _reference, ops

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INDEX_DTYPES = [torch.int64, torch.int32]
# Outputs are float32 sums of the same float32 values, in a different order.
POOL_TOL = {"rtol": 1e-5, "atol": 1e-5}
LIB = torch.ops.lavise_fast


# ----------------------------------------------------------------------------------------------
# Helpers


def randn(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.randn(shape).to(dtype).to(device)


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality (NaN equals NaN), whatever the devices."""
    assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, equal_nan=True)


def strided(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to ``t``: its dims stored in reverse order, every second
    element, offset by one. The gaps hold poison (NaN, True or 0) that a kernel ignoring the
    strides would read."""
    if t.is_floating_point():
        poison = math.nan
    elif t.dtype == torch.bool:
        poison = True
    else:
        poison = 0
    d = t.dim()
    buffer = torch.full([2 * s + 1 for s in reversed(t.shape)], poison, dtype=t.dtype, device=t.device)
    view = buffer[tuple(slice(1, None, 2) for _ in range(d))].permute(*reversed(range(d)))
    view.copy_(t)
    assert t.numel() <= 1 or not view.is_contiguous()
    return view


def gaps(view: torch.Tensor) -> torch.Tensor:
    """The poison around a tensor made by :func:`strided` (to check that nothing wrote there)."""
    base = view._base
    inside = torch.zeros(base.shape, dtype=torch.bool, device=base.device)
    inside[tuple(slice(1, None, 2) for _ in range(base.dim()))] = True
    return base[~inside]


def earlier_topk_state(C: int, P: int, n_earlier: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A random valid running top-P state (CPU): the top-P of ``n_earlier`` earlier images, indexed
    0..n_earlier-1. Fewer earlier images than P leave empty slots (-inf / -1) at the end."""
    if n_earlier is None:
        n_earlier = int(torch.randint(0, 2 * P + 2, ()))
    values = torch.full((C, P), -math.inf)
    indices = torch.full((C, P), -1, dtype=torch.int64)
    if n_earlier:
        _reference.spatial_max_topk(torch.randn(n_earlier, C, 1, 1) * 2, values, indices, 0)
    return values, indices, n_earlier


def new_sketch(C: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An empty quantile sketch state (means, weights, summary), as ChannelQuantiles makes it."""
    means = torch.zeros(C, capacity, dtype=torch.float64)
    summary = torch.zeros(C, 4, dtype=torch.float64)
    summary[:, 2], summary[:, 3] = math.inf, -math.inf
    return means, torch.zeros_like(means), summary


def earlier_sketch(C: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random valid sketch state: the reference's sketch of some earlier, differently scaled data."""
    state = new_sketch(C, capacity)
    if C:  # (the reference cannot reshape a channel-less batch)
        _reference.quantile_sketch_update(torch.randn(3, C, 5, 5) * 3 + 1, *state)
    return state


def separated_thresholds(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One float32 threshold per channel that no upsampled activation comes close to.

    The kernel and F.interpolate may round the bilinear sums in a different order, so an
    upsampled value within a few ulps of a threshold could fall on either side of it and
    the integer counts would differ for no fault of the kernel. So we compute the upsampled
    values exactly enough (float64), sort them per channel, and put each threshold in the
    middle of a gap between consecutive values such that no value lies within a relative
    1e-4 of it (relative to max(|t|, 1): stricter near 0, where the O(1) activations' rounding
    errors are absolute rather than relative to t), preferring gaps in
    the middle of the distribution so that both sides of the threshold are populated. Then
    float32 rounding cannot flip any comparison, and inter/union must match exactly.
    """
    up = F.interpolate(activations.cpu().double(), size=size, mode="bilinear", align_corners=False)
    thresholds = torch.empty(up.shape[1])
    for k in range(up.shape[1]):
        v = torch.unique(up[:, k])  # sorted
        if len(v) == 0:
            thresholds[k] = 0.0
            continue
        lo, hi = v[:-1], v[1:]
        mids = ((lo + hi) / 2).float().double()  # the thresholds are float32
        clear = torch.minimum(mids - lo, hi - mids) > 1e-4 * mids.abs().clamp_min(1.0)
        rank = torch.arange(len(mids)) / max(len(mids), 1)
        central = clear & (rank > 0.2) & (rank < 0.9)
        pick = central if central.any() else clear
        if pick.any():
            choices = pick.nonzero()[:, 0]
            thresholds[k] = float(mids[choices[torch.randint(len(choices), ())]])
        else:  # a single value (or no clear gap): everything on or everything off
            thresholds[k] = float(v[0] - 1) if bool(torch.rand(()) < 0.5) else float(v[-1] + 1)
        t = thresholds[k].double()
        assert (v - t).abs().min() > 1e-4 * max(abs(float(t)), 1.0)
    return thresholds


def cosine64(queries: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Cosine similarity in float64 of each query with the keys it lists, [R, k]."""
    q = F.normalize(queries.cpu().double(), dim=1)
    kk = F.normalize(keys.cpu().double(), dim=1)
    idx = indices.cpu().clamp_min(0)
    return (q[:, None, :] * kk[idx]).sum(-1)


def assert_topk_close(values, indices, queries, keys, ref_values, ref_indices) -> None:
    """Values close; indices equal except where two keys' similarities are within 1e-6 (either
    order is right then); every returned value belongs to its returned key; no key twice."""
    values, indices = values.cpu(), indices.cpu()
    assert_close(values, ref_values.cpu())
    assert indices.dtype == torch.int64
    sims = cosine64(queries, keys, indices)
    ref_sims = cosine64(queries, keys, ref_indices)
    differ = indices != ref_indices.cpu()
    if differ.any():
        gap = (sims - ref_sims).abs()[differ].max().item()
        assert gap <= 1e-6, f"indices differ from the reference where similarities differ by {gap}"
    assert_close(values.double(), sims, rtol=0, atol=1e-5)
    if indices.shape[1] > 1:
        assert (indices.sort(1).values.diff(dim=1) > 0).all(), "a key is listed twice"


def assert_ties_ascending(values: torch.Tensor, indices: torch.Tensor) -> None:
    """Among equal values, the smaller index comes first."""
    values, indices = values.cpu(), indices.cpu()
    tied = values[:, 1:] == values[:, :-1]
    assert (indices[:, 1:] > indices[:, :-1])[tied].all()


# ----------------------------------------------------------------------------------------------
# spatial_max_topk

TOPK_SHAPES = [(1, 1, 1, 1), (3, 7, 5, 3), (7, 3, 1, 9), (16, 5, 7, 7), (2, 33, 4, 4), (3, 9, 6, 7), (2, 4, 13, 13)]


@pytest.mark.parametrize("P", [1, 5, 20])
@pytest.mark.parametrize("N, C, H, W", TOPK_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_spatial_max_topk_matches_reference(device, dtype, N, C, H, W, P):
    x = randn(N, C, H, W, dtype=dtype)
    values, indices, n_earlier = earlier_topk_state(C, P)
    base = n_earlier + int(torch.randint(0, 1000, ()))
    ref_values, ref_indices = values.clone(), indices.clone()
    ref_maxima = _reference.spatial_max_topk(x, ref_values, ref_indices, base)

    values, indices = values.to(device), indices.to(device)
    maxima = ops.spatial_max_topk(x.to(device), values, indices, base)

    assert maxima.dtype == torch.float32 and maxima.shape == (N, C) and maxima.device.type == device
    assert_equal(maxima, ref_maxima)
    assert_equal(values, ref_values)
    assert_equal(indices, ref_indices)


@pytest.mark.parametrize("HW", [7, 8, 9, 31, 32, 33, 42, 49, 196])
def test_spatial_max_topk_finds_the_max_at_every_position(device, HW):
    # The CPU kernel reads a map in blocks of 32 and 8 values and its last HW % 8 values as the
    # last eight: channel c has its maximum at position c, all others below it (some NaN).
    x = -torch.rand(2, HW, 1, HW) - 1.0
    x[:, torch.arange(HW), 0, torch.arange(HW)] = torch.rand(2, HW) + 1.0
    x[1, torch.arange(HW), 0, (torch.arange(HW) + 1) % HW] = math.nan
    values = torch.full((HW, 2), -math.inf)
    indices = torch.full((HW, 2), -1, dtype=torch.int64)
    maxima = ops.spatial_max_topk(x.to(device), values.to(device), indices.to(device), 0)
    assert_equal(maxima, x.flatten(2).nan_to_num(-math.inf).amax(2).to(device))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_spatial_max_topk_ties_keep_smaller_index_first(device, dtype):
    # Small integers: the maxima repeat a lot, in the batch and against the earlier state.
    C, P = 6, 8
    x = torch.randint(-2, 3, (11, C, 3, 2)).to(dtype)
    values = torch.randint(0, 3, (C, P)).float().sort(1, descending=True).values
    indices = torch.stack([torch.randperm(40)[:P].sort().values for _ in range(C)])
    ref_values, ref_indices = values.clone(), indices.clone()
    _reference.spatial_max_topk(x, ref_values, ref_indices, 50)
    values, indices = values.to(device), indices.to(device)
    ops.spatial_max_topk(x.to(device), values, indices, 50)
    assert_equal(values, ref_values)
    assert_equal(indices, ref_indices)
    assert (values[:, 1:] == values[:, :-1]).any()
    assert_ties_ascending(values, indices)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_spatial_max_topk_stream_equals_one_sort(device, dtype):
    C, P = 5, 9
    values = torch.full((C, P), -math.inf, device=device)
    indices = torch.full((C, P), -1, dtype=torch.int64, device=device)
    all_maxima, all_index = [], []
    base = 0
    for _ in range(40):
        n = int(torch.randint(0, 7, ()))  # batches of 0, 1 and more images
        # Small integers in channels 0-2 (many repeated maxima), Gaussian in the others.
        x = torch.cat([torch.randint(-3, 4, (n, 3, 3, 2)).float(), torch.randn(n, C - 3, 3, 2)], 1).to(dtype)
        maxima = ops.spatial_max_topk(x.to(device), values, indices, base)
        assert_equal(maxima, x.float().amax((2, 3)))
        all_maxima.append(maxima.cpu())
        all_index.append(torch.arange(base, base + n))
        base += n + int(torch.randint(0, 3, ()))  # increasing, not always contiguous
    maxima, index = torch.cat(all_maxima).t(), torch.cat(all_index)  # [C, total], [total]
    assert maxima.shape[1] > 2 * P
    # One exact sort of everything: descending, and a stable sort keeps equal maxima in
    # increasing image order (the images are listed in increasing index order).
    order = torch.sort(maxima, dim=1, descending=True, stable=True).indices[:, :P]
    assert_equal(values, maxima.gather(1, order))
    assert_equal(indices, index[order])
    assert (values[:3, 1:] == values[:3, :-1]).any(), "the test should produce ties"
    assert_ties_ascending(values, indices)


@pytest.mark.parametrize("P", [2, 7])
def test_spatial_max_topk_nan_never_enters(device, P):
    x = torch.randn(5, 4, 3, 3)
    x[1, 0] = math.nan  # an all-NaN map: maximum NaN, never enters
    x[2, 1, 0, 0] = math.nan  # one NaN position: ignored
    x[3, 2] = -math.inf  # an all -inf map: maximum -inf, a real value that may enter
    x[:, 3] = math.nan  # a channel with no number at all
    values, indices, _ = earlier_topk_state(4, P, n_earlier=1)
    ref_values, ref_indices = values.clone(), indices.clone()
    ref_maxima = _reference.spatial_max_topk(x, ref_values, ref_indices, 10)
    values, indices = values.to(device), indices.to(device)
    maxima = ops.spatial_max_topk(x.to(device), values, indices, 10)

    assert_equal(maxima, ref_maxima)
    assert_equal(values, ref_values)
    assert_equal(indices, ref_indices)
    assert maxima[1, 0].isnan() and maxima[:, 3].isnan().all()
    assert maxima[2, 1] == x[2, 1].flatten()[1:].max()
    assert maxima[3, 2] == -math.inf
    assert not values.isnan().any()
    assert 11 not in indices[0].tolist()
    assert indices[3, 1:].eq(-1).all() and values[3, 1:].eq(-math.inf).all()  # only the earlier image


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_spatial_max_topk_noncontiguous(device, dtype):
    N, C, H, W, P = 6, 5, 4, 3, 4
    x = randn(N, C, H, W, dtype=dtype)
    values, indices, n_earlier = earlier_topk_state(C, P, n_earlier=3)
    ref_values, ref_indices = values.clone(), indices.clone()
    ref_maxima = _reference.spatial_max_topk(x, ref_values, ref_indices, n_earlier)

    values, indices = strided(values.to(device)), strided(indices.to(device))
    maxima = ops.spatial_max_topk(strided(x.to(device)), values, indices, n_earlier)
    assert_equal(maxima, ref_maxima)
    assert_equal(values, ref_values)
    assert_equal(indices, ref_indices)
    assert gaps(values).isnan().all() and gaps(indices).eq(0).all(), "wrote outside the state's view"


@pytest.mark.parametrize("N, C, H, W, P", [(0, 3, 4, 4, 5), (0, 3, 0, 0, 5), (4, 3, 2, 2, 0), (4, 0, 2, 2, 3)])
def test_spatial_max_topk_empty(device, N, C, H, W, P):
    x = randn(N, C, H, W)
    values, indices, _ = earlier_topk_state(C, P, n_earlier=2)
    ref_values, ref_indices = values.clone(), indices.clone()
    ref_maxima = _reference.spatial_max_topk(x, ref_values, ref_indices, 7)
    values, indices = values.to(device), indices.to(device)
    maxima = ops.spatial_max_topk(x.to(device), values, indices, 7)
    assert maxima.shape == (N, C)
    assert_equal(maxima, ref_maxima)
    assert_equal(values, ref_values)
    assert_equal(indices, ref_indices)


# ----------------------------------------------------------------------------------------------
# attention_pool

# The last: 40 rows an image, pooled by a matrix product per image on the CPU (the others: the plain loop).
POOL_SHAPES = [(1, 1, 1, 1, 1), (3, 7, 5, 3, 4), (7, 3, 1, 9, 11), (4, 16, 7, 7, 9), (3, 16, 5, 4, 120),
               (2, 70, 4, 5, 25)]  # 12 or 13 rows an image, 70 channels: the plain loop's blocks


def random_thresholds(x: torch.Tensor) -> torch.Tensor:
    """Per channel, the value at a random position of that channel (so that some positions equal
    their threshold exactly and test the strict `>`), float32."""
    flat = x.float().transpose(0, 1).reshape(x.shape[1], -1)
    return flat[torch.arange(flat.shape[0]), torch.randint(0, flat.shape[1], (flat.shape[0],))]


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("N, C, H, W, M", POOL_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", ["projection", "activation"])
def test_attention_pool_matches_reference(device, mode, dtype, N, C, H, W, M, index_dtype):
    x = randn(N, C, H, W, dtype=dtype)
    rows = torch.randint(0, N, (M,), dtype=index_dtype)
    filters = torch.randint(0, C, (M,), dtype=index_dtype)
    thresholds = random_thresholds(x) if mode == "activation" else None
    expected = _reference.attention_pool(x, rows, filters, mode, thresholds)
    thresholds_on_device = thresholds.to(device) if thresholds is not None else None  # None in projection mode
    out = ops.attention_pool(x.to(device), rows.to(device), filters.to(device), mode, thresholds_on_device)
    assert out.dtype == torch.float32 and out.shape == (M, C) and out.device.type == device
    assert_close(out.cpu(), expected, **POOL_TOL)


@pytest.mark.parametrize("mode", ["projection", "activation"])
def test_attention_pool_zero_weights(device, mode):
    # A zero attention map (projection: ||a|| = 0 gives w = 0) and a map with nothing above
    # its threshold (activation) both pool to exact zeros.
    x = torch.randn(3, 4, 5, 5)
    x[1, 2] = 0.0
    rows, filters = torch.tensor([1, 0, 1]), torch.tensor([2, 2, 3])
    thresholds = torch.tensor([0.0, 0.0, math.inf, 0.5])
    expected = _reference.attention_pool(x, rows, filters, mode, thresholds)
    out = ops.attention_pool(x.to(device), rows.to(device), filters.to(device), mode, thresholds.to(device))
    assert_close(out.cpu(), expected, **POOL_TOL)
    assert out[0].eq(0).all()
    assert (out[1] != 0).any() == (mode == "projection")
    assert (out[2] != 0).any()


@pytest.mark.parametrize("copies", [1, 20])  # 20: enough rows an image for the CPU's matrix products
@pytest.mark.parametrize("mode", ["projection", "activation"])
def test_attention_pool_non_finite_features(device, mode, copies):
    # NaN and inf in an image pool as mean(x * w) would, also where w = 0 (NaN * 0 and inf * 0 are
    # NaN): a matrix product that skips zero weights would miss them. Other images stay exact.
    x = torch.rand(4, 6, 5, 5) + 0.5
    x[1, 3, 0, 0] = math.nan
    x[2, 4, 1, 1] = math.inf
    x[1, 0, 0, 0] = x[2, 0, 1, 1] = 0.0  # filter 0's weight is 0 where channels 3 and 4 are not finite
    rows = torch.tensor([1, 0, 2, 1, 3, 2, 0]).repeat(copies)
    filters = torch.tensor([0, 0, 0, 5, 1, 3, 4]).repeat(copies)
    thresholds = torch.full((6,), 0.25)
    expected = _reference.attention_pool(x, rows, filters, mode, thresholds)
    out = ops.attention_pool(x.to(device), rows.to(device), filters.to(device), mode, thresholds.to(device))
    assert out[0, 3].isnan() and out[2, 4].isnan(), "NaN * 0 and inf * 0 must give NaN"
    assert torch.isfinite(out[[1, 4, 6]]).all()
    assert_close(out.cpu(), expected, **POOL_TOL, equal_nan=True)


@pytest.mark.parametrize("copies", [1, 20])
def test_masked_pool_non_finite_features(device, copies):
    x = torch.rand(3, 5, 4, 4)
    x[2, 1, 3, 3] = math.nan
    masks = torch.zeros(4 * copies, 8, 8, dtype=torch.bool)
    masks[:, :4, :4] = True  # the NaN's position is outside every mask
    rows = torch.tensor([2, 0, 2, 1]).repeat(copies)
    out = ops.masked_pool(x.to(device), masks.to(device), rows.to(device))
    assert out[[0, 2], 1].isnan().all() and torch.isfinite(out[[1, 3]]).all()
    assert_close(out.cpu(), _reference.masked_pool(x, masks, rows), **POOL_TOL, equal_nan=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", ["projection", "activation"])
def test_attention_pool_noncontiguous(device, mode, dtype):
    x = randn(5, 6, 4, 7, dtype=dtype)
    rows, filters = torch.randint(0, 5, (9,)), torch.randint(0, 6, (9,))
    thresholds = random_thresholds(x)
    expected = _reference.attention_pool(x, rows, filters, mode, thresholds)
    x, rows, filters, thresholds = (strided(t.to(device)) for t in (x, rows, filters, thresholds))
    out = ops.attention_pool(x, rows, filters, mode, thresholds)
    assert_close(out.cpu(), expected, **POOL_TOL)


@pytest.mark.parametrize("N, C, H, W, M", [(3, 4, 2, 2, 0), (0, 4, 2, 2, 0), (3, 0, 2, 2, 0), (3, 4, 0, 0, 0)])
@pytest.mark.parametrize("mode", ["projection", "activation"])
def test_attention_pool_empty(device, mode, N, C, H, W, M):
    x = randn(N, C, H, W)
    rows, filters = torch.zeros(M, dtype=torch.int64), torch.zeros(M, dtype=torch.int64)
    thresholds = torch.randn(C)
    expected = _reference.attention_pool(x, rows, filters, mode, thresholds)
    out = ops.attention_pool(x.to(device), rows.to(device), filters.to(device), mode, thresholds.to(device))
    assert out.shape == (M, C) and out.dtype == torch.float32
    assert_close(out.cpu(), expected)


# ----------------------------------------------------------------------------------------------
# masked_pool

MASK_SHAPES = [  # N, C, h, w (features) and M, H, W (masks)
    (1, 1, 1, 1, 1, 1, 1),
    (1, 3, 1, 1, 2, 5, 4),  # a 1 x 1 grid
    (3, 7, 5, 3, 4, 5, 3),  # masks at the grid's size
    (2, 5, 7, 5, 6, 13, 11),  # larger, non-integer ratios
    (4, 6, 7, 7, 5, 28, 28),  # larger, integer ratio
    (3, 4, 9, 6, 3, 4, 5),  # smaller than the grid
    (2, 3, 6, 10, 3, 1, 1),  # 1 x 1 masks
    (2, 6, 7, 5, 64, 13, 11),  # 32 masks an image: a matrix product per image on the CPU
    (2, 70, 4, 5, 25, 9, 10),  # 12 or 13 masks an image, 70 channels: the plain loop's blocks
]


def random_masks(M: int, H: int, W: int, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(M, H, W) < 0.5
    if dtype == torch.uint8:
        return torch.randint(0, 2, (M, H, W), dtype=torch.uint8)
    return torch.rand(M, H, W).to(dtype)  # soft masks


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32, torch.float16])
@pytest.mark.parametrize("N, C, h, w, M, H, W", MASK_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_pool_matches_reference(device, dtype, N, C, h, w, M, H, W, mask_dtype):
    x = randn(N, C, h, w, dtype=dtype)
    masks = random_masks(M, H, W, mask_dtype)
    rows = torch.randint(0, N, (M,), dtype=INDEX_DTYPES[M % 2])
    expected = _reference.masked_pool(x, masks, rows)
    out = ops.masked_pool(x.to(device), masks.to(device), rows.to(device))
    assert out.dtype == torch.float32 and out.shape == (M, C) and out.device.type == device
    assert_close(out.cpu(), expected, **POOL_TOL)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_masked_pool_takes_cpu_rows(device, index_dtype):
    # Rows on the CPU with features on any device: checked on the host, no device sync.
    x = randn(5, 6, 7, 4)
    masks = random_masks(9, 13, 11, torch.bool)
    rows = torch.randint(0, 5, (9,), dtype=index_dtype)
    expected = _reference.masked_pool(x, masks, rows)
    out = ops.masked_pool(x.to(device), masks.to(device), rows)
    assert out.device.type == device
    assert_close(out.cpu(), expected, **POOL_TOL)
    with pytest.raises(IndexError, match=r"rows holds values in \[0, 5\]"):
        ops.masked_pool(x.to(device), masks.to(device), torch.tensor([0, 5] + [1] * 7, dtype=index_dtype))


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_pool_noncontiguous(device, dtype, mask_dtype):
    x = randn(4, 5, 6, 7, dtype=dtype)
    masks = random_masks(6, 17, 11, mask_dtype)
    rows = torch.randint(0, 4, (6,))
    expected = _reference.masked_pool(x, masks, rows)
    out = ops.masked_pool(*(strided(t.to(device)) for t in (x, masks, rows)))
    assert_close(out.cpu(), expected, **POOL_TOL)


def test_masked_pool_uint8_masks_are_binary(device):
    # 0/255 masks (as image files store them) pool exactly like the same masks as bool.
    x = randn(3, 6, 7, 5)
    masks = torch.rand(4, 23, 19) < 0.4
    rows = torch.randint(0, 3, (4,))
    as_bytes = masks.to(torch.uint8) * 255
    out = ops.masked_pool(x.to(device), as_bytes.to(device), rows.to(device))
    assert_close(out.cpu(), _reference.masked_pool(x, masks, rows), **POOL_TOL)
    assert_close(out.cpu(), ops.masked_pool(x, masks, rows), **POOL_TOL)


@pytest.mark.parametrize(
    "N, C, h, w, M, H, W", [(3, 4, 5, 5, 0, 8, 8), (0, 4, 5, 5, 0, 8, 8), (3, 0, 5, 5, 2, 8, 8), (2, 3, 0, 0, 0, 4, 4)]
)
def test_masked_pool_empty(device, N, C, h, w, M, H, W):
    x = randn(N, C, h, w)
    masks = random_masks(M, H, W, torch.bool)
    rows = torch.randint(0, max(N, 1), (M,))
    out = ops.masked_pool(x.to(device), masks.to(device), rows.to(device))
    assert out.shape == (M, C) and out.dtype == torch.float32
    if h * w:  # F.interpolate cannot resize to an empty grid; nothing to compare then
        assert_close(out.cpu(), _reference.masked_pool(x, masks, rows))


# ----------------------------------------------------------------------------------------------
# upsample_iou

IOU_SHAPES = [  # N, K, h, w (activations) and M, H, W (masks)
    (1, 1, 1, 1, 1, 1, 1),
    (3, 4, 1, 1, 5, 7, 9),  # 1 x 1 maps: constant after upsampling
    (2, 3, 5, 3, 4, 5, 3),  # same size
    (3, 5, 7, 7, 6, 30, 30),  # non-integer ratio
    (2, 4, 4, 6, 3, 16, 24),  # integer ratio
    (4, 3, 9, 8, 5, 4, 5),  # masks smaller than the maps
    (1, 2, 3, 2, 2, 1, 1),  # 1 x 1 masks
]


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8])
@pytest.mark.parametrize("N, K, h, w, M, H, W", IOU_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_upsample_iou_matches_reference(device, dtype, N, K, h, w, M, H, W, mask_dtype):
    a = randn(N, K, h, w, dtype=dtype)
    thresholds = separated_thresholds(a, (H, W))  # see its docstring: exact counts need this
    masks = (torch.rand(M, H, W) < 0.4).to(mask_dtype)
    rows = torch.randint(0, N, (M,), dtype=INDEX_DTYPES[M % 2])
    ref_inter, ref_union = _reference.upsample_iou(a, thresholds, masks, rows)
    inter, union = ops.upsample_iou(a.to(device), thresholds.to(device), masks.to(device), rows.to(device))
    assert inter.dtype == union.dtype == torch.int64 and inter.shape == union.shape == (M, K)
    assert inter.device.type == device
    assert_equal(inter, ref_inter)
    assert_equal(union, ref_union)


def test_upsample_iou_extreme_thresholds(device):
    # -inf: every pixel on (inter = mask area, union = H*W); +inf: none (inter 0, union = mask area).
    a = torch.randn(3, 4, 5, 6)
    thresholds = torch.tensor([-math.inf, math.inf, -math.inf, math.inf])
    masks = torch.rand(5, 11, 13) < 0.3
    rows = torch.tensor([2, 0, 0, 1, 2])
    inter, union = ops.upsample_iou(a.to(device), thresholds.to(device), masks.to(device), rows.to(device))
    area = masks.sum((1, 2))
    assert_equal(inter, torch.stack([area, torch.zeros_like(area)] * 2, 1))
    assert_equal(union, torch.stack([torch.full_like(area, 11 * 13), area] * 2, 1))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_upsample_iou_same_size_threshold_is_strict(device, dtype):
    # Masks at the maps' own size: no resampling, every value is exact, so thresholds can be
    # activation values themselves and the comparison must be a strict `>`.
    a = randn(3, 4, 6, 5, dtype=dtype)
    flat = a.float().transpose(0, 1).reshape(4, -1)
    thresholds = flat[torch.arange(4), torch.randint(0, flat.shape[1], (4,))]
    masks = torch.rand(7, 6, 5) < 0.5
    rows = torch.randint(0, 3, (7,))
    on = (a.float() > thresholds[None, :, None, None])[rows]
    inter, union = ops.upsample_iou(a.to(device), thresholds.to(device), masks.to(device), rows.to(device))
    assert_equal(inter, (on & masks[:, None]).sum((2, 3)))
    assert_equal(union, (on | masks[:, None]).sum((2, 3)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_upsample_iou_noncontiguous(device, dtype):
    a = randn(4, 3, 5, 6, dtype=dtype)
    thresholds = separated_thresholds(a, (17, 23))
    masks = torch.rand(6, 17, 23) < 0.5
    rows = torch.randint(0, 4, (6,))
    ref_inter, ref_union = _reference.upsample_iou(a, thresholds, masks, rows)
    inter, union = ops.upsample_iou(*(strided(t.to(device)) for t in (a, thresholds, masks, rows)))
    assert_equal(inter, ref_inter)
    assert_equal(union, ref_union)


@pytest.mark.parametrize(
    "N, K, h, w, M, H, W",
    [(3, 4, 5, 5, 0, 8, 8), (3, 0, 5, 5, 2, 8, 8), (0, 4, 5, 5, 0, 8, 8), (2, 3, 4, 4, 0, 0, 0), (2, 3, 0, 0, 0, 8, 8)],
)
def test_upsample_iou_empty(device, N, K, h, w, M, H, W):
    a = randn(N, K, h, w)
    thresholds = torch.randn(K)
    masks = torch.rand(M, H, W) < 0.5
    rows = torch.randint(0, max(N, 1), (M,))
    inter, union = ops.upsample_iou(a.to(device), thresholds.to(device), masks.to(device), rows.to(device))
    assert inter.shape == union.shape == (M, K)
    assert inter.dtype == union.dtype == torch.int64
    if M and K:  # F.interpolate cannot resize to or from an empty grid; nothing to compare then
        ref_inter, ref_union = _reference.upsample_iou(a, thresholds, masks, rows)
        assert_equal(inter, ref_inter)
        assert_equal(union, ref_union)


# ----------------------------------------------------------------------------------------------
# cosine_topk


@pytest.mark.parametrize(
    "R, V, D, k",
    [(1, 1, 1, 1), (3, 7, 5, 7), (7, 33, 16, 5), (17, 1031, 24, 10), (5, 13, 8, 13), (2, 2049, 3, 2049)],
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cosine_topk_matches_reference(device, dtype, R, V, D, k):
    queries, keys = randn(R, D, dtype=dtype), randn(V, D, dtype=dtype)
    ref_values, ref_indices = _reference.cosine_topk(queries, keys, k)
    values, indices = ops.cosine_topk(queries.to(device), keys.to(device), k)
    assert values.dtype == torch.float32 and values.shape == indices.shape == (R, k)
    assert values.device.type == device
    assert_topk_close(values, indices, queries, keys, ref_values, ref_indices)


def test_cosine_topk_many_chunks(device):
    # V > 65,536 and R = 300: cosine_chunk_size(300) = 2^23 // 300 = 27,962 keys per chunk,
    # so three chunks, the last one partial. Exact copies of a few keys are spread over the
    # chunks, and some queries are noisy copies of those keys, so ties cross chunk borders.
    R, V, D, k = 300, 70_001, 16, 10
    keys = torch.randn(V, D)
    sources = torch.tensor([5, 17, 40_000])
    copies = {5: [27_962 + 5, 60_000, 69_999], 17: [18, 55_924 + 17], 40_000: [40_001, 70_000]}
    for src, dsts in copies.items():
        keys[dsts] = keys[src].clone()
    queries = torch.randn(R, D)
    queries[:60] = keys[sources.repeat(20)] + 0.1 * torch.randn(60, D)
    ref_values, ref_indices = _reference.cosine_topk(queries, keys, k)
    values, indices = ops.cosine_topk(queries.to(device), keys.to(device), k)
    assert_topk_close(values, indices, queries, keys, ref_values, ref_indices)
    # The exact copies: identical similarities, listed in increasing index order, exactly.
    for r in range(60):
        group = sorted([int(sources[r % 3]), *copies[int(sources[r % 3])]])
        listed = indices[r].cpu()
        assert listed[: len(group)].tolist() == group
        assert values[r, : len(group)].unique().numel() == 1
    assert_ties_ascending(values, indices)


def test_cosine_topk_exact_ties_go_to_smaller_index(device):
    V, D = 301, 8
    keys = torch.randn(V, D)
    keys[[7, 150, 300]] = keys[100].clone()  # four identical keys
    keys[[3, 200]] = 0.0  # zero keys: similarity 0 with every query
    queries = torch.randn(6, D)
    queries[0] = keys[100]
    queries[1] = 2.5 * keys[100]
    queries[2] = 0.0  # a zero query: every similarity is 0, so indices 0, 1, 2, ...
    values, indices = ops.cosine_topk(queries.to(device), keys.to(device), V)
    values, indices = values.cpu(), indices.cpu()
    for r in (0, 1):
        assert indices[r, :4].tolist() == [7, 100, 150, 300]
        assert values[r, :4].unique().numel() == 1
    assert_equal(values[2], torch.zeros(V))
    assert_equal(indices[2], torch.arange(V))
    for r in range(6):  # the two zero keys are tied at exactly 0: 3 before 200, adjacent unless another 0
        row = indices[r].tolist()
        assert row.index(3) < row.index(200)
    assert_ties_ascending(values, indices)
    ref_values, ref_indices = _reference.cosine_topk(queries, keys, V)
    assert_topk_close(values, indices, queries, keys, ref_values, ref_indices)


def test_cosine_topk_nan_never_enters(device):
    queries, keys = torch.randn(4, 6), torch.randn(20, 6)
    queries[1, 2] = math.nan  # every similarity of query 1 is NaN: nothing enters
    nan_keys = [4, 11]
    keys[nan_keys, 0] = math.nan  # these keys never enter
    k = 18
    values, indices = ops.cosine_topk(queries.to(device), keys.to(device), k)
    assert_equal(values[1], torch.full((k,), -math.inf))
    assert_equal(indices[1], torch.full((k,), -1))
    kept = torch.tensor([v for v in range(20) if v not in nan_keys])
    good = torch.tensor([0, 2, 3])
    ref_values, ref_indices = _reference.cosine_topk(queries[good], keys[kept], k)
    assert_topk_close(values[good], indices[good], queries[good], keys, ref_values, kept[ref_indices])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cosine_topk_noncontiguous(device, dtype):
    queries, keys = randn(9, 12, dtype=dtype), randn(257, 12, dtype=dtype)
    ref_values, ref_indices = _reference.cosine_topk(queries, keys, 11)
    values, indices = ops.cosine_topk(strided(queries.to(device)), strided(keys.to(device)), 11)
    assert_topk_close(values, indices, queries, keys, ref_values, ref_indices)


@pytest.mark.parametrize("R, V, D, k", [(0, 5, 3, 2), (4, 0, 3, 0), (4, 5, 3, 0), (0, 0, 3, 0), (3, 5, 0, 2)])
def test_cosine_topk_empty(device, R, V, D, k):
    queries, keys = randn(R, D), randn(V, D)
    ref_values, ref_indices = _reference.cosine_topk(queries, keys, k)
    values, indices = ops.cosine_topk(queries.to(device), keys.to(device), k)
    assert values.shape == indices.shape == (R, k)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    assert_equal(values, ref_values)
    assert_equal(indices, ref_indices)


# ----------------------------------------------------------------------------------------------
# quantile_sketch_update


def assert_sketch_equal(actual, expected) -> None:
    (means, weights, summary), (ref_means, ref_weights, ref_summary) = actual, expected
    assert_equal(summary, ref_summary)  # counts first: the most telling failure
    assert_equal(weights, ref_weights)
    assert_close(means.cpu(), ref_means, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "N, C, H, W, capacity",
    [(1, 1, 1, 1, 8), (3, 5, 7, 3, 16), (4, 3, 9, 9, 64), (2, 7, 1, 13, 33),
     (2, 3, 40, 50, 64)],  # 4,000 values a channel: long runs of new values join a centroid at once
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantile_sketch_update_matches_reference(device, dtype, N, C, H, W, capacity):
    expected = earlier_sketch(C, capacity)
    state = tuple(t.to(device, copy=True) for t in expected)  # a copy, also on CPU
    for batch in range(6):
        x = torch.randn(N, C, H, W) * float(torch.rand(()) * 4 + 0.1) + float(torch.randn(()))
        x[torch.rand(x.shape) < 0.05] = math.nan
        if batch == 2:
            x[:, 0] = math.nan  # a channel with no number in this batch keeps its centroids
        if batch == 4:
            x[0, -1, 0, 0], x[-1, 0, -1, -1] = math.inf, -math.inf
        x = x.to(dtype)
        ops.quantile_sketch_update(x.to(device), *state)
        _reference.quantile_sketch_update(x, *expected)
        assert_sketch_equal(state, expected)
    assert (state[1].sum(1).cpu() == expected[2][:, 0]).all()  # the weights add up to the count


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantile_sketch_update_with_a_floor_matches_reference(device, dtype):
    # 8,192 values a channel a batch: from the third batch on (count >= 16,384) the CPU kernel bins
    # the numbers below the floor. ReLU zeros, rounded ties, NaN, +-inf and a value below the old
    # min; the CUDA kernel sorts everything, so it matches the reference without a floor.
    C, capacity = 4, 64
    expected, plain = new_sketch(C, capacity), new_sketch(C, capacity)
    state = tuple(t.to(device, copy=True) for t in expected)
    for batch in range(6):
        x = torch.randn(2, C, 64, 64) * (1 + batch % 3) + (0.5 if batch == 4 else 0.0)
        x[:, 1] = x[:, 1].relu()
        x[:, 2] = x[:, 2].round()
        x[torch.rand(x.shape) < 0.01] = math.nan
        if batch == 3:
            x[0, 0, 0, 0], x[1, 0, 5, 5], x[0, 3, 1, 1] = -math.inf, math.inf, -50.0
        x = x.to(dtype)
        ops.quantile_sketch_update(x.to(device), *state, floor_rank=0.9)
        _reference.quantile_sketch_update(x, *expected, floor_rank=0.9 if device == "cpu" else 0.0)
        _reference.quantile_sketch_update(x, *plain)
        assert_sketch_equal(state, expected)
    assert (state[1].sum(1).cpu() == expected[2][:, 0]).all()  # the bins' weights add up too
    if device == "cpu":
        assert not torch.equal(expected[1], plain[1])  # the floor did bin: this test can tell


def test_quantile_sketch_update_refuses_a_floor_rank_outside_0_1(device):
    with pytest.raises(ValueError, match="floor_rank must be 0"):
        ops.quantile_sketch_update(randn(2, 3, 4, 4, device=device), *(t.to(device) for t in new_sketch(3, 16)),
                                   floor_rank=1.5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantile_sketch_update_noncontiguous_features(device, dtype):
    expected = earlier_sketch(4, 16)
    state = tuple(t.to(device, copy=True) for t in expected)  # a copy, also on CPU
    for _ in range(3):
        x = randn(3, 4, 5, 6, dtype=dtype)
        ops.quantile_sketch_update(strided(x.to(device)), *state)
        _reference.quantile_sketch_update(x, *expected)
    assert_sketch_equal(state, expected)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_quantile_sketch_update_noncontiguous_state_is_refused(device, which):
    # The state is updated in place through raw pointers: a strided view must be refused,
    # not silently written through a contiguous copy that is then lost.
    state = [t.to(device) for t in earlier_sketch(3, 16)]
    state[which] = strided(state[which])
    with pytest.raises(ValueError, match="contiguous"):
        ops.quantile_sketch_update(randn(2, 3, 4, 4, device=device), *state)


@pytest.mark.parametrize("N, C, H, W", [(0, 3, 4, 4), (2, 3, 0, 5), (0, 3, 0, 0), (2, 0, 4, 4)])
def test_quantile_sketch_update_empty(device, N, C, H, W):
    expected = earlier_sketch(C, 16)
    state = tuple(t.to(device, copy=True) for t in expected)  # a copy, also on CPU
    before = tuple(t.clone() for t in expected)
    x = randn(N, C, H, W)
    ops.quantile_sketch_update(x.to(device), *state)
    if C:  # (the reference cannot reshape a channel-less batch)
        _reference.quantile_sketch_update(x, *expected)
        assert_sketch_equal(state, expected)
    assert_sketch_equal(state, before)


# ----------------------------------------------------------------------------------------------
# opcheck: schemas (mutation annotations), fake kernels, torch.compile.


def opcheck_cases(device: str) -> dict:
    x = torch.randn(3, 5, 4, 6, device=device)
    rows = torch.tensor([2, 0, 2, 1], device=device)
    filters = torch.tensor([4, 0, 1, 4], device=device)
    values, indices, _ = earlier_topk_state(5, 4, n_earlier=2)
    masks = torch.rand(4, 9, 11, device=device) < 0.5
    thresholds = separated_thresholds(x, (9, 11)).to(device)
    means, weights, summary = earlier_sketch(5, 16)
    return {
        "spatial_max_topk": (LIB.spatial_max_topk.default, (x, values.to(device), indices.to(device), 2), {}),
        "attention_pool_projection": (LIB.attention_pool.default, (x, rows, filters), {}),
        "attention_pool_activation": (
            LIB.attention_pool.default,
            (x, rows, filters),
            {"mode": "activation", "thresholds": thresholds},
        ),
        "masked_pool": (LIB.masked_pool.default, (x, masks.float(), rows), {}),
        "upsample_iou": (LIB.upsample_iou.default, (x, thresholds, masks, rows), {}),
        "cosine_topk": (
            LIB.cosine_topk.default,
            (torch.randn(6, 8, device=device), torch.randn(37, 8, device=device), 5),
            {},
        ),
        "quantile_sketch_update": (
            LIB.quantile_sketch_update.default,
            (x, means.to(device), weights.to(device), summary.to(device)),
            {},
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "spatial_max_topk",
        "attention_pool_projection",
        "attention_pool_activation",
        "masked_pool",
        "upsample_iou",
        "cosine_topk",
        "quantile_sketch_update",
    ],
)
def test_opcheck(device, case):
    op, args, kwargs = opcheck_cases(device)[case]  # fresh tensors (and clones of any state) per case
    torch.library.opcheck(op, args, kwargs)


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error of the right type naming the argument.


def _topk_state(C=4, P=3, device="cpu"):
    return torch.full((C, P), -math.inf, device=device), torch.full((C, P), -1, dtype=torch.int64, device=device)


def _x(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(shape or (2, 4, 3, 3), device=device).to(dtype)


def _i(*values, device="cpu", dtype=torch.int64):
    return torch.tensor(values, dtype=dtype, device=device)


ERROR_CASES = {
    # spatial_max_topk
    "topk-features-rank": (
        lambda d: ops.spatial_max_topk(_x(4, 3, 3, device=d), *_topk_state(device=d)),
        ValueError,
        "features",
    ),
    "topk-features-int": (
        lambda d: ops.spatial_max_topk(_x(device=d, dtype=torch.int32), *_topk_state(device=d)),
        TypeError,
        "features",
    ),
    "topk-features-float64": (
        lambda d: ops.spatial_max_topk(_x(device=d, dtype=torch.float64), *_topk_state(device=d)),
        TypeError,
        "features",
    ),
    "topk-values-dtype": (
        lambda d: ops.spatial_max_topk(_x(device=d), _topk_state(device=d)[0].double(), _topk_state(device=d)[1]),
        TypeError,
        "values",
    ),
    "topk-indices-float": (
        lambda d: ops.spatial_max_topk(_x(device=d), _topk_state(device=d)[0], _topk_state(device=d)[1].float()),
        TypeError,
        "indices",
    ),
    "topk-values-rank": (
        lambda d: ops.spatial_max_topk(_x(device=d), torch.zeros(4, device=d), _topk_state(device=d)[1]),
        ValueError,
        "values",
    ),
    "topk-channels": (lambda d: ops.spatial_max_topk(_x(device=d), *_topk_state(C=5, device=d)), ValueError, "values"),
    "topk-indices-shape": (
        lambda d: ops.spatial_max_topk(_x(device=d), _topk_state(device=d)[0], _topk_state(P=4, device=d)[1]),
        ValueError,
        "indices",
    ),
    "topk-base-index": (
        lambda d: ops.spatial_max_topk(_x(device=d), *_topk_state(device=d), -1),
        ValueError,
        "base_index",
    ),
    "topk-no-positions": (
        lambda d: ops.spatial_max_topk(_x(2, 4, 0, 3, device=d), *_topk_state(device=d)),
        ValueError,
        "features",
    ),
    # attention_pool
    "attention-features-rank": (
        lambda d: ops.attention_pool(_x(4, 3, 3, device=d), _i(0, device=d), _i(0, device=d)),
        ValueError,
        "features",
    ),
    "attention-features-int": (
        lambda d: ops.attention_pool(_x(device=d, dtype=torch.int64), _i(0, device=d), _i(0, device=d)),
        TypeError,
        "features",
    ),
    "attention-rows-rank": (
        lambda d: ops.attention_pool(_x(device=d), _i([0], device=d), _i(0, device=d)),
        ValueError,
        "rows",
    ),
    "attention-length": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, 1, device=d), _i(0, device=d)),
        ValueError,
        "rows and filters",
    ),
    "attention-rows-too-large": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, 2, device=d), _i(0, 0, device=d)),
        IndexError,
        "rows",
    ),
    "attention-rows-negative": (
        lambda d: ops.attention_pool(_x(device=d), _i(-1, 0, device=d), _i(0, 0, device=d)),
        IndexError,
        "rows",
    ),
    "attention-filters-too-large": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, device=d), _i(4, device=d)),
        IndexError,
        "filters",
    ),
    "attention-filters-negative": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, device=d), _i(-2, device=d)),
        IndexError,
        "filters",
    ),
    "attention-rows-float": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, device=d, dtype=torch.float32), _i(0, device=d)),
        TypeError,
        "rows",
    ),
    "attention-mode": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, device=d), _i(0, device=d), "mean"),
        ValueError,
        "mode",
    ),
    "attention-no-thresholds": (
        lambda d: ops.attention_pool(_x(device=d), _i(0, device=d), _i(0, device=d), "activation"),
        ValueError,
        "thresholds",
    ),
    "attention-thresholds-length": (
        lambda d: ops.attention_pool(
            _x(device=d), _i(0, device=d), _i(0, device=d), "activation", torch.zeros(3, device=d)
        ),
        ValueError,
        "thresholds",
    ),
    "attention-thresholds-int": (
        lambda d: ops.attention_pool(
            _x(device=d), _i(0, device=d), _i(0, device=d), "activation", torch.zeros(4, dtype=torch.int64, device=d)
        ),
        TypeError,
        "thresholds",
    ),
    # masked_pool
    "masked-features-rank": (
        lambda d: ops.masked_pool(
            _x(4, 3, 3, device=d), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(0, device=d)
        ),
        ValueError,
        "features",
    ),
    "masked-features-int": (
        lambda d: ops.masked_pool(
            _x(device=d, dtype=torch.int32), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(0, device=d)
        ),
        TypeError,
        "features",
    ),
    "masked-masks-rank": (
        lambda d: ops.masked_pool(_x(device=d), torch.ones(5, 5, device=d), _i(0, device=d)),
        ValueError,
        "masks",
    ),
    "masked-masks-dtype": (
        lambda d: ops.masked_pool(_x(device=d), torch.ones(1, 5, 5, dtype=torch.int32, device=d), _i(0, device=d)),
        TypeError,
        "masks",
    ),
    "masked-rows-length": (
        lambda d: ops.masked_pool(_x(device=d), torch.ones(2, 5, 5, device=d), _i(0, device=d)),
        ValueError,
        "rows",
    ),
    "masked-rows-too-large": (
        lambda d: ops.masked_pool(_x(device=d), torch.ones(2, 5, 5, device=d), _i(0, 2, device=d)),
        IndexError,
        "rows",
    ),
    "masked-rows-negative": (
        lambda d: ops.masked_pool(_x(device=d), torch.ones(1, 5, 5, device=d), _i(-1, device=d)),
        IndexError,
        "rows",
    ),
    "masked-empty-masks": (
        lambda d: ops.masked_pool(_x(device=d), torch.ones(1, 0, 5, device=d), _i(0, device=d)),
        ValueError,
        "masks",
    ),
    # upsample_iou
    "iou-activations-rank": (
        lambda d: ops.upsample_iou(
            _x(4, 3, 3, device=d),
            torch.zeros(4, device=d),
            torch.ones(1, 5, 5, dtype=torch.bool, device=d),
            _i(0, device=d),
        ),
        ValueError,
        "activations",
    ),
    "iou-activations-int": (
        lambda d: ops.upsample_iou(
            _x(device=d, dtype=torch.int64),
            torch.zeros(4, device=d),
            torch.ones(1, 5, 5, dtype=torch.bool, device=d),
            _i(0, device=d),
        ),
        TypeError,
        "activations",
    ),
    "iou-thresholds-length": (
        lambda d: ops.upsample_iou(
            _x(device=d), torch.zeros(3, device=d), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(0, device=d)
        ),
        ValueError,
        "thresholds",
    ),
    "iou-thresholds-int": (
        lambda d: ops.upsample_iou(
            _x(device=d),
            torch.zeros(4, dtype=torch.int32, device=d),
            torch.ones(1, 5, 5, dtype=torch.bool, device=d),
            _i(0, device=d),
        ),
        TypeError,
        "thresholds",
    ),
    "iou-masks-float": (
        lambda d: ops.upsample_iou(
            _x(device=d), torch.zeros(4, device=d), torch.ones(1, 5, 5, device=d), _i(0, device=d)
        ),
        TypeError,
        "masks",
    ),
    "iou-masks-rank": (
        lambda d: ops.upsample_iou(
            _x(device=d), torch.zeros(4, device=d), torch.ones(5, 5, dtype=torch.bool, device=d), _i(0, device=d)
        ),
        ValueError,
        "masks",
    ),
    "iou-rows-length": (
        lambda d: ops.upsample_iou(
            _x(device=d), torch.zeros(4, device=d), torch.ones(2, 5, 5, dtype=torch.bool, device=d), _i(0, device=d)
        ),
        ValueError,
        "rows",
    ),
    "iou-rows-too-large": (
        lambda d: ops.upsample_iou(
            _x(device=d), torch.zeros(4, device=d), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(2, device=d)
        ),
        IndexError,
        "rows",
    ),
    "iou-rows-negative": (
        lambda d: ops.upsample_iou(
            _x(device=d), torch.zeros(4, device=d), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(-1, device=d)
        ),
        IndexError,
        "rows",
    ),
    # cosine_topk
    "cosine-queries-rank": (
        lambda d: ops.cosine_topk(torch.randn(8, device=d), torch.randn(5, 8, device=d), 2),
        ValueError,
        "queries",
    ),
    "cosine-keys-rank": (
        lambda d: ops.cosine_topk(torch.randn(3, 8, device=d), torch.randn(5, 8, 1, device=d), 2),
        ValueError,
        "keys",
    ),
    "cosine-dimension": (
        lambda d: ops.cosine_topk(torch.randn(3, 8, device=d), torch.randn(5, 7, device=d), 2),
        ValueError,
        "queries and keys",
    ),
    "cosine-k-too-large": (
        lambda d: ops.cosine_topk(torch.randn(3, 8, device=d), torch.randn(5, 8, device=d), 6),
        ValueError,
        "k must",
    ),
    "cosine-k-negative": (
        lambda d: ops.cosine_topk(torch.randn(3, 8, device=d), torch.randn(5, 8, device=d), -1),
        ValueError,
        "k must",
    ),
    "cosine-queries-int": (
        lambda d: ops.cosine_topk(torch.ones(3, 8, dtype=torch.int64, device=d), torch.randn(5, 8, device=d), 2),
        TypeError,
        "queries",
    ),
    "cosine-keys-int": (
        lambda d: ops.cosine_topk(torch.randn(3, 8, device=d), torch.ones(5, 8, dtype=torch.int32, device=d), 2),
        TypeError,
        "keys",
    ),
    # quantile_sketch_update
    "sketch-features-rank": (
        lambda d: ops.quantile_sketch_update(_x(4, 3, 3, device=d), *_sketch(device=d)),
        ValueError,
        "features",
    ),
    "sketch-features-int": (
        lambda d: ops.quantile_sketch_update(_x(device=d, dtype=torch.int32), *_sketch(device=d)),
        TypeError,
        "features",
    ),
    "sketch-means-dtype": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d, bad=(0, "dtype"))),
        TypeError,
        "means",
    ),
    "sketch-weights-dtype": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d, bad=(1, "dtype"))),
        TypeError,
        "weights",
    ),
    "sketch-summary-dtype": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d, bad=(2, "dtype"))),
        TypeError,
        "summary",
    ),
    "sketch-channels": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(C=5, device=d)),
        ValueError,
        "means",
    ),
    "sketch-capacity": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(capacity=7, device=d)),
        ValueError,
        "means",
    ),
    "sketch-weights-shape": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d, bad=(1, "shape"))),
        ValueError,
        "weights",
    ),
    "sketch-summary-shape": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d, bad=(2, "shape"))),
        ValueError,
        "summary",
    ),
    "sketch-means-rank": (
        lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d, bad=(0, "rank"))),
        ValueError,
        "means",
    ),
}


def _sketch(C=4, capacity=16, device="cpu", bad=None):
    state = [t.to(device) for t in new_sketch(C, capacity)]
    if bad is not None:
        which, what = bad
        if what == "dtype":
            state[which] = state[which].float()
        elif what == "shape":
            state[which] = torch.zeros(C, state[which].shape[1] + 1, dtype=torch.float64, device=device)
        else:
            state[which] = state[which].flatten()
    return state


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_refused(device, case):
    call, error, match = ERROR_CASES[case]
    with pytest.raises(error, match=match):
        call(device)


WRONG_DEVICE_CASES = {
    # each call puts exactly one argument (named by the case) on the CPU, the rest on `d`
    "topk-values": lambda d: ops.spatial_max_topk(_x(device=d), _topk_state()[0], _topk_state(device=d)[1]),
    "topk-indices": lambda d: ops.spatial_max_topk(_x(device=d), _topk_state(device=d)[0], _topk_state()[1]),
    "attention-rows": lambda d: ops.attention_pool(_x(device=d), _i(0), _i(0, device=d)),
    "attention-filters": lambda d: ops.attention_pool(_x(device=d), _i(0, device=d), _i(0)),
    "attention-thresholds": lambda d: ops.attention_pool(
        _x(device=d), _i(0, device=d), _i(0, device=d), "activation", torch.zeros(4)
    ),
    "masked-masks": lambda d: ops.masked_pool(_x(device=d), torch.ones(1, 5, 5), _i(0, device=d)),
    "masked-rows": lambda d: ops.masked_pool(_x(device=d), torch.ones(1, 5, 5), _i(0, device=d)),  # CUDA rows, CPU rest
    "iou-thresholds": lambda d: ops.upsample_iou(
        _x(device=d), torch.zeros(4), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(0, device=d)
    ),
    "iou-masks": lambda d: ops.upsample_iou(
        _x(device=d), torch.zeros(4, device=d), torch.ones(1, 5, 5, dtype=torch.bool), _i(0, device=d)
    ),
    "iou-rows": lambda d: ops.upsample_iou(
        _x(device=d), torch.zeros(4, device=d), torch.ones(1, 5, 5, dtype=torch.bool, device=d), _i(0)
    ),
    "cosine-keys": lambda d: ops.cosine_topk(torch.randn(3, 8, device=d), torch.randn(5, 8), 2),
    "sketch-means": lambda d: ops.quantile_sketch_update(_x(device=d), _sketch()[0], *_sketch(device=d)[1:]),
    "sketch-weights": lambda d: ops.quantile_sketch_update(
        _x(device=d), _sketch(device=d)[0], _sketch()[1], _sketch(device=d)[2]
    ),
    "sketch-summary": lambda d: ops.quantile_sketch_update(_x(device=d), *_sketch(device=d)[:2], _sketch()[2]),
}


@pytest.mark.parametrize("case", list(WRONG_DEVICE_CASES))
def test_wrong_device_is_refused(device, case):
    if device == "cpu":
        pytest.skip("a device mismatch needs a second device: CUDA only")
    argument = case.split("-", 1)[1]
    with pytest.raises(ValueError, match=argument):
        WRONG_DEVICE_CASES[case](device)
