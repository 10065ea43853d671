"""explain(): every filter of a layer described in words, in one streaming pass.

For every batch of the target loader, on the device of the features: the spatial maxima
update each filter's top images (``TopImages``) and the quantile sketch (``ChannelQuantiles``);
the (image, filter) pairs that just entered a filter's top images get their filter attention
``z = attention_pool(...)`` sent through the head and scored against the vocabulary at once, so
the pass keeps only the s best word indices of each pair. No image is loaded or run twice.
At the end each filter's words are voted over its top images, each vote weighted by the image's
maximum activation of the filter (real-valued; the official code repeats a word ``int(max)``
times instead).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lavise_fast import ops
from lavise_fast.explainer import Explainer
from lavise_fast.layers import LayerFeatures
from lavise_fast.semantics import Vocabulary
from lavise_fast.stats import ChannelQuantiles, TopImages

__all__ = ["explain", "ExplainResult"]


@dataclass
class ExplainResult:
    """Per explained filter k (in the order of ``filters``): ``words[k]`` sorted by ``scores[k]``
    (the summed max activation of the top images that ranked the word among their
    ``words_per_image`` best), ``top_images[k]`` and ``top_activations[k]`` (descending);
    ``thresholds`` the per-filter ``quantile`` of all activations; ``settings`` how it was run."""

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

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExplainResult:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not an ExplainResult JSON file: {error}") from None


def _images(batch) -> torch.Tensor:
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise TypeError(f"the loader must yield image batches [N, 3, H, W] (or tuples starting with one), got {shape}")
    return images


@torch.no_grad()
def explain(
    model: torch.nn.Module,
    loader,
    explainer: Explainer,
    *,
    filters: list[int] | None = None,
    method: str = "projection",
    top_images: int = 25,
    words_per_image: int = 5,
    num_words: int = 10,
    vocabulary: Vocabulary | None = None,
    quantile: float = 0.995,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ExplainResult:
    """Describes the filters of ``explainer.layer`` of ``model`` over the images of ``loader``.

    Only ``method="projection"`` (the paper's) is implemented so far, and ``vocabulary`` (the
    words to answer with, in the explainer's space) must be given. Image indices are positions in
    the loader's iteration order; a loader may yield image batches or tuples that start with one.
    """
    if method != "projection":
        raise NotImplementedError(f"method {method!r} is not available yet; use method='projection'")
    if vocabulary is None:
        raise ValueError("vocabulary is required (a lavise_fast.Vocabulary in the explainer's word space)")
    if explainer.dim != vocabulary.vectors.shape[1]:
        raise ValueError(f"the explainer embeds into {explainer.dim} dimensions, the vocabulary has "
                         f"{vocabulary.vectors.shape[1]}")
    s = min(words_per_image, len(vocabulary.words))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    head = explainer.to(device).eval()
    words = vocabulary.vectors.to(device)
    model.eval()
    tops = quantiles = None
    payload: list[dict[int, tuple[torch.Tensor, float]]] = []  # per filter: image -> (word indices, weight)
    base = 0
    with LayerFeatures(model, [explainer.layer]) as tap:
        for batch in tqdm(loader, desc="explain", disable=not progress):
            images = _images(batch).to(device)
            features = tap(images)[explainer.layer]
            C = features.shape[1]
            if tops is None:
                explainer.check_compatible(explainer.layer, C)
                tops = TopImages(C, top_images, device=device)
                quantiles = ChannelQuantiles(C, device=device)
                payload = [{} for _ in range(C)]
            tops.update(features, base)
            quantiles.update(features)
            entered = (tops.indices >= base) & (tops.indices < base + images.shape[0])
            filt, slot = entered.nonzero(as_tuple=True)
            if len(filt):
                rows = tops.indices[filt, slot] - base
                z = ops.attention_pool(features, rows, filt)
                _, best = ops.cosine_topk(head(z), words, s)
                weights = tops.values[filt, slot].tolist()
                for k, image, w_idx, weight in zip(
                    filt.tolist(), (rows + base).tolist(), best.cpu(), weights, strict=True
                ):
                    payload[k][image] = (w_idx, weight)
            for k in filt.unique().tolist():  # forget pairs that left the top images
                keep = set(tops.indices[k].tolist())
                payload[k] = {i: v for i, v in payload[k].items() if i in keep}
            base += images.shape[0]
    if tops is None:
        raise ValueError("the loader yielded no batch")
    C = tops.num_channels
    chosen = list(range(C)) if filters is None else [int(f) for f in filters]
    thresholds = quantiles.quantile(quantile).tolist()
    result_words, result_scores, result_images, result_acts = [], [], [], []
    for k in chosen:
        idx = [i for i in tops.indices[k].tolist() if i >= 0]
        acts = tops.values[k, : len(idx)].tolist()
        votes: dict[int, float] = {}
        for image in idx:
            w_idx, weight = payload[k][image]
            for w in w_idx.tolist():
                votes[w] = votes.get(w, 0.0) + weight
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:num_words]
        result_words.append([vocabulary.words[w] for w, _ in ranked])
        result_scores.append([v for _, v in ranked])
        result_images.append(idx)
        result_acts.append(acts)
    settings = {"layer": explainer.layer, "method": method, "top_images": top_images,
                "words_per_image": s, "num_words": num_words, "quantile": quantile, "images": base}
    return ExplainResult(chosen, result_words, result_scores, result_images, result_acts,
                         [thresholds[k] if not math.isnan(thresholds[k]) else float("nan") for k in chosen], settings)
