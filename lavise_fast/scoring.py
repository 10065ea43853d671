"""How a filter's top images become its words: scores of every vocabulary word per filter.

For filter k, its top images i (weight ``a_ki`` = the image's maximum activation of k, images
with ``a_ki <= 0`` or no finite embedding left out) each give a unit embedding ``e_ki`` [D];
with unit word vectors ``w`` [V, D], ``c_kiw = e_ki . w`` is the cosine of image i with word w
and ``mean_k f(i) = sum_i a_ki f(i) / sum_i a_ki`` the activation-weighted mean over k's images.
The *layer baseline* of a word is over all scored (filter, image) pairs of the layer (every
explained filter's top images, unweighted): ``mu_w = mean c_.w``, ``sd_w = std c_.w``.

- ``centred`` (default): ``mean_k(c_kiw) - mu_w``, how much more filter k's top images evoke w
  than the layer's images do in general; a word every pooled vector is near (a hub) gains nothing.
- ``zscore``: ``mean_k(c_kiw - mu_w) / sd_w``, the same in units of the word's spread.
- ``pmi``: a soft, weighted pointwise mutual information, as CLIP-Dissect's SoftWPMI: each image's
  soft choice of words ``p_ki = softmax_w(c_kiw / PMI_TEMPERATURE)``, and
  ``log mean_k(p_kiw) - PMI_LAMBDA * log mean(p_.w)``: how often the filter's images choose w,
  discounted by how often the layer's images choose it (``PMI_LAMBDA`` = 1: the lift alone).
- ``vote``: the paper's flat vote, ``sum_i a_ki 1[w among the s best words of image i]``; words
  no image voted for get no score. It ties whenever the images list the same words.

The scores are real numbers (float64 sums of float32 cosines or probabilities), so two words tie
only when their evidence is identical. ``centred`` and ``zscore`` need no [pairs, V] cosines at all
(the weighted mean cosine is the cosine with the weighted mean embedding, the layer's moments come
from the embeddings' first and second moments); ``pmi`` and ``vote`` go over the pairs in chunks of
filters, never [K, P, V] at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lavise_fast import ops
from lavise_fast.allocator import TEMPORARY_BYTES
from lavise_fast.errors import InputError

__all__ = ["SCORINGS", "DEFAULT_SCORING", "LayerBaseline", "score_layer", "word_scores", "ranked_words"]

SCORINGS = ("centred", "zscore", "pmi", "vote")
DEFAULT_SCORING = "pmi"
PMI_TEMPERATURE = 0.05
PMI_LAMBDA = 0.9
# Filters are scored in chunks of at most this many (filter, image, word) cosines: their float64 sum
# fits in TEMPORARY_BYTES (lavise_fast.allocator says why).
_CHUNK_ELEMENTS = TEMPORARY_BYTES // 8


@dataclass
class LayerBaseline:
    """What a layer's images evoke in general: per word, the mean ``mean`` [V] and standard deviation
    ``std`` [V] of the cosines of all scored pairs (for ``centred`` and ``zscore``), ``pmi`` [V] the
    mean softmax probability (for ``pmi``), each None when not computed, and ``pairs``, how many
    pairs they rest on (float64, on the embeddings' device)."""

    mean: torch.Tensor | None
    std: torch.Tensor | None
    pmi: torch.Tensor | None
    pairs: int


def _chunks(K: int, P: int, V: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, P * V))
    for start in range(0, K, step):
        yield slice(start, min(K, start + step))


def _moments(embeddings: torch.Tensor, live: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation [V] of the cosines ``e . w`` over the live pairs, from the first and
    second moments of the embeddings (``mean_w = m . w``, ``E[c^2]_w = w^T M w``): never [pairs, V]."""
    e = embeddings[live].double()
    w = words.double()
    n = max(1, e.shape[0])
    mean = (e.sum(0) / n) @ w.t()
    square = ((w @ (e.t() @ e / n)) * w).sum(1)
    return mean, (square - mean * mean).clamp_min(0.0).sqrt()


def _pmi_pass(embeddings: torch.Tensor, weights: torch.Tensor, words: torch.Tensor,
              baseline: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the pairs in chunks of filters: each filter's activation-weighted mean softmax
    probability [K, V] and, unless given, the layer's mean probability [V] (float64). One batched
    product gives both a filter's weighted mean and the sum over its live pairs (float32 over its
    P pairs); the filters' sums are added in float64."""
    K, P, _ = embeddings.shape
    V = words.shape[0]
    live = weights > 0
    a = torch.where(live, weights.double(), 0.0)
    share = a / a.sum(1, keepdim=True).clamp_min(1e-300)
    rows = torch.stack([share.float(), live.float()], 1)  # [K, 2, P]: the weighted mean, the live sum
    chosen = torch.zeros(K, V, dtype=torch.float64, device=embeddings.device)
    total = torch.zeros(V, dtype=torch.float64, device=embeddings.device)
    for part in _chunks(K, P, V):
        p = torch.softmax((embeddings[part].float() @ words.t()).div_(PMI_TEMPERATURE), dim=2)  # [k, P, V]
        both = torch.bmm(rows[part], p)  # [k, 2, V]
        del p
        chosen[part] = both[:, 0].double()
        if baseline is None:
            total += both[:, 1].double().sum(0)
    return chosen, (total / max(1, int(live.sum())) if baseline is None else baseline)


def score_layer(embeddings: torch.Tensor, weights: torch.Tensor, words: torch.Tensor,
                scoring: str = DEFAULT_SCORING, s: int = 5) -> tuple[torch.Tensor, LayerBaseline]:
    """:func:`word_scores` [K, V] of every filter of a layer and the layer's baseline (over the pairs
    with ``weights > 0``: the cosines' moments for ``centred`` and ``zscore``, the softmax means for
    ``pmi``, nothing but the pair count for ``vote``), in one pass over the pairs.

    Args:
        embeddings: [K, P, D] unit embeddings of each filter's top images.
        weights: [K, P] the images' weights (max activations); <= 0: not scored.
        words: [V, D] unit word vectors.
        scoring: one of :data:`SCORINGS`.
        s: ``vote`` only: the words each image votes for.
    """
    live = weights > 0
    mean = std = pmi = chosen = None
    if scoring in ("centred", "zscore"):
        mean, std = _moments(embeddings, live, words)
    elif scoring == "pmi":
        chosen, pmi = _pmi_pass(embeddings, weights, words, None)
    baseline = LayerBaseline(mean, std, pmi, int(live.sum()))
    return word_scores(embeddings, weights, words, scoring, s, baseline, _chosen=chosen), baseline


def word_scores(embeddings: torch.Tensor, weights: torch.Tensor, words: torch.Tensor, scoring: str = DEFAULT_SCORING,
                s: int = 5, baseline: LayerBaseline | None = None, *, _chosen: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Scores [K, V] float64 of every word for every filter (module docstring); ``-inf`` where a
    filter has no scored image, and for ``vote`` where no image voted for the word.

    Args:
        embeddings: [K, P, D] unit embeddings of each filter's top images.
        weights: [K, P] the images' weights (max activations); <= 0: not scored.
        words: [V, D] unit word vectors.
        scoring: one of :data:`SCORINGS`.
        s: ``vote`` only: the words each image votes for.
        baseline: the layer's baseline (default: computed from these pairs, :func:`score_layer`).
        _chosen: internal: ``pmi``'s per-filter mean softmax probabilities [K, V] float64 when
            :func:`score_layer` has them already (None: computed).
    """
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    K = embeddings.shape[0]
    V = words.shape[0]
    a = torch.where(weights > 0, weights.double(), 0.0)
    mass = a.sum(1, keepdim=True)  # [K, 1]
    out = torch.full((K, V), -math.inf, dtype=torch.float64, device=embeddings.device)
    if scoring == "vote":
        live = weights > 0
        filt, slot = live.nonzero(as_tuple=True)
        if len(filt):
            _, best = ops.cosine_topk(embeddings[filt, slot].float(), words, min(s, V))
            votes = torch.zeros(K, V, dtype=torch.float64, device=embeddings.device)
            votes.index_put_((filt[:, None].expand_as(best), best), a[filt, slot][:, None].expand_as(best),
                             accumulate=True)
            out = torch.where(votes > 0, votes, out)
        return out
    if baseline is None or (baseline.pmi if scoring == "pmi" else baseline.mean) is None:
        return score_layer(embeddings, weights, words, scoring, s)[0]
    if scoring == "pmi":
        chosen = _pmi_pass(embeddings, weights, words, baseline.pmi)[0] if _chosen is None else _chosen
        value = torch.log(chosen.clamp_min(1e-300)) - PMI_LAMBDA * torch.log(baseline.pmi)
    else:  # the weighted mean of the cosines is the cosine with the weighted mean embedding
        share = a / mass.clamp_min(1e-300)
        value = (share[:, :, None] * embeddings.double()).sum(1) @ words.double().t() - baseline.mean
        if scoring == "zscore":
            value = value / baseline.std.clamp_min(1e-12)
    return torch.where(mass > 0, value, out)


def ranked_words(scores: torch.Tensor, num_words: int) -> list[list[tuple[int, float]]]:
    """Per filter, the ``num_words`` best (word index, score) with a finite score, best first, ties
    to the smaller index.

    Args:
        scores: [K, V] word scores (:func:`word_scores`); ``-inf`` / NaN: no score, left out.
        num_words: how many words to keep per filter (at most V).
    """
    K, V = scores.shape
    n = min(num_words, V)
    values = torch.empty(K, n, dtype=scores.dtype, device=scores.device)
    indices = torch.empty(K, n, dtype=torch.int64, device=scores.device)
    if K and n:
        # Rows whose n best scores are exactly the scores >= the n-th best (no tie across it, no NaN)
        # sort just those n; the others the whole row. Stable: equal scores keep index order.
        chosen = scores >= scores.topk(n, dim=1).values[:, -1:]
        clean = (chosen.sum(1) == n) & ~scores.isnan().any(1)
        if clean.any():
            candidates = chosen[clean].nonzero()[:, 1].view(-1, n)  # in index order
            order = torch.sort(scores[clean].gather(1, candidates), dim=1, descending=True, stable=True)
            values[clean], indices[clean] = order.values, candidates.gather(1, order.indices)
        if not clean.all():
            order = torch.sort(scores[~clean], dim=1, descending=True, stable=True)
            values[~clean], indices[~clean] = order.values[:, :n], order.indices[:, :n]
    values, indices = values.cpu(), indices.cpu()
    return [[(w, v) for w, v in zip(idx, val, strict=True) if math.isfinite(v)]
            for idx, val in zip(indices.tolist(), values.tolist(), strict=True)]
