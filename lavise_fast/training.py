"""Training an explainer: its head learns to map pooled reference regions to their words.

:func:`train_explainer` pools the reference set once (:func:`lavise_fast.pooling.pool_reference`)
and trains the head on those vectors with the CSMR loss (:func:`lavise_fast.explainer.csmr_loss`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lavise_fast.distributed import all_gather
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.explainer import Explainer, csmr_loss
from lavise_fast.layers import model_device
from lavise_fast.pooling import pool_reference
from lavise_fast.semantics import Vocabulary

__all__ = ["train_explainer"]


def _rows(vectors: torch.Tensor | np.ndarray, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """vectors[index] on ``device``, from a tensor or a memory-mapped array."""
    if isinstance(vectors, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(vectors[index.numpy()])).to(device)
    return vectors[index.to(vectors.device)].to(device)


def train_explainer(
    model: nn.Module,
    reference,
    layer: str | nn.Module,
    space,
    anno_rate: float = 0.5,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    device: torch.device | str | None = None,
    seed: int = 0,
    feature_cache: str | os.PathLike | None = None,
    distributed: bool = False,
    progress: bool = True,
    seen: Sequence[str] | None = None,
    margin: float = 0.1,
    unit_input: bool = True,
) -> Explainer:
    """Trains a LaViSE explainer for ``layer`` of the frozen ``model`` on ``reference`` items
    (image [3, H, W], masks [M, H, W] bool, labels list[str]).

    The model runs once over the reference set: every region (an object's mask; masks equal pixel
    for pixel in one image are one region with all their words) becomes one ``masked_pool``
    vector, kept in memory, or with ``feature_cache`` (a ``.npy`` path) in a memory-mapped file
    that a later call with the same model, layer and set reuses (see :func:`pool_reference`;
    with ``distributed`` the ranks of the process group share that pass and every rank gets
    rank 0's head); the head then trains on those vectors with
    :func:`csmr_loss` (each region's seen words against the other seen words). A seeded
    ``anno_rate`` share of the label words (those ``space`` knows) are *seen* and supervise, or
    the words of ``seen`` when it is given (e.g. ``ConceptWorld.split_words``, which holds out
    family members whose siblings are seen); the others are recorded as *unseen*. 10 % of the
    regions with a seen word are held out; the head with the best held-out loss is kept, and the
    learning rate is halved when that loss stalls.

    Defaults: the paper trained with lr 1e-4 at batch size 1. With Adam at lr 1e-3 the head
    converges in a few hundred steps, so the batch shrinks on small sets (at most an eighth
    of the training objects, at least 16) to give every epoch at least eight steps, and stays
    at ``batch_size`` (256) on large ones. ``margin`` 0.1 (the paper's is 1): in a sentence
    encoder's space related words are close (cos("red", "blue") = 0.73 in MiniLM), so no
    embedding can put one a margin of 1 above the other and the hinge never rests; 0.1 ranked
    the demo's seen and unseen colours markedly better (bench/RESULTS.md). ``unit_input``
    (:class:`Explainer`): pooled vectors scaled to unit length before the head.

    Args:
        model: the frozen network.
        reference: a map-style dataset of reference items ``(image [3, H, W], masks [M, H, W] bool, labels)``.
        layer: the layer to explain, a dotted module name or the module.
        space: the word space (``encode`` and ``name``); label words it lacks are dropped.
        anno_rate: the share of the label words that are seen, in (0, 1] (ignored when ``seen`` is given).
        epochs: passes over the training regions, at least 1.
        batch_size: the largest batch of regions per step (see above).
        lr: Adam's initial learning rate.
        device: where the model and the head run (the model must already be there); None: the model's device.
        seed: seeds the seen-word draw, the split, the shuffles, the head's initialisation and dropout.
        feature_cache: a ``.npy`` path for the pooled vectors (see :func:`pool_reference`); None: in memory.
        distributed: share the pooling pass with the ranks of the initialised process group; every rank
            returns rank 0's head.
        progress: show tqdm progress bars.
        seen: the seen words (those labelling no region are dropped with a warning); None: a seeded draw.
        margin: the CSMR margin (:func:`csmr_loss`).
        unit_input: scale pooled vectors to unit length before the head.

    Returns:
        The trained explainer, in eval mode on the CPU.
    """
    if not 0.0 < anno_rate <= 1.0:
        raise InputError(f"anno_rate must lie in (0, 1], got {anno_rate}")
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    vectors, labels, layer_name = pool_reference(model, reference, layer, cache=feature_cache, device=device,
                                                 distributed=distributed, progress=progress)
    vocabulary = Vocabulary.from_words([w for words in labels for w in words], space)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(vocabulary.words), generator=generator).tolist()
    if seen is None:
        n_seen = max(1, round(anno_rate * len(order)))
        seen = sorted(vocabulary.words[i] for i in order[:n_seen])
    else:
        seen = _given_seen(seen, vocabulary.words)
    unseen = sorted(set(vocabulary.words) - set(seen))
    index = {w: i for i, w in enumerate(seen)}
    keep = torch.tensor([i for i, words in enumerate(labels) if any(w in index for w in words)], dtype=torch.long)
    words = space.encode(seen)
    perm = torch.randperm(len(keep), generator=generator)
    n_val = len(keep) // 10 if len(keep) >= 20 else 0
    val, train = perm[:n_val], perm[n_val:]
    dev = model_device(model, device)
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.to(dev)
    y = torch.zeros(len(keep), len(seen), dtype=torch.float32)  # marks of each kept region's seen words
    for r, i in enumerate(keep.tolist()):
        y[r, [index[w] for w in labels[i] if w in index]] = 1.0
    y = y.to(dev)
    torch.manual_seed(seed)  # the head's initialisation and dropout
    expl = Explainer(
        vectors.shape[1], words.shape[1], layer=layer_name, space=getattr(space, "name", ""), seen=seen, unseen=unseen,
        unit_input=unit_input,
    ).to(dev)
    words = words.to(dev)
    step = int(min(batch_size, max(16, len(train) // 8)))
    optimizer = torch.optim.Adam(expl.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    best, best_state = float("inf"), None
    held = val if n_val else train
    for _ in tqdm(range(epochs), desc="training explainer", disable=not progress):
        expl.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), step):
            batch = shuffled[start : start + step]
            if len(batch) < 2:  # BatchNorm needs two rows
                continue
            with torch.enable_grad():  # also when called under no_grad (explain's default explainer)
                loss = csmr_loss(expl(_rows(vectors, keep[batch], dev)), y[batch.to(dev)], words, margin)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        expl.eval()
        with torch.no_grad():
            score = sum(
                csmr_loss(expl(_rows(vectors, keep[part], dev)), y[part.to(dev)], words, margin).item() * len(part)
                for part in held.split(4096)
            ) / len(held)
        scheduler.step(score)
        if score < best:
            best, best_state = score, {k: v.detach().clone() for k, v in expl.state_dict().items()}
    if distributed:  # the ranks trained on the same rows with the same seed; rank 0's head is the one
        best_state = all_gather({k: v.cpu() for k, v in best_state.items()}, "the trained head")[0]
    expl.load_state_dict(best_state)
    expl.trained = True
    return expl.eval().cpu()


def _given_seen(seen: Sequence[str], words: list[str]) -> list[str]:
    """train_explainer's ``seen=``, sorted; words that label no reference region (or that the space lacks)
    cannot supervise and are left out with a warning."""
    if isinstance(seen, str) or not all(isinstance(w, str) for w in seen):
        raise InputTypeError(f"seen must be a list of words, got {seen!r}"[:200])
    absent = sorted(set(seen) - set(words))
    if absent:
        warnings.warn(f"{len(absent)} of the seen words label no reference region (or the space lacks them) and "
                      f"cannot supervise; they are left out: {absent[:10]}", UserWarning, stacklevel=3)
    kept = sorted(set(seen) & set(words))
    if not kept:
        raise InputError(f"seen must name at least one word that labels a reference region, got {list(seen)[:10]}")
    return kept
