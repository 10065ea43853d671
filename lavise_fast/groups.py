"""Polysemantic filters: the top images of a filter split into groups that evoke different words.

A filter may respond to two unrelated concepts (red objects and skies). Averaging its top images
then gives a word list that names both loosely. For each filter, the unit embeddings ``e_i`` of its
scored top images are centred on the layer's mean embedding ``m`` and normalised,
``x_i = unit(e_i - m)`` (what sets image i apart from the layer's images in general), and split in
two by spherical 2-means (seeded by the heaviest image and the image least like it, then weighted
assignments until stable). The split is kept only when it is clear:

- both groups hold at least ``max(3, min_share * n)`` of the n scored images, and
- the mean silhouette (cosine distances) is at least ``min_silhouette`` (0.5: at least a
  "reasonable" structure in Kaufman and Rousseeuw's terms; on the demo, 16 % of the small ResNet's
  128 and 3 % of EfficientNet-Lite0's 1,280 filters split, at 0.25 it was 30 % and 52 %),

otherwise the filter is one group. The caller (:func:`lavise_fast.explain`) then scores each group
like a filter of its own and undoes a split whose groups do not name different words: images of one
concept that differ in an incidental attribute (red circles and red squares) split cleanly too, but
both groups put the concept first.

All filters of a layer are split at once: ``[K, P, D]`` in, ``[K, P]`` group labels out.
"""

from __future__ import annotations

import torch

from lavise_fast.allocator import TEMPORARY_BYTES

__all__ = ["MIN_SILHOUETTE", "MIN_SHARE", "split_in_two", "silhouette"]

MIN_SILHOUETTE = 0.5  # Kaufman and Rousseeuw: 0.26-0.50 weak structure, 0.51-0.70 reasonable
MIN_SHARE = 0.2
_ITERATIONS = 20
_CHUNK_ELEMENTS = TEMPORARY_BYTES // 16  # filters split at once: [k, P, D] float64 of half TEMPORARY_BYTES


def silhouette(x: torch.Tensor, labels: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
    """Mean silhouette of 2-group labellings: ``x`` [..., n, D] unit rows, ``labels`` [..., n] (0/1),
    ``live`` [..., n] the rows that count (default all). With the cosine distance ``1 - x_i . x_j``,
    per row ``(b - a) / max(a, b)``, a the mean distance to its own group (without itself) and b to
    the other group; 0 for a row alone in its group. Returns [...] float64.

    Args:
        x: [..., n, D] unit rows (computed in float64).
        labels: [..., n] group labels, 0 or 1.
        live: [..., n] bool, the rows that count; None: all of them.
    """
    return _silhouette_of_gram(x.double() @ x.double().transpose(-1, -2), labels, live)


def _silhouette_of_gram(gram: torch.Tensor, labels: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """:func:`silhouette` from the rows' Gram matrix ``gram`` [..., n, n] float64 (``x_i . x_j``)."""
    live = torch.ones_like(labels, dtype=torch.bool) if live is None else live
    distance = (1.0 - gram).clamp_min(0.0)
    pair = live[..., :, None] & live[..., None, :]
    same = (labels[..., :, None] == labels[..., None, :]) & pair
    other = (labels[..., :, None] != labels[..., None, :]) & pair
    own = same.sum(-1) - 1  # without the row itself (its distance to itself is 0)
    across = other.sum(-1)
    a = (distance * same).sum(-1) / own.clamp_min(1)
    b = (distance * other).sum(-1) / across.clamp_min(1)
    value = torch.where((own > 0) & (across > 0) & live, (b - a) / torch.maximum(a, b).clamp_min(1e-300), 0.0)
    return value.sum(-1) / live.sum(-1).clamp_min(1)


def split_in_two(embeddings: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor,
                 min_silhouette: float = MIN_SILHOUETTE, min_share: float = MIN_SHARE) -> torch.Tensor:
    """Group labels [K, P] int64 of every filter's top images (module docstring): 0 and 1 for a filter
    whose images split clearly (0 the heavier group), 0 for every image of a filter that stays one
    group, -1 for slots with ``weights <= 0`` (in no group).

    Args:
        embeddings: [K, P, D] unit embeddings of the filters' top images.
        weights: [K, P] their max activations (<= 0: not scored).
        centre: [D] the layer's mean embedding.
        min_silhouette: the least mean silhouette (cosine distances, :func:`silhouette`) of a kept split.
        min_share: the least share of a filter's scored images in each group (and at least 3 images).
    """
    K, P, D = embeddings.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, P * D))
    if K > step:  # filters split independently: in chunks, no temporary outgrows the heap
        return torch.cat([split_in_two(embeddings[i : i + step], weights[i : i + step], centre, min_silhouette,
                                       min_share) for i in range(0, K, step)])
    live = weights > 0
    n = live.sum(1)
    diff = embeddings.double() - centre.double()
    raw = diff @ diff.transpose(1, 2)
    del diff
    norm = raw.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt().clamp_min(1e-12)  # as normalize: x / max(|x|, eps)
    both = live[:, :, None] & live[:, None, :]
    gram = torch.where(both, raw / (norm[:, :, None] * norm[:, None, :]), 0.0)  # [K, P, P]: x_i . x_j
    w = torch.where(live, weights.double(), 0.0)
    rows = torch.arange(K, device=embeddings.device)
    first = w.argmax(1)
    similar = gram[rows, :, first].masked_fill(~live, float("inf"))
    second = similar.argmin(1)
    # a centre is a combination of the images, sum_i coef[g, i] x_i (normalised when compared)
    coef = torch.zeros(K, 2, P, dtype=torch.float64, device=embeddings.device)
    coef[rows, 0, first] = 1.0
    coef[rows, 1, second] = 1.0
    labels = torch.zeros(K, P, dtype=torch.long, device=embeddings.device)
    for step in range(_ITERATIONS):
        dots = coef @ gram  # [K, 2, P]: x_j . (sum_i coef[g, i] x_i)
        norms = ((dots * coef).sum(2, keepdim=True).clamp_min(0.0).sqrt()).clamp_min(1e-12)
        scaled = dots / norms
        new = (scaled[:, 1] > scaled[:, 0]).long()  # [K, P]: the nearer centre, 0 on a tie
        if step and torch.equal(new, labels):
            break
        labels = new
        member = torch.stack([(labels == g) & live for g in range(2)], 1).double()  # [K, 2, P]
        coef = torch.where(member.sum(2, keepdim=True) > 0, member * w[:, None], coef)
    sizes = torch.stack([((labels == g) & live).sum(1) for g in range(2)], 1)  # [K, 2]
    smallest = torch.clamp(torch.ceil(min_share * n.double() - 1e-9), min=3).long()
    clear = (sizes.min(1).values >= smallest) & (_silhouette_of_gram(gram, labels, live) >= min_silhouette)
    heavier = torch.stack([(w * ((labels == g) & live)).sum(1) for g in range(2)], 1).argmax(1)  # [K]
    labels = torch.where(labels == heavier[:, None], 0, 1)
    labels = torch.where(clear[:, None], labels, 0)
    return torch.where(live, labels, -1)
