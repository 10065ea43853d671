"""Property-based tests (hypothesis) of every operator and of the stats classes, on hostile input.

Each property draws shapes (1, small and large odd sizes, bounded so that the file stays fast),
every dtype the op accepts, contents from a drawn seed (Gaussian, wide magnitudes, small integers
with many ties, or a constant) and hostile values: NaN, +inf, -inf, -0.0 sprinkled or dense, and
whole maps or channels of them, with thresholds at +-inf and NaN. The compiled op (on CPU, and on
CUDA where there is a GPU) is compared with the plain-PyTorch reference (lavise_fast._reference,
run on CPU) and with naive loops written here.

The defined behaviour of non-finite values (also in the docstrings of lavise_fast.ops and stats):

- spatial_max_topk / TopImages: NaN positions are ignored and a map of only NaN has maximum NaN,
  which never enters the top images; +inf and -inf are ordinary values: a +inf maximum ranks
  first, a -inf maximum (a map of only -inf, or -inf and NaN) still enters, before empty slots.
- attention_pool: mean(x * w) in IEEE arithmetic. projection: an attention map holding NaN or
  +-inf makes the whole row NaN; activation: w = 1[a > t] (strict, NaN never passes): t = -inf
  selects every position whose a is neither NaN nor -inf, t = +inf and t = NaN select none.
- masked_pool: mean(x * mask) in IEEE arithmetic (NaN propagates, inf * 0 is NaN).
- upsample_iou: the upsampled value is F.interpolate's (IEEE); a NaN value is never on;
  threshold -inf turns on every value that is not NaN or -inf, +inf and NaN turn on none.
- cosine_topk: a query or key holding NaN or +-inf has NaN similarities, which never enter:
  their slots are left empty (-inf / -1) after every real similarity.
- quantile_sketch_update / ChannelQuantiles: NaN is counted (nan_count) and ignored; +-inf are
  values (count, min, max); a centroid holding -inf has mean -inf, else one holding +inf has
  mean +inf; a quantile between -inf and anything is -inf, one between a number and +inf +inf.

Profiles (tests/conftest.py): HYPOTHESIS_PROFILE=ci (default), dev or thorough.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lavise_fast import _reference, ops
from lavise_fast.stats import ChannelQuantiles, TopImages

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]  # conftest.py skips `cuda` without a GPU
FEATURE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # what every op accepts (float64 is refused)
INDEX_DTYPES = [torch.int64, torch.int32]
SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0]
U32 = 2.0**-24  # float32 unit roundoff

# The `device` parameter overrides conftest's fixture, and the autouse per-test seed does not
# matter here (every random tensor comes from a drawn seed), so that health check is moot.
given_data = given(data=st.data())
op_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# Strategies


def size(small: int, large: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """1, a small size or one of a few large odd sizes."""
    choices = [st.just(1), st.integers(1, small)]
    if large:
        choices.append(st.sampled_from(large))
    return st.one_of(*choices)


def generator(data: st.DataObject) -> torch.Generator:
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def hostile(data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype, label: str) -> torch.Tensor:
    """A random tensor of `shape` (CPU, `dtype`) with hostile values in it."""
    g = generator(data)
    kind = data.draw(st.sampled_from(["normal", "wide", "ties", "constant"]), label=f"{label} kind")
    if kind == "normal":
        x = torch.randn(shape, generator=g)
    elif kind == "wide":  # magnitudes from 1e-3 to 1e3
        x = torch.randn(shape, generator=g) * 10 ** torch.empty(shape).uniform_(-3, 3, generator=g)
    elif kind == "ties":
        x = torch.randint(-3, 4, shape, generator=g).float()
    else:
        x = torch.full(shape, data.draw(st.floats(-8, 8, width=16), label=f"{label} constant"))
    x = x.to(dtype)
    n = x.numel()
    if n == 0:
        return x
    flat = x.view(-1)
    for _ in range(data.draw(st.integers(0, 6), label=f"{label} sprinkles")):
        flat[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(SPECIALS))
    density = data.draw(st.sampled_from([0.0, 0.0, 0.1, 0.6]), label=f"{label} density")
    if density:
        specials = torch.tensor(SPECIALS, dtype=dtype)[torch.randint(0, len(SPECIALS), shape, generator=g)]
        x = torch.where(torch.rand(shape, generator=g) < density, specials, x)
    if x.dim() == 4:  # whole maps of one value: all NaN, all +inf, all -inf, all zero
        for _ in range(data.draw(st.integers(0, 3), label=f"{label} whole maps")):
            n_, c_ = data.draw(st.integers(0, shape[0] - 1)), data.draw(st.integers(0, shape[1] - 1))
            x[n_, c_] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))
    return x


def maybe_noncontiguous(data: st.DataObject, t: torch.Tensor) -> torch.Tensor:
    """`t` itself or a non-contiguous view equal to it whose gaps hold poison."""
    if t.numel() < 2 or not data.draw(st.booleans(), label="non-contiguous"):
        return t
    poison = math.nan if t.is_floating_point() else (True if t.dtype == torch.bool else 0)
    view = torch.stack([t, torch.full_like(t, poison)], -1)[..., 0]
    assert not view.is_contiguous()
    return view


def indices(data: st.DataObject, bound: int, count: int, label: str) -> torch.Tensor:
    g = generator(data)
    dtype = data.draw(st.sampled_from(INDEX_DTYPES), label=f"{label} dtype")
    return torch.randint(0, bound, (count,), generator=g).to(dtype)


# ----------------------------------------------------------------------------------------------
# Assertions


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality (NaN equals NaN), whatever the devices."""
    assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, equal_nan=True)


def assert_pooled_close(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor, terms: int) -> None:
    """Pooled float32 sums: the same NaN and +-inf, and finite values within the float32 error
    bound of two sums of `terms` products in any order, relative to `scale` = mean |x * w|."""
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert torch.equal(actual.isnan(), expected.isnan()), "NaN in different places"
    inf = expected.isinf()
    assert torch.equal(actual.isinf(), inf) and torch.equal(actual[inf], expected[inf]), "+-inf differ"
    finite = ~(expected.isnan() | inf)
    tolerance = 4 * (terms + 4) * U32 * scale.double().cpu() + 1e-30
    error = (actual.double() - expected.double()).abs()
    bad = finite & (error > tolerance)
    assert not bad.any(), f"{int(bad.sum())} pooled values off by up to {float(error[bad].max()):.3g}"


def naive_top(maxima: torch.Tensor, index: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (maximum, image index) per channel by a Python sort; maxima [C, n] lists images
    `index`. NaN never enters; -inf does; missing slots are -inf / -1."""
    values = torch.full((maxima.shape[0], k), -math.inf)
    out_index = torch.full((maxima.shape[0], k), -1, dtype=torch.int64)
    for c, row in enumerate(maxima.tolist()):
        ranked = sorted((-v, i) for v, i in zip(row, index, strict=True) if not math.isnan(v))[:k]
        for j, (v, i) in enumerate(ranked):
            values[c, j], out_index[c, j] = -v, i
    return values, out_index


def assert_ranked_list(values: torch.Tensor, indices: torch.Tensor) -> None:
    """Descending, no NaN, ties to the smaller index, empty slots (-inf / -1) only at the end."""
    values, indices = values.cpu(), indices.cpu()
    assert not values.isnan().any()
    empty = indices < 0
    assert values[empty].eq(-math.inf).all()
    assert (empty[:, :-1] <= empty[:, 1:]).all(), "an empty slot before a real entry"
    both = ~empty[:, 1:]
    assert (values[:, :-1] >= values[:, 1:])[both].all()
    tied = both & (values[:, :-1] == values[:, 1:])
    assert (indices[:, :-1] < indices[:, 1:])[tied].all()


def nan_max(x: torch.Tensor) -> float:
    finite = x[~x.isnan()]
    return float(finite.max()) if finite.numel() else -math.inf


def nan_min(x: torch.Tensor) -> float:
    finite = x[~x.isnan()]
    return float(finite.min()) if finite.numel() else math.inf


# ----------------------------------------------------------------------------------------------
# spatial_max_topk and TopImages


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_spatial_max_topk(device, data):
    dtype = data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype")
    N, C = data.draw(st.integers(0, 9), label="N"), data.draw(size(7, (33, 67)), label="C")
    H, W = data.draw(size(5, (13, 31)), label="H"), data.draw(size(5, (9, 17)), label="W")
    P = data.draw(st.integers(0, 9), label="P")
    x = hostile(data, (N, C, H, W), dtype, "features")
    # The state after some earlier images (their maxima hostile too), then a gap in the indices.
    n_earlier = data.draw(st.integers(0, 2 * P + 1), label="earlier images")
    earlier = hostile(data, (n_earlier, C, 1, 1), torch.float32, "earlier")
    values = torch.full((C, P), -math.inf)
    state_indices = torch.full((C, P), -1, dtype=torch.int64)
    _reference.spatial_max_topk(earlier, values, state_indices, 0)
    base = n_earlier + data.draw(st.integers(0, 3), label="gap")
    ref_values, ref_indices = values.clone(), state_indices.clone()
    ref_maxima = _reference.spatial_max_topk(x, ref_values, ref_indices, base)

    values, state_indices = values.to(device), state_indices.to(device)
    maxima = ops.spatial_max_topk(maybe_noncontiguous(data, x.to(device)), values, state_indices, base)

    assert maxima.dtype == torch.float32 and maxima.shape == (N, C) and maxima.device.type == device
    assert_equal(maxima, ref_maxima)
    assert_equal(values, ref_values)
    assert_equal(state_indices, ref_indices)
    # Naive: max over the positions that are not NaN (NaN if none), and one Python sort of all images.
    flat = x.float().flatten(2)
    for n in range(N):
        for c in range(C):
            m = flat[n, c][~flat[n, c].isnan()]
            assert_equal(maxima[n, c], m.max() if m.numel() else torch.tensor(math.nan))
    all_maxima = torch.cat([earlier.flatten(1).t(), maxima.cpu().t()], 1)
    naive_values, naive_indices = naive_top(all_maxima, [*range(n_earlier), *range(base, base + N)], P)
    assert_equal(values, naive_values)
    assert_equal(state_indices, naive_indices)
    assert_ranked_list(values, state_indices)


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_top_images_stream_and_merge(device, data):
    dtype = data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype")
    C, k = data.draw(size(6, (17,)), label="C"), data.draw(st.integers(0, 7), label="k")
    H, W = data.draw(size(4), label="H"), data.draw(size(4, (11,)), label="W")
    whole = TopImages(C, k, device=device)
    parts = [TopImages(C, k, device=device), TopImages(C, k, device=device)]
    seen_maxima, seen_index, base = [], [], 0
    for b in range(data.draw(st.integers(1, 5), label="batches")):
        x = hostile(data, (data.draw(st.integers(0, 6)), C, H, W), dtype, f"batch {b}").to(device)
        maxima = whole.update(x, base_index=base)
        parts[data.draw(st.integers(0, 1), label="part")].update(x, base_index=base)
        seen_maxima.append(maxima.cpu())
        seen_index += range(base, base + x.shape[0])
        base += x.shape[0] + data.draw(st.integers(0, 2), label="gap")
    naive_values, naive_indices = naive_top(torch.cat(seen_maxima).t(), seen_index, k)
    assert_equal(whole.values, naive_values)
    assert_equal(whole.indices, naive_indices)
    merged = parts[0].merge(parts[1])
    assert_equal(merged.values, naive_values)
    assert_equal(merged.indices, naive_indices)
    assert_ranked_list(merged.values, merged.indices)


# ----------------------------------------------------------------------------------------------
# attention_pool


def thresholds_for(data: st.DataObject, x: torch.Tensor, label: str) -> torch.Tensor:
    """One threshold per channel: an activation value of the channel (a strict `>` is tested on
    its ties), a Gaussian value, +inf, -inf or NaN; in any accepted dtype."""
    C = x.shape[1]
    flat = x.float().transpose(0, 1).reshape(C, -1)
    t = torch.empty(C)
    for c in range(C):
        kind = data.draw(st.sampled_from(["value", "value", "gaussian", "+inf", "-inf", "nan"]), label=label)
        if kind == "value" and flat.shape[1]:
            t[c] = flat[c, data.draw(st.integers(0, flat.shape[1] - 1))]
        elif kind in ("value", "gaussian"):
            t[c] = data.draw(st.floats(-3, 3, width=16))
        else:
            t[c] = {"+inf": math.inf, "-inf": -math.inf, "nan": math.nan}[kind]
    return t.to(data.draw(st.sampled_from(FEATURE_DTYPES), label=f"{label} dtype"))


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_attention_pool(device, data):
    mode = data.draw(st.sampled_from(["projection", "activation"]), label="mode")
    dtype = data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype")
    N, C = data.draw(size(5, (9,)), label="N"), data.draw(size(7, (33, 65)), label="C")
    H, W = data.draw(size(5, (15, 31)), label="H"), data.draw(size(5, (7, 29)), label="W")
    M = data.draw(st.integers(0, 13), label="M")
    x = hostile(data, (N, C, H, W), dtype, "features")
    rows, filters = indices(data, N, M, "rows"), indices(data, C, M, "filters")
    thresholds = thresholds_for(data, x, "thresholds") if mode == "activation" else None

    expected = _reference.attention_pool(x, rows, filters, mode, thresholds)
    args = [maybe_noncontiguous(data, t.to(device)) for t in (x, rows, filters)]
    out = ops.attention_pool(*args, mode, thresholds.to(device) if thresholds is not None else None)
    assert out.dtype == torch.float32 and out.shape == (M, C) and out.device.type == device

    # Naive, in float64: the weights and the scale of the float32 rounding errors.
    x64 = x.double()
    a = x64[rows.long(), filters.long()]  # [M, H, W]
    if mode == "projection":
        norm = a.flatten(1).norm(dim=1)[:, None, None]
        w = torch.where(norm > 0, a / norm, torch.zeros_like(a))
        finite_map = a.flatten(1).isfinite().all(1)
    else:
        w = (a > thresholds.double()[filters.long()][:, None, None]).double()
    scale = (x64[rows.long()].abs() * w.abs()[:, None]).mean((2, 3))
    assert_pooled_close(out, expected, scale, H * W)
    naive = (x64[rows.long()] * w[:, None]).mean((2, 3))
    if mode == "projection":  # a map holding NaN or +-inf: the whole row is NaN
        naive[~finite_map] = math.nan
    assert_pooled_close(out, naive.float(), scale, H * W)
    if mode == "activation":  # t = +inf or NaN selects nothing: exact zeros where the features are finite
        none = (thresholds.float()[filters.long()] == math.inf) | thresholds.float()[filters.long()].isnan()
        finite_image = x64[rows.long()].flatten(2).isfinite().all(2)
        assert out.cpu()[none[:, None] & finite_image].eq(0).all()


# ----------------------------------------------------------------------------------------------
# masked_pool


def masks_for(data: st.DataObject, M: int, H: int, W: int) -> torch.Tensor:
    """Masks of every accepted dtype: bool, uint8 (0, 1, 255 or anything), soft floating masks
    with negative weights, NaN and +-inf in them."""
    dtype = data.draw(
        st.sampled_from([torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]),
        label="mask dtype",
    )
    g = generator(data)
    if dtype == torch.bool:
        return torch.rand(M, H, W, generator=g) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))
    if dtype == torch.uint8:
        return torch.tensor([0, 1, 255, 7], dtype=torch.uint8)[torch.randint(0, 4, (M, H, W), generator=g)]
    return hostile(data, (M, H, W), dtype, "masks")


def nearest_exact_sources(size_in: int, size_out: int) -> torch.Tensor:
    scale = torch.tensor(float(size_in), dtype=torch.float32) / size_out
    src = torch.floor(((torch.arange(size_out, dtype=torch.float64) + 0.5) * scale.double()).float())
    return src.long().clamp_max(size_in - 1)


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_masked_pool(device, data):
    dtype = data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype")
    N, C = data.draw(size(4, (7,)), label="N"), data.draw(size(6, (33, 63)), label="C")
    h, w = data.draw(size(5, (9, 15)), label="h"), data.draw(size(5, (7, 13)), label="w")
    M = data.draw(st.integers(0, 9), label="M")
    H, W = data.draw(size(8, (31, 61)), label="H"), data.draw(size(8, (29, 47)), label="W")
    x = hostile(data, (N, C, h, w), dtype, "features")
    masks = masks_for(data, M, H, W)
    rows = indices(data, N, M, "rows")

    expected = _reference.masked_pool(x, masks, rows)
    out = ops.masked_pool(*(maybe_noncontiguous(data, t.to(device)) for t in (x, masks, rows)))
    assert out.dtype == torch.float32 and out.shape == (M, C) and out.device.type == device

    # Naive, in float64: the nearest-exact source pixel of output i is floor((i + 0.5) * in / out),
    # with PyTorch's roundings (a float32 scale, the product rounded to float32).
    weight = masks.double() if masks.is_floating_point() else (masks != 0).double()
    weight = weight.float().double()  # the kernels read weights as float32
    sy, sx = nearest_exact_sources(H, h), nearest_exact_sources(W, w)
    resized = weight[:, sy][:, :, sx]  # [M, h, w]
    x64 = x.double()[rows.long()]
    scale = (x64.abs() * resized.abs()[:, None]).mean((2, 3))
    assert_pooled_close(out, expected, scale, h * w)
    assert_pooled_close(out, (x64 * resized[:, None]).mean((2, 3)).float(), scale, h * w)


# ----------------------------------------------------------------------------------------------
# upsample_iou


def iou_thresholds(data: st.DataObject, a: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """One threshold per channel, +inf, -inf, NaN or a finite value that no finite upsampled value
    comes near (the kernels and F.interpolate may round differently: a value within a few ulps
    of its threshold could fall on either side), in an accepted dtype."""
    dtype = data.draw(st.sampled_from(FEATURE_DTYPES), label="threshold dtype")
    K = a.shape[1]
    up32 = F.interpolate(a.float(), size=size_hw, mode="bilinear", align_corners=False)
    up64 = F.interpolate(a.double(), size=size_hw, mode="bilinear", align_corners=False)
    t = torch.empty(K, dtype=dtype)
    for k in range(K):
        kind = data.draw(st.sampled_from(["gap", "gap", "gap", "+inf", "-inf", "nan"]), label="threshold")
        if kind != "gap":
            t[k] = {"+inf": math.inf, "-inf": -math.inf, "nan": math.nan}[kind]
            continue
        finite = up32[:, k].isfinite() & up64[:, k].isfinite()
        v = torch.unique(up64[:, k][finite])  # sorted
        source = a[:, k].float()
        clearance = 1e-5 * max(float(source[source.isfinite()].abs().max()) if finite.any() else 1.0, 1.0)
        candidates = torch.cat([v[:1] - 1, (v[:-1] + v[1:]) / 2, v[-1:] + 1]) if len(v) else torch.zeros(1)
        rounded = candidates.to(dtype).double()  # the thresholds as the kernels will read them
        if len(v):
            gap = (v[None, :] - rounded[:, None]).abs().min(1).values
            clear = (gap > clearance * rounded.abs().clamp_min(1.0)).nonzero()[:, 0]
        else:
            clear = torch.arange(len(rounded))
        if len(clear) == 0:
            t[k] = math.inf
            continue
        t[k] = rounded[int(clear[data.draw(st.integers(0, len(clear) - 1))])]
    return t


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_upsample_iou(device, data):
    dtype = data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype")
    N, K = data.draw(size(4, (7,)), label="N"), data.draw(size(5, (17, 33)), label="K")
    h, w = data.draw(size(5, (9, 13)), label="h"), data.draw(size(5, (7, 11)), label="w")
    M = data.draw(st.integers(0, 9), label="M")
    H, W = data.draw(size(9, (31, 57)), label="H"), data.draw(size(9, (27, 45)), label="W")
    a = hostile(data, (N, K, h, w), dtype, "activations")
    thresholds = iou_thresholds(data, a, (H, W))
    g = generator(data)
    masks = torch.rand(M, H, W, generator=g) < data.draw(st.sampled_from([0.0, 0.4, 1.0]), label="mask density")
    if data.draw(st.booleans(), label="uint8 masks"):
        masks = masks.to(torch.uint8) * torch.tensor([1, 255, 3], dtype=torch.uint8)[torch.randint(0, 3, (1,))]
    rows = indices(data, N, M, "rows")

    ref_inter, ref_union = _reference.upsample_iou(a, thresholds, masks, rows)
    args = (maybe_noncontiguous(data, t.to(device)) for t in (a, thresholds, masks, rows))
    inter, union = ops.upsample_iou(*args)
    assert inter.dtype == union.dtype == torch.int64 and inter.shape == union.shape == (M, K)
    assert inter.device.type == device
    assert_equal(inter, ref_inter)
    assert_equal(union, ref_union)
    # Naive consequences: inter <= area <= union <= H * W; t = +inf or NaN turns nothing on;
    # t = -inf turns on every pixel whose upsampled value is neither NaN nor -inf.
    area = (masks != 0).sum((1, 2))[:, None]
    inter, union = inter.cpu(), union.cpu()
    assert (inter <= area).all() and (area <= union).all() and (union <= H * W).all()
    t = thresholds.float()
    none = (t == math.inf) | t.isnan()
    assert inter[:, none].eq(0).all() and torch.equal(union[:, none], area.expand(M, K)[:, none])
    up = F.interpolate(a.float(), size=(H, W), mode="bilinear", align_corners=False)[rows.long()]
    on = ~(up.isnan() | (up == -math.inf))
    every = t == -math.inf
    mk = (masks != 0)[:, None]
    assert torch.equal(inter[:, every], (on & mk).sum((2, 3))[:, every])
    assert torch.equal(union[:, every], (on | mk).sum((2, 3))[:, every])


@pytest.mark.parametrize("device", DEVICES)
def test_upsample_iou_source_coordinate_is_rounded_once(device):
    # Found by test_upsample_iou. 9 -> 31 rows: the source coordinate of output row 15 is
    # 9/31 * 15.5 - 0.5 = 3.99999976 in float32 rounded once (as F.interpolate has it), 4.0 if
    # the product and the difference are rounded apart: row 15 then read rows 4 and 5 with
    # weights 1 and 0, and the +inf in row 5 made it NaN (off) where F.interpolate has 0 (on).
    a = torch.zeros(1, 1, 9, 1)
    a[0, 0, 5, 0] = math.inf
    masks = torch.eye(31, dtype=torch.bool).view(31, 31, 1)  # mask m = output row m
    rows = torch.zeros(31, dtype=torch.int64)
    inter, _ = ops.upsample_iou(a.to(device), torch.tensor([-1.0], device=device), masks.to(device), rows.to(device))
    up = F.interpolate(a, size=(31, 1), mode="bilinear", align_corners=False).view(31)
    assert up[15] == 0 and inter[15, 0] == 1
    assert_equal(inter[:, 0], (up > -1).long())


# ----------------------------------------------------------------------------------------------
# cosine_topk


def cosine64(queries: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Cosine similarity in float64 of each query with the keys it lists ([R, k]; -1 gives NaN)."""
    q = F.normalize(queries.double(), dim=1)
    k = F.normalize(keys.double(), dim=1)
    sims = (q[:, None, :] * k[idx.clamp_min(0)]).sum(-1)
    return sims.masked_fill(idx < 0, math.nan)


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_cosine_topk(device, data):
    R, V = data.draw(size(6, (17, 41)), label="R"), data.draw(size(9, (257, 1031)), label="V")
    D = data.draw(size(8, (33, 67)), label="D")
    k = data.draw(st.integers(0, V), label="k")
    queries = hostile(data, (R, D), data.draw(st.sampled_from(FEATURE_DTYPES), label="query dtype"), "queries")
    keys = hostile(data, (V, D), data.draw(st.sampled_from(FEATURE_DTYPES), label="key dtype"), "keys")
    g = generator(data)
    if data.draw(st.booleans(), label="copies"):  # exact ties: copies of keys, queries along keys
        keys[torch.randint(0, V, (V // 3,), generator=g)] = keys[torch.randint(0, V, (V // 3,), generator=g)]
        queries[: R // 2] = keys[torch.randint(0, V, (R // 2,), generator=g)] * 2
    if data.draw(st.booleans(), label="zero rows"):
        keys[torch.randint(0, V, (2,), generator=g)] = 0.0
        queries[torch.randint(0, R, (1,), generator=g)] = 0.0

    ref_values, ref_indices = _reference.cosine_topk(queries, keys, k)
    values, idx = ops.cosine_topk(*(maybe_noncontiguous(data, t.to(device)) for t in (queries, keys)), k)
    assert values.dtype == torch.float32 and idx.dtype == torch.int64 and values.shape == idx.shape == (R, k)
    assert values.device.type == device
    values, idx = values.cpu(), idx.cpu()
    assert_ranked_list(values, idx)

    # Naive: NaN or +-inf in a query or key: never listed; a query with one lists nothing.
    bad_query = ~queries.float().isfinite().all(1)
    bad_key = ~keys.float().isfinite().all(1)
    valid_keys = int((~bad_key).sum())
    listed = (idx >= 0).sum(1)
    expected_listed = torch.where(bad_query, 0, min(k, valid_keys))
    assert torch.equal(listed, expected_listed)
    assert torch.equal(listed, (ref_indices >= 0).sum(1))
    assert not bad_key[idx.clamp_min(0)][idx >= 0].any(), "a key holding NaN or inf was listed"
    for r in range(R):
        row = idx[r][idx[r] >= 0].tolist()
        assert len(set(row)) == len(row), "a key listed twice"
    # Values: close to the reference and to the float64 cosine of the listed keys; indices equal to
    # the reference's except where two similarities are within 1e-6 (either order is right then).
    assert_close(values, ref_values, equal_nan=False)
    sims = cosine64(queries, keys, idx)
    real = idx >= 0
    assert_close(values.double()[real], sims[real], rtol=0, atol=1e-5)
    differ = idx != ref_indices
    if differ.any():
        gap = (sims - cosine64(queries, keys, ref_indices)).abs()[differ]
        assert (gap <= 1e-6).all(), f"indices differ from the reference where similarities differ by {gap.max()}"


# ----------------------------------------------------------------------------------------------
# quantile_sketch_update and ChannelQuantiles


def new_sketch(C: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    means = torch.zeros(C, capacity, dtype=torch.float64)
    summary = torch.zeros(C, 4, dtype=torch.float64)
    summary[:, 2], summary[:, 3] = math.inf, -math.inf
    return means, torch.zeros_like(means), summary


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_quantile_sketch_update(device, data):
    C = data.draw(size(4, (17,)), label="C")
    capacity = data.draw(st.sampled_from([8, 9, 16, 33, 100]), label="capacity")
    state = tuple(t.to(device) for t in new_sketch(C, capacity))
    seen = []
    for b in range(data.draw(st.integers(1, 4), label="batches")):
        shape = (data.draw(st.integers(0, 4)), C, data.draw(size(5, (13,))), data.draw(size(5, (11, 31))))
        x = hostile(data, shape, data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype"), f"batch {b}")
        # Each step from the same state: the kernels' running centroid means and the reference's
        # sums differ in the last bits, and the order of a new value equal to an old mean
        # (ties are common here) would then differ from the next batch on.
        expected = tuple(t.cpu().clone() for t in state)
        ops.quantile_sketch_update(maybe_noncontiguous(data, x.to(device)), *state)
        _reference.quantile_sketch_update(x, *expected)
        seen.append(x.float().transpose(0, 1).reshape(C, -1).double())

        means, weights, summary = (t.cpu() for t in state)
        assert_equal(summary, expected[2])
        assert_equal(weights, expected[1])
        everything = torch.cat(seen, 1)
        scale = everything[everything.isfinite()].abs().max() if everything.isfinite().any() else 1.0
        assert_close(means, expected[0], rtol=1e-9, atol=1e-9 * float(scale), equal_nan=False)
        # Naive: NaN counted, everything else a value; the weights add up to the count.
        assert_equal(summary[:, 1], everything.isnan().sum(1).double())
        assert_equal(summary[:, 0], (~everything.isnan()).sum(1).double())
        assert_equal(summary[:, 2], torch.tensor([nan_min(row) for row in everything], dtype=torch.float64))
        assert_equal(summary[:, 3], torch.tensor([nan_max(row) for row in everything], dtype=torch.float64))
        assert_equal(weights.sum(1), summary[:, 0])
        used = weights > 0
        assert (used[:, :-1] >= used[:, 1:]).all(), "unused centroid slots must come last"
        assert not means.isnan().any()
        for c in range(C):
            finite = everything[c][~everything[c].isnan()]
            assert means[c][used[c]].eq(-math.inf).any() == bool((finite == -math.inf).any())


def naive_quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the sorted non-NaN values (torch.quantile's positions), with
    the defined infinities: between -inf and anything -inf, between a number and +inf +inf."""
    v = sorted(x for x in values if not math.isnan(x))
    if not v:
        return math.nan
    pos = q * (len(v) - 1)
    i = math.floor(pos)
    t = pos - i
    lo, hi = v[i], v[min(i + 1, len(v) - 1)]
    if t == 0 or lo == -math.inf:
        return lo
    if hi == math.inf:
        return hi
    return lo + t * (hi - lo)


@pytest.mark.parametrize("device", DEVICES)
@op_settings
@given_data
def test_channel_quantiles_exact_while_small(device, data):
    # At most 120 values per channel with capacity 1024: every centroid is a singleton, so each
    # quantile is exactly the naive interpolation, for one stream and for two merged streams.
    C = data.draw(size(3, (9,)), label="C")
    whole = ChannelQuantiles(C, capacity=1024, device=device)
    parts = [ChannelQuantiles(C, capacity=1024, device=device), ChannelQuantiles(C, capacity=1024, device=device)]
    seen = []
    for b in range(data.draw(st.integers(1, 3), label="batches")):
        shape = (data.draw(st.integers(0, 2)), C, data.draw(size(4)), data.draw(size(5)))
        x = hostile(data, shape, data.draw(st.sampled_from(FEATURE_DTYPES), label="dtype"), f"batch {b}")
        whole.update(x.to(device))
        parts[data.draw(st.integers(0, 1), label="part")].update(x.to(device))
        seen.append(x.float().transpose(0, 1).reshape(C, -1).double())
    everything = torch.cat(seen, 1)
    merged = parts[0].merge(parts[1])
    qs = data.draw(st.lists(st.floats(0, 1), max_size=3), label="q") + [0.0, 0.5, 0.995, 1.0]
    for sketch in (whole, merged):
        assert_equal(sketch.nan_count, everything.isnan().sum(1).double())
        assert_equal(sketch.count, (~everything.isnan()).sum(1).double())
        for q in qs:
            naive = torch.tensor([naive_quantile(row.tolist(), q) for row in everything], dtype=torch.float64)
            estimate = sketch.quantile(q)
            assert estimate.dtype == torch.float32 and estimate.shape == (C,)
            assert_equal(estimate, naive.float())
