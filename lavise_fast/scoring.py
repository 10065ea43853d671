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

The scores are real numbers (float64 sums of float32 cosines), so two words tie only when their
evidence is identical. Scores are computed in chunks of filters, never [K, P, V] at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lavise_fast import ops

__all__ = ["SCORINGS", "DEFAULT_SCORING", "LayerBaseline", "layer_baseline", "word_scores", "ranked_words"]

SCORINGS = ("centred", "zscore", "pmi", "vote")
DEFAULT_SCORING = "pmi"
PMI_TEMPERATURE = 0.05
PMI_LAMBDA = 0.9
_CHUNK_ELEMENTS = 1 << 24  # filters are scored in chunks of at most this many (filter, image, word) cosines


@dataclass
class LayerBaseline:
    """What a layer's images evoke in general: per word, the mean ``mean`` [V] and standard deviation
    ``std`` [V] of the cosines of all scored pairs, ``pmi`` [V] the mean softmax probability (for
    ``pmi``), and ``pairs``, how many pairs they rest on (float64, on the embeddings' device)."""

    mean: torch.Tensor
    std: torch.Tensor
    pmi: torch.Tensor
    pairs: int


def _chunks(K: int, P: int, V: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, P * V))
    for start in range(0, K, step):
        yield slice(start, min(K, start + step))


def layer_baseline(embeddings: torch.Tensor, weights: torch.Tensor, words: torch.Tensor) -> LayerBaseline:
    """The baseline over the pairs with ``weights > 0``.

    Args:
        embeddings: [K, P, D] unit embeddings of the filters' top images (anything where weight is 0).
        weights: [K, P] the images' weights; pairs with weight <= 0 are not scored.
        words: [V, D] unit word vectors.
    """
    live = weights > 0
    n = int(live.sum())
    V = words.shape[0]
    device = embeddings.device
    if n == 0:
        zeros = torch.zeros(V, dtype=torch.float64, device=device)
        return LayerBaseline(zeros, zeros.clone(), torch.full_like(zeros, 1.0 / max(1, V)), 0)
    total = torch.zeros(V, dtype=torch.float64, device=device)
    square = torch.zeros(V, dtype=torch.float64, device=device)
    soft = torch.zeros(V, dtype=torch.float64, device=device)
    K, P, _ = embeddings.shape
    for part in _chunks(K, P, V):
        e = embeddings[part][live[part]].float()  # [m, D]
        c = (e @ words.t()).double()
        total += c.sum(0)
        square += (c * c).sum(0)
        soft += torch.softmax(c / PMI_TEMPERATURE, dim=1).sum(0)
    mean = total / n
    std = (square / n - mean * mean).clamp_min(0.0).sqrt()
    return LayerBaseline(mean, std, soft / n, n)


def word_scores(embeddings: torch.Tensor, weights: torch.Tensor, words: torch.Tensor, scoring: str = DEFAULT_SCORING,
                s: int = 5, baseline: LayerBaseline | None = None) -> torch.Tensor:
    """Scores [K, V] float64 of every word for every filter (module docstring); ``-inf`` where a
    filter has no scored image, and for ``vote`` where no image voted for the word.

    Args:
        embeddings: [K, P, D] unit embeddings of each filter's top images.
        weights: [K, P] the images' weights (max activations); <= 0: not scored.
        words: [V, D] unit word vectors.
        scoring: one of :data:`SCORINGS`.
        s: ``vote`` only: the words each image votes for.
        baseline: the layer's baseline (default: computed from these pairs).
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    K, P, _ = embeddings.shape
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
    baseline = layer_baseline(embeddings, weights, words) if baseline is None else baseline
    share = a / mass.clamp_min(1e-300)  # [K, P]
    for part in _chunks(K, P, V):
        c = (embeddings[part].float() @ words.t()).double()  # [k, P, V]
        if scoring == "pmi":
            p = torch.softmax(c / PMI_TEMPERATURE, dim=2)
            chosen = (share[part, :, None] * p).sum(1)  # how often the filter's images choose each word
            value = torch.log(chosen.clamp_min(1e-300)) - PMI_LAMBDA * torch.log(baseline.pmi)
        else:
            value = (share[part, :, None] * c).sum(1) - baseline.mean
            if scoring == "zscore":
                value = value / baseline.std.clamp_min(1e-12)
        out[part] = value
    return torch.where(mass > 0, out, -math.inf)


def ranked_words(scores: torch.Tensor, num_words: int) -> list[list[tuple[int, float]]]:
    """Per filter, the ``num_words`` best (word index, score) with a finite score, best first, ties
    to the smaller index."""
    V = scores.shape[1]
    n = min(num_words, V)
    order = torch.sort(scores, dim=1, descending=True, stable=True)  # stable: equal scores keep index order
    values, indices = order.values[:, :n].cpu(), order.indices[:, :n].cpu()
    return [[(w, v) for w, v in zip(idx, val, strict=True) if math.isfinite(v)]
            for idx, val in zip(indices.tolist(), values.tolist(), strict=True)]
