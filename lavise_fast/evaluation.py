"""Evaluation of explanations against object masks: recall@n, Network Dissection, simulation.

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

It returns an :class:`Evaluation`: typed, readable as the dict it is saved as
(``evaluation["recall@10"]``), with :meth:`Evaluation.save`/:meth:`Evaluation.load` and a format
version (``"lavise_fast.evaluation/2"``; a file without one, written before evaluations were typed,
still loads). :func:`score_table` is the terminal table of the scores, shared by the demo and the CLI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lavise_fast import ops
from lavise_fast.data.collate import collate_reference
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import atomic_write_json, read_json
from lavise_fast.layers import LayerFeatures, model_device, resolve_layer
from lavise_fast.result import ExplainResult, checked_result
from lavise_fast.validate import int_at_least, number_in, positive_int

__all__ = ["evaluate", "Evaluation", "score_table", "evaluation_table", "format_score", "FORMAT"]

FORMAT = "lavise_fast.evaluation/2"
_FIRST_FORMAT = "lavise_fast.evaluation/1"  # files without a format: written before evaluations were typed


_FIELDS = ("pairs", "chance", "shuffled", "gain", "seen", "unseen", "rank", "unseen_produced", "unseen_words",
           "iou_threshold", "shuffles", "seed", "dissection", "dissection_in_top", "simulation")
_OBJECTS = ("chance", "shuffled", "gain", "seen", "unseen", "rank", "dissection", "dissection_in_top", "simulation")


class Evaluation(dict):
    """What :func:`evaluate` measured (the keys and their meaning are listed in its docstring): the flat
    dict it is saved as (``evaluation["recall@10"]``, ``json.dumps(evaluation)``), checked when built,
    whose entries also read as attributes.

    ``recall`` is the ``"recall@n"`` entries for every n; ``pairs`` the pairs they average over;
    ``chance``, ``shuffled`` and ``gain`` the same recalls for a random list, the lists shuffled across
    filters and own minus shuffled; ``seen`` and ``unseen`` all of these with the ground truth restricted
    to those words; ``rank``, ``unseen_produced``, ``unseen_words``, ``dissection``,
    ``dissection_in_top`` and ``simulation`` as :func:`evaluate` says; ``iou_threshold``, ``shuffles``
    and ``seed`` how it ran.

    Args:
        data: the flat object (every key above, at least one ``recall@n``).
        source: what ``data`` is (a file name), in the message of a missing or wrong entry.
    """

    def __init__(self, data: Mapping, source: str = "evaluation") -> None:
        if not isinstance(data, Mapping):
            raise InputTypeError(f"{source} must be the evaluation of lavise_fast.evaluate (a JSON object), got "
                                 f"{type(data).__name__}")
        missing = [name for name in _FIELDS if name not in data]
        if missing or not any(isinstance(key, str) and key.startswith("recall@") for key in data):
            raise InputError(f"{source} does not hold what lavise_fast.evaluate writes: missing "
                             f"{missing or ['recall@n']}")
        for name in _OBJECTS:
            if not isinstance(data[name], Mapping):
                raise InputError(f"{source}: {name!r} must be a JSON object, got {type(data[name]).__name__}")
        super().__init__(data)

    @property
    def recall(self) -> dict[str, float | None]:
        """``{"recall@n": recall}`` for every n."""
        return {key: value for key, value in self.items() if key.startswith("recall@")}

    def __getattr__(self, name: str) -> Any:
        if name in _FIELDS:
            return self[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON object of the file (without its format), as a plain dict."""
        return dict(self)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "evaluation") -> Evaluation:
        """An evaluation from its flat JSON object (an Evaluation is returned as it is).

        Args:
            data: the object :meth:`as_dict` gives.
            source: what ``data`` is (a file name), in the message of a missing key.
        """
        return data if isinstance(data, Evaluation) else cls(data, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the JSON file atomically (a temporary file, then a rename): the flat object and ``format``.

        Args:
            path: the evaluation file to write (``.json``).
        """
        return atomic_write_json(path, {"format": FORMAT, **self.as_dict()}, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Evaluation:
        """Reads a file that :meth:`save` wrote (or one without a format, from before evaluations were typed).

        Args:
            path: the evaluation file.

        Raises:
            InputError: the file is not JSON, not an evaluation, or of a format this lavise_fast does not read.
        """
        path = Path(path)
        data = read_json(path, "evaluation file")
        if not isinstance(data, dict):
            raise InputError(f"evaluation file {str(path)!r} holds a {type(data).__name__}, not the object "
                             "lavise_fast.evaluate writes")
        version = data.pop("format", _FIRST_FORMAT)
        if version not in (_FIRST_FORMAT, FORMAT):
            raise InputError(f"evaluation file {str(path)!r} is of format {version!r}, which this lavise_fast does "
                             f"not read (it reads {_FIRST_FORMAT}, {FORMAT}): update lavise_fast")
        return cls.from_dict(data, f"evaluation file {str(path)!r}")

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
) -> Evaluation:
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
            averages over.
        simulation_words: the first n words of each filter that the simulation score uses.
        seed: seeds the shuffles and the random lists.
        batch_size: images per forward pass.
        device: where the model runs (default: the device of its parameters).
        progress: a tqdm bar over the batches.

    Ground truth: ``B_k(i)`` is filter k's map upsampled bilinearly to the masks' size and
    thresholded (``> result.thresholds[k]``); a word with several masks in an image (two red
    objects) is one region, the union of its masks, as in Network Dissection. IoU is 0 when
    the union is empty. Only the pairs (k, i) with i in ``result.top_images[k]`` are scored.

    Every recall comes with what it must beat: its chance level, and the recall of the same word
    lists shuffled across filters (a filter-blind list that keeps the result's word frequencies: a
    list of generic words that suits every filter scores as well shuffled as not, so the gain,
    own minus shuffled, is what the filter-specific words add).

    Returns an :class:`Evaluation`, which reads (and saves) as the JSON object::

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
    checked_result(result, "result", complete=False)
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
    settings = result.settings
    layer = settings.layer
    if not isinstance(layer, str) or not layer:
        raise InputError("result.settings has no 'layer': evaluate needs the result of lavise_fast.explain")
    try:
        resolve_layer(model, layer)
    except ValueError as error:
        raise InputError(f"model has no layer {layer!r} (the layer of result.settings['layer']): {error}") from None
    expected = settings.images
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

    seen, unseen = set(settings.seen or ()), set(settings.unseen or ())
    vocabulary_size = settings.vocabulary_size
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
    return Evaluation.from_dict(out)


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


def format_score(value: float | None, spec: str = "5.3f") -> str:
    """A number of the table, or ``n/a`` right-aligned to the same width.

    Args:
        value: the number, or None.
        spec: its format spec (``"5.3f"``, ``"+6.3f"``).
    """
    width = int(spec.lstrip("+").split(".")[0] or 0)
    return "n/a".rjust(width) if value is None else format(value, spec)


def score_table(recall: Mapping[str, Mapping], rank: Mapping[str, Mapping], dissection_in_top: Mapping[str, Mapping],
                simulation: Mapping[str, Any], unseen_produced: float | None, unseen_words: int) -> list[str]:
    """The terminal table of an evaluation: recall@5/10/20 for all, seen and unseen concepts (``recall`` maps
    each part to its ``recall@n``, ``chance``, ``shuffled`` and ``gain``) beside recall@10's chance level,
    shuffled-list recall and filter-specific gain; the mean rank of the ground-truth words against chance;
    the Network-Dissection label among the first words; the simulation score; the unseen words named.
    One line per row; ``n/a`` where a score is None. The demo and ``lavise-fast evaluate`` print it.

    Args:
        recall: ``{"all" | "seen" | "unseen": {"recall@5", "recall@10", "recall@20", "chance", "shuffled",
            "gain"}}``.
        rank: ``{"seen" | "unseen": {"mean", "chance", "words"}}``.
        dissection_in_top: ``{name: {"1", "3", "5", "filters"}}``.
        simulation: ``{"words", "dissection", "random", "words_used"}``.
        unseen_produced: the share of unseen words some filter names (None: none occurs).
        unseen_words: how many unseen words occur in the reference labels.
    """
    lines = ["            recall@5  recall@10  recall@20 | recall@10: chance  shuffled     gain"]
    for part in ("all", "seen", "unseen"):
        r = recall[part]
        lines.append(f"  {part:<8}    {format_score(r['recall@5'])}      {format_score(r['recall@10'])}      "
                     f"{format_score(r['recall@20'])} |             {format_score(r['chance']['recall@10'])}     "
                     f"{format_score(r['shuffled']['recall@10'])}    {format_score(r['gain']['recall@10'], '+6.3f')}")
    lines += ["", "  mean rank of the ground-truth words (1 = first)     mean   chance"]
    for part in ("seen", "unseen"):
        entry = rank[part]
        lines.append(f"  {part + ' words among the ' + str(entry['words']) + ' ' + part + ' words':<48}"
                     f"{format_score(entry['mean'], '5.2f')}  {format_score(entry['chance'], '5.2f')}")
    lines.append("")
    for name, entry in dissection_in_top.items():
        which = f"all {entry['filters']} filters" if name == "all" else f"{entry['filters']} filters with ND {name}"
        lines.append(f"  Network-Dissection label among the first 1/3/5 words, {which}: "
                     + " / ".join(format_score(entry[n]).strip() for n in ("1", "3", "5")))
    sim = {key: format_score(simulation[key]).strip() for key in ("words", "dissection", "random")}
    lines.append(f"  simulation score (correlation of activation and presence of the first "
                 f"{simulation['words_used']} words): words {sim['words']}, ND labels {sim['dissection']}, "
                 f"random words {sim['random']}")
    named = "n/a" if unseen_produced is None else f"{round(unseen_produced * unseen_words)} of {unseen_words}"
    lines.append(f"  unseen words named by some filter: {named} ({format_score(unseen_produced).strip()})")
    return lines


def evaluation_table(evaluation: Evaluation) -> list[str]:
    """:func:`score_table` of a whole evaluation.

    Args:
        evaluation: what :func:`evaluate` returned.
    """
    recall = {part: {key: (evaluation if part == "all" else evaluation[part])[key]
                     for key in ("recall@5", "recall@10", "recall@20", "chance", "shuffled", "gain")}
              for part in ("all", "seen", "unseen")}
    return score_table(recall, evaluation.rank, evaluation.dissection_in_top, evaluation.simulation,
                       evaluation.unseen_produced, evaluation.unseen_words)
