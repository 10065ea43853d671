"""Evaluation of explanations against object masks, and bias analysis between two subsets.

:func:`evaluate` is the protocol of LaViSE (DESIGN.md §1 item 4) in one batched pass over a
reference set holding the images the result was computed on. For filter k with threshold
``t_k`` and image i, ``B_k(i) = bilinear_upsample(a_k(i)) > t_k`` at the masks' resolution
(:func:`lavise_fast.ops.upsample_iou`); ``L_w(i)`` is the union of the masks labelled ``w`` in
image i. The ground truth of the pair (k, i), for i among the top images of k, is
``GT(k, i) = {w : IoU(B_k(i), L_w(i)) > iou_threshold}`` and
``recall@n(k, i) = |GT(k, i) ∩ words[k][:n]| / |GT(k, i)|``, averaged over the pairs with a
non-empty GT. The same pass gives each filter's Network-Dissection label: the word ``w`` of
best dataset-wide ``IoU_k(w) = sum_i |B_k(i) ∩ L_w(i)| / sum_i |B_k(i) ∪ L_w(i)|`` (all images,
also those without ``w``).

:func:`compare` ranks the concepts by how much more often they describe the filters of one
result than of another (the same network explained on two subsets); :func:`compare_plot` draws
that as a self-contained SVG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import torch
from tqdm import tqdm

from lavise_fast import ops
from lavise_fast.data.collate import collate_reference
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.explain import ExplainResult
from lavise_fast.files import atomic_write
from lavise_fast.layers import LayerFeatures, model_device, resolve_layer
from lavise_fast.validate import int_at_least, number_in, positive_int

__all__ = ["evaluate", "compare", "compare_plot"]


def _check_result(name: str, result) -> None:
    if not isinstance(result, ExplainResult):
        raise InputTypeError(f"{name} must be an ExplainResult (from lavise_fast.explain), got {type(result).__name__}")
    K = len(result.filters)
    for field in ("words", "top_images", "thresholds"):
        if len(getattr(result, field)) != K:
            raise InputError(f"{name}.{field} has {len(getattr(result, field))} entries for {K} filters")


def _merge_same_word(masks: torch.Tensor, rows: torch.Tensor, labels: list[str]):
    """One mask per (image, word): the union of that word's masks in the image.

    Returns (masks [G, H, W] bool, rows [G], labels list[str] of length G)."""
    index: dict[tuple[int, str], int] = {}
    group = [index.setdefault(key, len(index)) for key in zip(rows.tolist(), labels, strict=True)]
    if len(index) == len(labels):
        return masks, rows, labels
    first = [0] * len(index)
    for m in reversed(range(len(group))):
        first[group[m]] = m
    merged = masks[first].clone()
    for m, g in enumerate(group):
        if m != first[g]:
            merged[g] |= masks[m]
    return merged, rows[first], [labels[m] for m in first]


@torch.no_grad()
def evaluate(
    result: ExplainResult,
    model: torch.nn.Module,
    reference,
    *,
    iou_threshold: float = 0.04,
    ks: Sequence[int] = (5, 10, 20),
    shuffles: int = 10,
    simulation_words: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Recall@n of ``result``'s words against the object masks of ``reference``, and the
    Network-Dissection label of every explained filter, in one batched pass.

    Args:
        result: what :func:`lavise_fast.explain` returned for ``model``.
        model: the explained network; it is run to ``result.settings["layer"]``.
        reference: a dataset of items ``(image [3, H, W], masks [M, H', W'] bool, labels list[str])``
            holding the images the result was computed on, in the same order (image index =
            position), e.g. the ConceptWorld or COCO set whose images the explain loader gave.
        iou_threshold: a word is in the ground truth of (filter k, image i) when
            ``IoU(B_k(i), L_w(i)) > iou_threshold`` (module docstring); 0.04 as in the paper.
        ks: the n of recall@n.
        shuffles: how many seeded permutations of the word lists across filters the shuffled recall
            averages over. simulation_words: the first n words of each filter that the simulation
            score uses. seed: seeds the shuffles and the random lists.

    Ground truth: ``B_k(i)`` is filter k's map upsampled bilinearly to the masks' size and
    thresholded (``> result.thresholds[k]``); a word with several masks in an image (two red
    objects) is one region, the union of its masks, as in Network Dissection. IoU is 0 when
    the union is empty. Only the pairs (k, i) with i in ``result.top_images[k]`` are scored.

    Every recall comes with what it must beat: its chance level, and the recall of the same word
    lists shuffled across filters (a filter-blind list that keeps the result's word frequencies: a
    list of generic words that suits every filter scores as well shuffled as not, so the gain,
    own minus shuffled, is what the filter-specific words add).

    Returns a JSON-serialisable dict::

        {"recall@5": r, "recall@10": r, "recall@20": r,   # mean over pairs with a non-empty GT
         "pairs": n,                                      # those pairs
         "chance": {"recall@5": r, ...},     # a uniformly random list of the same length: min(n, len) / V
         "shuffled": {"recall@5": r, ...},   # the lists permuted across filters, mean over the shuffles
         "gain": {"recall@5": r, ...},       # own minus shuffled
         "seen": {"recall@5": r, ..., "pairs": n, "chance": .., "shuffled": .., "gain": ..},
                                             # GT restricted to settings["seen"]
         "unseen": {...},                    # GT restricted to settings["unseen"]
         "rank": {"seen": {"mean": r, "chance": c, "words": n, "count": m}, "unseen": {...}},
             # mean rank (1 = first) of the pairs' GT words among the seen (unseen) words, in the
             # order of the filter's list (words it does not list share the mean of the ranks left);
             # chance = (n + 1) / 2
         "unseen_produced": s,   # share of the unseen words that occur in the reference labels
                                 # and appear in at least one filter's words
         "unseen_words": n,      # how many unseen words occur in the reference labels
         "iou_threshold": t, "shuffles": n, "seed": s,
         "dissection": {"<filter>": {"concept": w, "iou": IoU_k(w)}},
         "dissection_in_top": {"all": {"1": s, "3": s, "5": s, "filters": n}, "iou>=0.1": {...}},
             # share of filters whose ND concept is among their first 1/3/5 words
         "simulation": {"words": r, "dissection": r, "random": r, "words_used": n,
                        "per_filter": {"<filter>": r}}}
             # Linear Explanations' simulation score: per filter, the Pearson correlation over all
             # images of ``reference`` between the filter's spatial max and how many of its first n
             # words the image holds (from its labels); 0 where either is constant; the mean over
             # filters for the result's words, the ND concept and n random words (seeded, from the
             # seen, unseen and listed words)

    where a recall (or ``unseen_produced``) is None when no pair (no word) counts, and a
    Network-Dissection concept is None when the reference has no label at all; ties of IoU go
    to the alphabetically first word.

    Raises:
        ValueError: the layer of the result is not in ``model``; ``reference`` holds a number of
            images other than ``result.settings["images"]``; bad ``iou_threshold``/``ks``/``batch_size``.
        TypeError: ``result`` is not an ExplainResult; items of ``reference`` are not reference items.
    """
    _check_result("result", result)
    iou_threshold = number_in("iou_threshold", iou_threshold, 0.0, 1.0, high_open=True)
    ks = tuple(ks)
    if not ks:
        raise InputError("ks must hold at least one n for recall@n, got none")
    for n in ks:
        positive_int("every n of ks", n)
    positive_int("batch_size", batch_size)
    positive_int("shuffles", shuffles)
    positive_int("simulation_words", simulation_words)
    int_at_least("seed", seed, 0)
    settings = result.settings or {}
    layer = settings.get("layer")
    if not isinstance(layer, str) or not layer:
        raise InputError("result.settings has no 'layer': evaluate needs the result of lavise_fast.explain")
    try:
        resolve_layer(model, layer)
    except ValueError as error:
        raise InputError(f"model has no layer {layer!r} (the layer of result.settings['layer']): {error}") from None
    expected = settings.get("images")
    try:
        size = len(reference)
    except TypeError:
        size = None
    if size is not None and expected is not None and size != expected:
        raise InputError(f"reference holds {size} images but the result was computed on {expected} "
                         "(result.settings['images']); pass the same images, in the same order")

    device = model_device(model, device)
    model.eval()
    K = len(result.filters)
    filters = torch.tensor(result.filters, dtype=torch.long, device=device)
    thresholds = torch.tensor(result.thresholds, dtype=torch.float32, device=device)
    # The scored pairs (filter position kk, image i), sorted by image.
    pairs = sorted((i, kk) for kk, images in enumerate(result.top_images) for i in images)
    pair_image = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    pair_filter = torch.tensor([kk for _, kk in pairs], dtype=torch.long)
    truth: dict[tuple[int, int], set[str]] = {}

    column: dict[str, int] = {}  # word -> column of the Network-Dissection sums
    inter_sum = torch.zeros(K, 0, dtype=torch.long)  # sum_i |B_k(i) & L_w(i)|       [K, W]
    label_area = torch.zeros(0, dtype=torch.long)  # sum_i |L_w(i)|                   [W]
    map_area = torch.zeros(K, dtype=torch.long)  # sum_i |B_k(i)|                      [K]
    # The simulation's sums over all images (x = a filter's max activation, p_w = word w present):
    x_sum = torch.zeros(K, dtype=torch.float64)  # sum_i x_ki                              [K]
    x_square = torch.zeros(K, dtype=torch.float64)  # sum_i x_ki^2                         [K]
    xp_sum = torch.zeros(K, 0, dtype=torch.float64)  # sum_i x_ki p_iw                     [K, W]
    together = torch.zeros(0, 0, dtype=torch.float64)  # sum_i p_iw p_iv (co-occurrence)    [W, W]

    loader = torch.utils.data.DataLoader(reference, batch_size=batch_size, shuffle=False,
                                         collate_fn=collate_reference)
    base = 0
    with LayerFeatures(model, [layer]) as tap:
        for images, masks, rows, labels in tqdm(loader, desc=f"evaluate {layer}", disable=not progress):
            B = images.shape[0]
            features = tap(images.to(device))[layer]
            if K and int(filters.max()) >= features.shape[1]:
                raise InputError(f"result explains filter {int(filters.max())} but layer {layer!r} of model has "
                                 f"{features.shape[1]} channels")
            masks, rows, labels = _merge_same_word(masks, rows, labels)
            G = len(labels)
            maxima = features[:, filters].float().amax((2, 3)).double().cpu()  # [B, K]
            maxima = torch.where(torch.isfinite(maxima), maxima, 0.0)
            x_sum += maxima.sum(0)
            x_square += (maxima * maxima).sum(0)
            # One all-True mask per image: its intersection is |B_k(i)|, the maps' areas.
            whole = torch.ones(B, *masks.shape[1:], dtype=torch.bool)
            inter, union = ops.upsample_iou(features[:, filters], thresholds,
                                            torch.cat([masks, whole]).to(device),
                                            torch.cat([rows, torch.arange(B)]).to(device))
            inter, union = inter.cpu(), union.cpu()
            map_area += inter[G:].sum(0)
            if G:
                for word in labels:
                    if word not in column:
                        column[word] = len(column)
                grow = len(column) - inter_sum.shape[1]
                if grow:
                    inter_sum = torch.cat([inter_sum, torch.zeros(K, grow, dtype=torch.long)], 1)
                    label_area = torch.cat([label_area, torch.zeros(grow, dtype=torch.long)])
                    xp_sum = torch.cat([xp_sum, torch.zeros(K, grow, dtype=torch.float64)], 1)
                    together = torch.nn.functional.pad(together, (0, grow, 0, grow))
                wid = torch.tensor([column[w] for w in labels], dtype=torch.long)
                present = torch.zeros(B, len(column), dtype=torch.float64)
                present[rows, wid] = 1.0
                xp_sum += maxima.t() @ present
                together += present.t() @ present
                inter_sum.index_add_(1, wid, inter[:G].t().contiguous())
                label_area.index_add_(0, wid, masks.flatten(1).sum(1))
                # Ground truth of the scored pairs whose image is in this batch.
                lo, hi = torch.searchsorted(pair_image, torch.tensor([base, base + B])).tolist()
                if hi > lo:
                    scored = torch.zeros(B, K, dtype=torch.bool)
                    scored[pair_image[lo:hi] - base, pair_filter[lo:hi]] = True
                    iou = inter[:G].double() / union[:G].clamp_min(1).double()
                    hits = (iou > iou_threshold) & scored[rows]
                    for g, kk in hits.nonzero().tolist():
                        truth.setdefault((kk, base + int(rows[g])), set()).add(labels[g])
            base += B
    if expected is not None and base != expected:
        raise InputError(f"reference holds {base} images but the result was computed on {expected} "
                         "(result.settings['images']); pass the same images, in the same order")

    seen, unseen = set(settings.get("seen") or ()), set(settings.get("unseen") or ())
    vocabulary_size = settings.get("vocabulary_size")
    if not isinstance(vocabulary_size, int) or vocabulary_size < 1:
        vocabulary_size = len({w for words in result.words for w in words} | seen | unseen)
    shuffled = _shuffled_lists(result.words, shuffles, seed)
    out: dict = _recall_report(truth, result.words, shuffled, ks, None, vocabulary_size)
    out["seen"] = _recall_report(truth, result.words, shuffled, ks, seen, vocabulary_size)
    out["unseen"] = _recall_report(truth, result.words, shuffled, ks, unseen, vocabulary_size)
    out["rank"] = {"seen": _mean_rank(truth, result.words, seen), "unseen": _mean_rank(truth, result.words, unseen)}
    present = unseen & set(column)
    produced = {w for words in result.words for w in words}
    out["unseen_produced"] = len(present & produced) / len(present) if present else None
    out["unseen_words"] = len(present)
    out["iou_threshold"] = float(iou_threshold)
    out["shuffles"], out["seed"] = shuffles, seed
    out["dissection"] = _dissection(result.filters, column, inter_sum, label_area, map_area)
    out["dissection_in_top"] = _dissection_in_top(result.filters, result.words, out["dissection"])
    sums = _SimulationSums(base, x_sum, x_square, xp_sum, together, column)
    out["simulation"] = _simulation(result, sums, out["dissection"], simulation_words, vocabulary_size, seen | unseen,
                                    seed)
    return out


def _recalls(truth: dict[tuple[int, int], set[str]], words: list[list[str]], ks: tuple[int, ...],
             restrict: set[str] | None) -> dict:
    """Mean recall@n over the pairs whose ground truth (within ``restrict``) is not empty."""
    sums = dict.fromkeys(ks, 0.0)
    count = 0
    for (kk, _), found in sorted(truth.items()):
        gt = found if restrict is None else found & restrict
        if not gt:
            continue
        count += 1
        for n in ks:
            sums[n] += len(gt.intersection(words[kk][:n])) / len(gt)
    out: dict = {f"recall@{n}": (sums[n] / count if count else None) for n in ks}
    out["pairs"] = count
    return out


def _shuffled_lists(words: list[list[str]], shuffles: int, seed: int) -> list[list[list[str]]]:
    """``shuffles`` copies of the filters' word lists, each permuted across the filters (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return [[words[j] for j in torch.randperm(len(words), generator=generator).tolist()] for _ in range(shuffles)]


def _recall_report(truth: dict[tuple[int, int], set[str]], words: list[list[str]], shuffled: list[list[list[str]]],
                   ks: tuple[int, ...], restrict: set[str] | None, vocabulary_size: int) -> dict:
    """Recall@n with, beside it, its chance level (the expected recall of a uniformly random list of the
    same length from the vocabulary: ``min(n, len(list)) / V`` per pair), the recall of the same lists
    shuffled across filters (mean over the shuffles) and the filter-specific gain (own - shuffled)."""
    out = _recalls(truth, words, ks, restrict)
    chance = dict.fromkeys(ks, 0.0)
    for (kk, _), found in truth.items():
        if found if restrict is None else found & restrict:
            for n in ks:
                chance[n] += min(n, len(words[kk])) / vocabulary_size
    count = out["pairs"]
    out["chance"] = {f"recall@{n}": (chance[n] / count if count else None) for n in ks}
    others = [_recalls(truth, lists, ks, restrict) for lists in shuffled]
    out["shuffled"] = {f"recall@{n}": (sum(o[f"recall@{n}"] for o in others) / len(others)
                                       if count and others else None) for n in ks}
    out["gain"] = {key: (value - out["shuffled"][key] if value is not None and out["shuffled"][key] is not None
                         else None) for key, value in out.items() if key.startswith("recall@")}
    return out


def _mean_rank(truth: dict[tuple[int, int], set[str]], words: list[list[str]], group: set[str]) -> dict:
    """The mean rank (1 = first) of the pairs' ground-truth words of ``group`` among the words of
    ``group``, in the order of the filter's list; the group's words a list does not hold share the
    mean of the ranks left. ``chance`` is (|group| + 1) / 2, the mean rank of a random order."""
    total, count = 0.0, 0
    for (kk, _), found in sorted(truth.items()):
        listed = [w for w in words[kk] if w in group]
        unlisted = len(listed) + (len(group) - len(listed) + 1) / 2
        for w in found & group:
            total += listed.index(w) + 1 if w in listed else unlisted
            count += 1
    return {"mean": total / count if count else None, "chance": (len(group) + 1) / 2 if group else None,
            "words": len(group), "count": count}


def _dissection_in_top(filters: list[int], words: list[list[str]], dissection: dict[str, dict],
                       strong: float = 0.1) -> dict:
    """The share of filters whose Network-Dissection concept is among their first 1, 3 and 5 words:
    over all filters, and over the filters whose ND IoU is at least ``strong``."""
    out = {}
    for name, keep in (("all", lambda d: True), (f"iou>={strong}", lambda d: d["iou"] >= strong)):
        chosen = [kk for kk, f in enumerate(filters) if dissection[str(f)]["concept"] is not None
                  and keep(dissection[str(f)])]
        out[name] = {str(n): (sum(dissection[str(filters[kk])]["concept"] in words[kk][:n] for kk in chosen)
                              / len(chosen) if chosen else None) for n in (1, 3, 5)}
        out[name]["filters"] = len(chosen)
    return out


class _SimulationSums:
    """Sums over all N images of the pass: x (each filter's max activation [K]) and the presence p_w of
    each labelled word (``column``: word -> index), enough for the correlation of x with the count of
    any word list's words present."""

    def __init__(self, images: int, x_sum, x_square, xp_sum, together, column: dict[str, int]) -> None:
        self.n, self.x_sum, self.x_square, self.xp_sum, self.together = images, x_sum, x_square, xp_sum, together
        self.column = column

    def correlation(self, kk: int, words: Sequence[str]) -> float:
        """Pearson correlation over the images of filter position kk's max activation with the number of
        ``words`` present in the image; 0 when either is constant (nothing is explained)."""
        idx = torch.tensor(sorted({self.column[w] for w in words if w in self.column}), dtype=torch.long)
        n = self.n
        if not len(idx) or n < 2:
            return 0.0
        y_sum = float(self.together[idx, idx].sum())  # sum_i y_i: the diagonal holds each word's count
        y_square = float(self.together[idx][:, idx].sum())
        xy = float(self.xp_sum[kk, idx].sum())
        x_sum, x_square = float(self.x_sum[kk]), float(self.x_square[kk])
        cov = xy - x_sum * y_sum / n
        var_x = x_square - x_sum * x_sum / n
        var_y = y_square - y_sum * y_sum / n
        if var_x <= 1e-12 * max(1.0, x_square) or var_y <= 1e-12:
            return 0.0
        return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


def _simulation(result: ExplainResult, sums: _SimulationSums, dissection: dict[str, dict], n: int,
                vocabulary_size: int, known: set[str], seed: int) -> dict:
    """The simulation score of Linear Explanations: per filter, the correlation over all images between
    its max activation and how many of its first ``n`` words the image holds (from the masks); the
    same for its Network-Dissection concept (one word) and for ``n`` random words (seeded, from the
    words the result and the explainer know). Means over the filters, and the per-filter scores."""
    pool = sorted(known | {w for words in result.words for w in words})
    generator = torch.Generator().manual_seed(seed + 1)
    per_filter, nd, rnd = {}, [], []
    for kk, f in enumerate(result.filters):
        per_filter[str(f)] = sums.correlation(kk, result.words[kk][:n])
        concept = dissection[str(f)]["concept"]
        nd.append(sums.correlation(kk, [concept]) if concept is not None else 0.0)
        draw = torch.randperm(len(pool), generator=generator)[: min(n, len(pool))].tolist()
        rnd.append(sums.correlation(kk, [pool[j] for j in draw]))
    K = len(result.filters)

    def mean(values: list[float]) -> float | None:
        return sum(values) / K if K else None

    return {"words": mean(list(per_filter.values())), "dissection": mean(nd), "random": mean(rnd),
            "words_used": n, "per_filter": per_filter}


def _dissection(filters: list[int], column: dict[str, int], inter_sum: torch.Tensor, label_area: torch.Tensor,
                map_area: torch.Tensor) -> dict[str, dict]:
    """Per filter, the word of best ``sum_i inter / sum_i union`` over all images (ties: first word A-Z)."""
    if not column:
        return {str(f): {"concept": None, "iou": 0.0} for f in filters}
    order = sorted(column)
    cols = torch.tensor([column[w] for w in order], dtype=torch.long)
    inter = inter_sum[:, cols].double()
    union = map_area[:, None].double() + label_area[cols][None].double() - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))
    best, which = iou.max(1)
    return {str(f): {"concept": order[w], "iou": float(v)}
            for f, w, v in zip(filters, which.tolist(), best.tolist(), strict=True)}


# ---------------------------------------------------------------------------------------------- bias analysis


def compare(
    result_a: ExplainResult,
    result_b: ExplainResult,
    *,
    num_words: int | None = None,
    names: Sequence[str] = ("a", "b"),
) -> list[dict]:
    """Concepts ranked by how much more often they describe filters in ``result_a`` than in ``result_b``.

    Both results must explain the same filters of the same layer (the same network on two
    subsets). The words are each result's, ranked by its scores (``settings["scoring"]``): with
    the default scoring a word counts for a filter when the filter's top images evoke it more than
    the subset's images do in general, so a concept tied to another in one subset (every circle is
    red) shows in that concept's filters, while a concept the subset merely holds more of is
    discounted with the rest of the subset; the vote (``scoring="vote"``) counts what the top
    images show. For every word w in either result: ``count_x(w)`` = the number of filters whose
    first ``num_words`` words (default: all kept) contain w, ``share_x = count_x / F`` (F the
    filters explained) and ``difference = share_a - share_b``. Rows
    ``{"concept", "count_a", "count_b", "share_a", "share_b", "difference"}`` are sorted by
    difference, descending (the concepts a evokes more first, those b evokes more last), ties by
    word. ``names`` name the two results in error messages.
    """
    names = _names(names)
    _check_result(f"result_a ({names[0]})", result_a)
    _check_result(f"result_b ({names[1]})", result_b)
    if num_words is not None:
        positive_int("num_words", num_words)
    layer_a, layer_b = (r.settings.get("layer") for r in (result_a, result_b))
    if layer_a != layer_b:
        raise InputError(f"the results explain different layers: {layer_a!r} ({names[0]}) and {layer_b!r} "
                         f"({names[1]}); compare needs the same layer of the same network")
    if sorted(result_a.filters) != sorted(result_b.filters):
        only_a = sorted(set(result_a.filters) - set(result_b.filters))
        only_b = sorted(set(result_b.filters) - set(result_a.filters))
        raise InputError(f"the results explain different filters of {layer_a!r} ({len(result_a.filters)} and "
                         f"{len(result_b.filters)}; only in {names[0]}: {only_a[:10]}, only in {names[1]}: "
                         f"{only_b[:10]}); compare needs the same filters")
    counts = []
    for result in (result_a, result_b):
        count: dict[str, int] = {}
        for words in result.words:
            for w in set(words[:num_words]):
                count[w] = count.get(w, 0) + 1
        counts.append(count)
    total = len(result_a.filters)
    rows = []
    for w in set(counts[0]) | set(counts[1]):
        a, b = counts[0].get(w, 0), counts[1].get(w, 0)
        share_a, share_b = (a / total, b / total) if total else (0.0, 0.0)
        rows.append({"concept": w, "count_a": a, "count_b": b, "share_a": share_a, "share_b": share_b,
                     "difference": share_a - share_b})
    rows.sort(key=lambda r: (-r["difference"], r["concept"]))
    return rows


def _names(names: Sequence[str]) -> tuple[str, str]:
    if isinstance(names, str) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise InputError(f"names must be two strings, got {names!r}")
    return names[0], names[1]


def compare_plot(comparison: list[dict], path: str | os.PathLike, *, top: int = 15,
                 names: Sequence[str] = ("a", "b")) -> None:
    """Writes ``comparison`` (from :func:`compare`) as a self-contained SVG bar chart to ``path``,
    atomically (a temporary file, then a rename).

    One horizontal bar per concept, of length ``difference`` (share_a - share_b): the ``top``
    concepts that ``names[0]`` evokes most over ``names[1]`` (bars to the right), then the ``top``
    that ``names[1]`` evokes most (bars to the left), each labelled with its two counts.
    """
    positive_int("top", top)
    a_name, b_name = _names(names)
    keys = {"concept", "count_a", "count_b", "difference"}
    if not isinstance(comparison, list) or not all(isinstance(r, dict) and keys <= set(r) for r in comparison):
        raise InputTypeError(f"comparison must be the list of rows that compare() returns (dicts with keys "
                             f"{sorted(keys)})")
    more_a = [r for r in comparison if r["difference"] > 0][:top]
    more_b = [r for r in comparison if r["difference"] < 0][-top:]
    shown = more_a + more_b
    largest = max((abs(r["difference"]) for r in shown), default=0.0) or 1.0
    row_h, label_w, half, top_h = 18, 130, 220, 48
    width = label_w + 2 * half + 120
    height = top_h + row_h * max(1, len(shown)) + 24
    mid = label_w + half
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>Concepts {escape(a_name)} evokes more than {escape(b_name)}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{mid}" y="16" text-anchor="middle" font-weight="bold">share of filters: '
        f"{escape(a_name)} minus {escape(b_name)}</text>",
        f'<text x="{mid + 6}" y="34" fill="#c0392b">more in {escape(a_name)} \u2192</text>',
        f'<text x="{mid - 6}" y="34" text-anchor="end" fill="#2c6fbb">\u2190 more in {escape(b_name)}</text>',
        f'<line x1="{mid}" y1="{top_h - 6}" x2="{mid}" y2="{height - 20}" stroke="#444"/>',
    ]
    if not shown:
        parts.append(f'<text x="{mid}" y="{top_h + 12}" text-anchor="middle">no difference</text>')
    for n, r in enumerate(shown):
        y = top_h + n * row_h
        length = abs(r["difference"]) / largest * half
        x = mid if r["difference"] > 0 else mid - length
        colour = "#c0392b" if r["difference"] > 0 else "#2c6fbb"
        parts += [
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(str(r["concept"]))}</text>',
            f'<rect x="{x:.2f}" y="{y + 3}" width="{length:.2f}" height="{row_h - 6}" fill="{colour}">'
            f'<title>{escape(str(r["concept"]))}: {r["count_a"]} filters in {escape(a_name)}, '
            f'{r["count_b"]} in {escape(b_name)} (difference {r["difference"]:+.3f})</title></rect>',
            f'<text x="{mid + half + 8}" y="{y + 13}" fill="#555">{r["count_a"]} vs {r["count_b"]}</text>',
        ]
    parts.append(f'<text x="{mid}" y="{height - 6}" text-anchor="middle" fill="#555">'
                 f"largest bar = {largest:.3f} of the filters</text>")
    parts.append("</svg>\n")
    path = Path(path)
    atomic_write(path, "\n".join(parts))

