"""explain(): every filter of a layer described in words, in one streaming pass.

For every batch of the target loader, on the device of the features: the spatial maxima
update each filter's top images (``TopImages``) and the quantile sketch (``ChannelQuantiles``);
the (image, filter) pairs that just entered a filter's top images get their pooled vector
``z`` sent through the head and scored against the vocabulary at once, so the pass keeps only
the s best word indices of each pair. At the end each filter's words are voted over its top
images, each vote weighted by the image's maximum activation of the filter.

The four inference methods of the paper, for an image with feature map ``A`` [C, h, w] and
``a = A[k]`` the map of filter k with threshold ``t_k``:

- ``projection`` (the paper's): ``z = mean_hw(A * a / ||a||_2)``; in the pass.
- ``activation``: ``z = mean_hw(A * 1[a > t_k])``; in the pass when ``thresholds`` are given,
  else after it, re-running only the union of the top images.
- ``image``: the input image times ``1[bilinear_upsample(a) > t_k]`` is run through the model
  again and ``z = mean_hw`` of its features; after the pass, on the top images only.
- ``original``: ``z = mean_hw(A)``, the same for every filter of an image; in the pass.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lavise_fast import ops
from lavise_fast.explainer import Explainer
from lavise_fast.layers import LayerFeatures, model_device, resolve_layer
from lavise_fast.semantics import Vocabulary
from lavise_fast.stats import ChannelQuantiles, TopImages

if TYPE_CHECKING:
    from lavise_fast.onnx import OnnxHead

__all__ = ["explain", "ExplainResult", "METHODS"]

METHODS = ("projection", "activation", "image", "original")


@dataclass
class ExplainResult:
    """Per explained filter k (in the order of ``filters``): ``words[k]`` sorted by ``scores[k]``
    (the summed max activation of the top images that ranked the word among their
    ``words_per_image`` best), ``top_images[k]`` and ``top_activations[k]`` (descending);
    ``thresholds`` the per-filter ``quantile`` of all activations (or the given thresholds);
    ``settings`` how it was run: layer, method, top_images, words_per_image, num_words, quantile,
    thresholds_given, images (how many the loader gave), space, vocabulary_size, and the
    explainer's seen and unseen words (for evaluation)."""

    filters: list[int]
    words: list[list[str]]
    scores: list[list[float]]
    top_images: list[list[int]]
    top_activations: list[list[float]]
    thresholds: list[float]
    settings: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON atomically (a temporary file, then a rename)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(self), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def report(self, path: str | os.PathLike, **kwargs) -> Path:
        """Writes the self-contained HTML report (words, top images with heatmaps, summary plots) to ``path``;
        the keywords (images=, model=, evaluation=, ...) are those of :func:`lavise_fast.report.write_report`."""
        from lavise_fast.report import write_report

        return write_report(self, path, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExplainResult:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not an ExplainResult JSON file: {error}") from None


def _images(batch) -> torch.Tensor:
    images = batch[0] if isinstance(batch, (tuple, list)) and len(batch) else batch
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        found = repr(images)[:60]
        if torch.is_tensor(images):
            found = f"{images.dtype} tensor of shape {tuple(images.shape)}"
        raise TypeError(f"the loader must yield float image batches [N, 3, H, W] (or tuples starting with one), "
                        f"got {found}")
    return images


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class _Votes:
    """The (filter, image) pairs of the top images and what they vote for.

    Pairs entering a filter's top images are stashed with their pooled vector z [C] and weight;
    stashed pairs that have left the top images are dropped before they are scored, and the
    stash is scored (head, ``cosine_topk``) only when it outgrows ``budget_bytes`` and at the
    end, so most pairs that enter and leave again are never scored. Scored pairs keep only
    their s best word indices: per filter, image -> (indices [s], or None when the embedding
    was not finite; weight).
    """

    def __init__(self, channels: int, head, words: torch.Tensor, s: int, budget_bytes: int = 64 << 20) -> None:
        self.pairs: list[dict[int, tuple[torch.Tensor | None, float]]] = [{} for _ in range(channels)]
        self.head, self.words, self.s = head, words, s
        self.budget_rows = max(1, budget_bytes // (4 * channels))
        self.chunk_rows = max(1, self.budget_rows // 4)  # pairs pooled at once
        self.stash_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.stash_rows = 0
        self.non_finite = 0

    def add(self, filt: torch.Tensor, images: torch.Tensor, weights: torch.Tensor, z: torch.Tensor,
            tops: TopImages | None = None) -> None:
        """Stashes the pairs (filt[m], images[m]) [M] with weights [M] and pooled vectors z [M, C]."""
        self.stash_parts.append((filt, images, weights.float(), z.float()))
        self.stash_rows += len(filt)
        if self.stash_rows > self.budget_rows:
            if tops is not None:
                self.prune(tops)
            if self.stash_rows > self.budget_rows:
                self.score()

    def _stash(self) -> tuple[torch.Tensor, ...]:
        parts = [torch.cat(column) for column in zip(*self.stash_parts, strict=True)]
        self.stash_parts = [tuple(parts)] if len(parts[0]) else []
        return tuple(parts)

    def prune(self, tops: TopImages) -> None:
        """Drops the stashed pairs that are no longer among their filter's top images."""
        if not self.stash_parts:
            return
        filt, images, weights, z = self._stash()
        alive = (tops.indices[filt] == images[:, None]).any(1)
        self.stash_parts = [(filt[alive], images[alive], weights[alive], z[alive])] if alive.any() else []
        self.stash_rows = int(alive.sum())

    def score(self) -> None:
        """Scores the stash: head, then the s best words by cosine similarity (or both at once in a
        vocabulary-fused ONNX head, whose similarities are non-finite where the embedding is)."""
        if not self.stash_parts:
            return
        filt, images, weights, z = self._stash()
        self.stash_parts, self.stash_rows = [], 0
        if getattr(self.head, "fused", False):
            scores, best = self.head(z)
            finite, best = torch.isfinite(scores).all(1), best[:, : self.s]
        else:
            embedded = self.head(z)
            finite = torch.isfinite(embedded).all(1)
            _, best = ops.cosine_topk(torch.where(finite[:, None], embedded, 0.0), self.words, self.s)
        finite, best = finite.tolist(), best.cpu()
        self.non_finite += finite.count(False)
        for k, image, weight, w_idx, ok in zip(filt.tolist(), images.tolist(), weights.tolist(), best, finite,
                                               strict=True):
            self.pairs[k][image] = (w_idx if ok else None, weight)

    def forget(self, tops: TopImages, filters: list[int]) -> None:
        """Drops the scored pairs of ``filters`` that are no longer among their top images."""
        for k in filters:
            if self.pairs[k]:
                keep = set(tops.indices[k].tolist())
                self.pairs[k] = {i: v for i, v in self.pairs[k].items() if i in keep}

    def ranked(self, k: int, images: list[int], num_words: int) -> list[tuple[int, float]]:
        """The vote of filter k over its top images: (word index, summed weight), best first, ties to
        the smaller index. Images with a maximum <= 0 or no finite embedding do not vote."""
        votes: dict[int, float] = {}
        for image in images:
            w_idx, weight = self.pairs[k].get(image, (None, 0.0))
            if w_idx is None or not weight > 0:
                continue
            for w in w_idx.tolist():
                votes[w] = votes.get(w, 0.0) + weight
        return sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:num_words]


def _loader_batch_size(loader, default: int) -> int:
    size = getattr(loader, "batch_size", None)
    return int(size) if isinstance(size, int) and size > 0 else default


def _images_at(loader, wanted: list[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (global indices [n], images [n, 3, H, W]) for the sorted image positions ``wanted``.

    A ``DataLoader`` over a map-style dataset read in order loads only those images; any other
    loader is iterated again and the wanted images are picked out of its batches.
    """
    dataset = getattr(loader, "dataset", None)
    sampler = getattr(loader, "sampler", None)
    if isinstance(loader, torch.utils.data.DataLoader) and isinstance(sampler, torch.utils.data.SequentialSampler):
        subset = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, wanted), batch_size=batch_size, shuffle=False,
            num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        )
        start = 0
        for batch in subset:
            images = _images(batch)
            yield torch.tensor(wanted[start : start + len(images)]), images
            start += len(images)
        return
    want = torch.tensor(wanted)
    base = found = 0
    for batch in loader:
        images = _images(batch)
        lo, hi = torch.searchsorted(want, torch.tensor([base, base + len(images)])).tolist()
        if hi > lo:
            yield want[lo:hi], images[want[lo:hi] - base]
            found += hi - lo
        base += len(images)
        if found == len(wanted):
            return
    raise ValueError(f"iterating the loader a second time gave {base} images, not the {wanted[-1] + 1} or more of "
                     "the first pass: this method re-runs the top images, so the loader must be re-iterable and "
                     "yield the same images in the same order (or pass thresholds= for method='activation')")


def _masked_image_features(tap, layer: str, images: torch.Tensor, features: torch.Tensor, rows: torch.Tensor,
                           filt: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``image`` method: z [M, C] = mean_hw of the features of ``images[rows] * 1[up(a) > t]``, with
    ``a = features[rows, filt]`` upsampled bilinearly (align_corners=False) to the image size."""
    a = features[rows, filt].float()[:, None]  # [M, 1, h, w]
    up = F.interpolate(a, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    mask = up > thresholds[filt][:, None, None]
    masked = images[rows] * mask[:, None].to(images.dtype)
    return tap(masked)[layer].float().mean((2, 3))


@torch.no_grad()
def explain(
    model: torch.nn.Module,
    loader,
    explainer: Explainer | None = None,
    *,
    layer: str | torch.nn.Module | None = None,
    filters: Sequence[int] | None = None,
    method: str = "projection",
    top_images: int = 25,
    words_per_image: int = 5,
    num_words: int = 10,
    vocabulary: Vocabulary | None = None,
    quantile: float = 0.995,
    thresholds: Sequence[float] | torch.Tensor | None = None,
    device: torch.device | str | None = None,
    head: str | OnnxHead = "torch",
    progress: bool = True,
) -> ExplainResult:
    """Describes the filters of a layer of ``model`` in words, over the images of ``loader``.

    Args:
        model: the frozen CNN (put in eval mode). loader: yields float image batches [N, 3, H, W],
            or tuples/lists that start with one; image indices are positions in iteration order.
        explainer: a trained :class:`Explainer` for the layer. When None, one is trained on the
            embedded reference set for this model and layer and cached (see
            :func:`lavise_fast.explainer.default_explainer`).
        layer: dotted name or module; default the explainer's layer (they must agree), or the last
            4-D layer of the model when no explainer is given.
        filters: the filter indices to explain (default all), in the order of the result.
        method: ``projection`` (the paper's, default), ``activation``, ``image`` or ``original``
            (module docstring). Only ``projection`` and ``original``, and ``activation`` with
            ``thresholds``, run in exactly one pass; the others re-run the top images once.
        top_images: P, the images per filter. words_per_image: s, the words each top image votes
            for. num_words: the words kept per filter.
        vocabulary: the candidate words in the explainer's space; default the 1,202 LaViSE
            entities in the default space (only for explainers trained in it).
        quantile: the per-filter threshold quantile over all positions of all images (0.995, the
            top 0.5 % of Network Dissection). thresholds: per-filter thresholds [C] to use
            instead (e.g. ``result.thresholds`` of an earlier run over all filters).
        head: what scores the pooled vectors: ``"torch"`` (default: the explainer, then
            ``ops.cosine_topk``), ``"onnx"`` (the explainer fused with the vocabulary is exported
            with :func:`lavise_fast.export_onnx` to a temporary file and run in onnxruntime), or a
            vocabulary-fused :class:`lavise_fast.OnnxHead` (its layer, channels, dimension and words must be
            the explainer's and the vocabulary's, and its ``top_k`` at least ``words_per_image``; that
            its weights are the explainer's is up to the caller). The words equal the torch head's up to
            float32 rounding (similarities within about 1e-7 may swap).

    The vote weights each top image by its maximum activation of the filter, a real number; the
    official code repeats a word ``int(max)`` times instead, which drops images whose maximum
    is below 1. Images whose maximum is <= 0 do not vote (as in the official code). NaN
    activations are ignored (the sketch counts them, top images never hold them) and reported.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(head, str) and head not in ("torch", "onnx"):
        raise ValueError(f"head must be 'torch', 'onnx' or a lavise_fast.OnnxHead, got {head!r}")
    _check_positive(top_images=top_images, words_per_image=words_per_image, num_words=num_words)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    device = model_device(model, device)
    model.eval()
    if explainer is None:
        from lavise_fast.explainer import default_explainer

        explainer = default_explainer(model, loader, layer=layer, device=device, progress=progress)
    layer_name = explainer.layer if layer is None else resolve_layer(model, layer)[0]
    explainer.check_compatible(layer_name, explainer.channels)
    vocabulary = _vocabulary_for(explainer, vocabulary)
    s = min(words_per_image, len(vocabulary.words))
    if isinstance(head, str) and head == "torch":
        head = explainer.to(device).eval()
    else:
        head = _head_for(head, explainer, vocabulary, s)
    words = vocabulary.vectors.to(device)
    given = None if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float32).flatten().to(device)
    in_pass = method in ("projection", "original") or (method == "activation" and given is not None)

    tops = quantiles = votes = None
    chosen: list[int] = []
    wanted = None
    base = 0
    batch_size = 0
    with LayerFeatures(model, [layer_name]) as tap:
        for batch in tqdm(loader, desc=f"explain {layer_name}", disable=not progress):
            images = _images(batch).to(device)
            features = tap(images)[layer_name]
            if tops is None:
                C = features.shape[1]
                explainer.check_compatible(layer_name, C)
                chosen = _chosen_filters(filters, C)
                if given is not None and given.numel() != C:
                    raise ValueError(f"thresholds must hold one value per filter of {layer_name!r} ({C}), "
                                     f"got {given.numel()}")
                tops = TopImages(C, top_images, device=device)
                quantiles = ChannelQuantiles(C, device=device)
                votes = _Votes(C, head, words, s)
                wanted = torch.zeros(C, dtype=torch.bool, device=device)
                wanted[chosen] = True
                batch_size = _loader_batch_size(loader, images.shape[0])
            tops.update(features, base)
            quantiles.update(features)
            if in_pass:
                entered = (tops.indices >= base) & (tops.indices < base + images.shape[0]) & wanted[:, None]
                filt, slot = entered.nonzero(as_tuple=True)
                for f, sl in zip(filt.split(votes.chunk_rows), slot.split(votes.chunk_rows), strict=True):
                    rows = tops.indices[f, sl] - base  # pooled in chunks: memory stays within the budget
                    if method == "original":
                        z = features[rows].float().mean((2, 3))
                    else:
                        z = ops.attention_pool(features, rows, f, mode=method, thresholds=given)
                    votes.add(f, rows + base, tops.values[f, sl], z, tops)
                if len(filt):
                    votes.forget(tops, filt.unique().tolist())
            base += images.shape[0]
        if tops is None:
            raise ValueError("the loader yielded no batch: explain needs at least one image")
        t = given if given is not None else quantiles.quantile(quantile)
        if not in_pass:
            _rerun_top_images(method, loader, tap, layer_name, tops, chosen, t, votes, batch_size, device, progress)
        votes.prune(tops)
        votes.score()

    _report_non_finite(quantiles, votes, layer_name)
    result_words, result_scores, result_images, result_acts = [], [], [], []
    for k in chosen:
        idx = [i for i in tops.indices[k].tolist() if i >= 0]
        ranked = votes.ranked(k, idx, num_words)
        result_words.append([vocabulary.words[w] for w, _ in ranked])
        result_scores.append([v for _, v in ranked])
        result_images.append(idx)
        result_acts.append(tops.values[k, : len(idx)].tolist())
    settings = {"layer": layer_name, "method": method, "top_images": top_images, "words_per_image": s,
                "num_words": num_words, "quantile": quantile if thresholds is None else None,
                "thresholds_given": thresholds is not None, "images": base, "space": explainer.space,
                "vocabulary_size": len(vocabulary.words), "seen": list(explainer.seen),
                "unseen": list(explainer.unseen)}
    t = t.tolist()
    return ExplainResult(chosen, result_words, result_scores, result_images, result_acts, [t[k] for k in chosen],
                         settings)


def _chosen_filters(filters: Sequence[int] | None, channels: int) -> list[int]:
    if filters is None:
        return list(range(channels))
    chosen = [int(f) for f in filters]
    bad = [f for f in chosen if not 0 <= f < channels]
    if bad or not chosen:
        raise ValueError(f"filters must be indices in [0, {channels}), got {bad or 'none'}")
    if len(set(chosen)) != len(chosen):
        raise ValueError("filters must not repeat an index")
    return chosen


def _vocabulary_for(explainer: Explainer, vocabulary: Vocabulary | None) -> Vocabulary:
    """The given vocabulary (checked against the explainer's space), or the entities in the default space."""
    if vocabulary is None:
        from lavise_fast import semantics, vocabularies

        space = semantics.default_space()
        if explainer.space and explainer.space != space.name:
            raise ValueError(f"the explainer was trained in the word space {explainer.space!r}: pass vocabulary= "
                             f"(a lavise_fast.Vocabulary in that space); the default vocabulary is in {space.name!r}")
        return Vocabulary.from_words(vocabularies.entities(), space)
    if explainer.dim != vocabulary.vectors.shape[1]:
        raise ValueError(f"the explainer embeds into {explainer.dim} dimensions, the vocabulary has "
                         f"{vocabulary.vectors.shape[1]}")
    space = getattr(vocabulary, "space", "")
    if space and explainer.space and space != explainer.space:
        raise ValueError(f"the vocabulary is in the word space {space!r}, the explainer was trained in "
                         f"{explainer.space!r}")
    return vocabulary


def _head_for(head: str | OnnxHead, explainer: Explainer, vocabulary: Vocabulary, s: int) -> OnnxHead:
    """explain's ``head="onnx"`` (an export to a temporary file) or a given OnnxHead, checked against the
    explainer and the vocabulary."""
    from lavise_fast.onnx import OnnxHead, export_onnx

    if head == "onnx":
        with tempfile.TemporaryDirectory(prefix="lavise_fast_onnx_") as tmp:
            return OnnxHead(export_onnx(explainer, Path(tmp) / "head.onnx", vocabulary=vocabulary, top_k=s))
    if not isinstance(head, OnnxHead):
        raise TypeError(f"head must be 'torch', 'onnx' or a lavise_fast.OnnxHead, got {type(head).__name__}")
    if not head.fused:
        raise ValueError(f"the ONNX head {head.path} has no vocabulary: export it with "
                         "export_onnx(..., vocabulary=...) to use it in explain")
    explainer.check_compatible(head.layer or explainer.layer, head.channels, head.space or None)
    if head.dim != explainer.dim:
        raise ValueError(f"the ONNX head {head.path} embeds into {head.dim} dimensions, the explainer into "
                         f"{explainer.dim}")
    if head.words != vocabulary.words:
        raise ValueError(f"the ONNX head {head.path} was exported with another vocabulary ({len(head.words)} words) "
                         f"than explain's ({len(vocabulary.words)}): pass the same vocabulary=")
    if head.top_k < s:
        raise ValueError(f"the ONNX head {head.path} gives {head.top_k} words per image, words_per_image asks for {s}")
    return head


def _rerun_top_images(method, loader, tap, layer, tops, chosen, thresholds, votes, batch_size, device,
                      progress) -> None:
    """``activation`` without given thresholds and ``image``: runs the model again on the union of
    the chosen filters' top images (those with a positive maximum), batched, and scores their pairs."""
    idx, val = tops.indices[chosen], tops.values[chosen]
    live = (idx >= 0) & (val > 0)
    filt = torch.tensor(chosen, device=idx.device)[:, None].expand_as(idx)[live]
    image_of, weight_of = idx[live], val[live]
    union = sorted(set(image_of.tolist()))
    if not union:
        return
    total = math.ceil(len(union) / batch_size)
    for positions, images in tqdm(_images_at(loader, union, batch_size), total=total,
                                  desc=f"re-running top images ({method})", disable=not progress):
        positions, images = positions.to(device), images.to(device)
        features = tap(images)[layer]
        pair = torch.isin(image_of, positions).nonzero().flatten()
        rows = torch.searchsorted(positions, image_of[pair])
        step = batch_size if method == "image" else votes.chunk_rows
        for start in range(0, len(pair), step):
            part = pair[start : start + step]
            r = rows[start : start + step]
            if method == "image":
                z = _masked_image_features(tap, layer, images, features, r, filt[part], thresholds)
            else:
                z = ops.attention_pool(features, r, filt[part], mode="activation", thresholds=thresholds)
            votes.add(filt[part], image_of[part], weight_of[part], z)


def _report_non_finite(quantiles: ChannelQuantiles, votes: _Votes, layer: str) -> None:
    nan = quantiles.nan_count
    if nan.sum() > 0:
        bad = nan.nonzero().flatten().tolist()
        warnings.warn(f"{int(nan.sum())} activations of {len(bad)} filter(s) of {layer!r} were NaN and were ignored "
                      f"(filters {bad[:10]}{' ...' if len(bad) > 10 else ''}); filters with no finite activation "
                      "get no top images and no words", RuntimeWarning, stacklevel=3)
    if votes.non_finite:
        warnings.warn(f"{votes.non_finite} (filter, image) pair(s) gave a non-finite embedding and did not vote",
                      RuntimeWarning, stacklevel=3)
