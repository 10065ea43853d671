"""explain(): every filter of a layer described in words, in one streaming pass.

For every batch of the target loader, on the device of the features: the spatial maxima
update each filter's top images (``TopImages``) and the quantile sketch (``ChannelQuantiles``);
the (image, filter) pairs that just entered a filter's top images get their pooled vector
``z`` sent through the head and scored against the vocabulary at once, so the pass keeps only
the s best word indices of each pair (and its embedding). At the end each filter's words are
scored over its top images (:mod:`lavise_fast.scoring`; by default how much more they evoke a word
than the layer's images do in general) and its top images split into groups (:mod:`lavise_fast.groups`).

The model, its layers, the device, the explainers and their heads are resolved once, into a
:class:`SweepPlan`, before the pass; nothing below looks a layer up again.

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

import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lavise_fast import ops, semantics, vocabularies
from lavise_fast.checkpoint import SweepCheckpoint
from lavise_fast.default_explainers import default_explainer
from lavise_fast.distributed import Shard, all_gather, current_shard, shard_loader
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.explainer import Explainer
from lavise_fast.grids import layout_override
from lavise_fast.groups import split_in_two
from lavise_fast.hashing import digest, model_fingerprint
from lavise_fast.layers import LayerFeatures, default_layer, model_device, resolve_layer
from lavise_fast.loaders import batch_size_of, batches_after, image_batch, images_at, images_at_most, length_of
from lavise_fast.onnx import OnnxHead, export_onnx
from lavise_fast.result import ExplainResult, SweepSettings
from lavise_fast.scoring import DEFAULT_SCORING, SCORINGS, ranked_words, score_layer, word_scores
from lavise_fast.semantics import Vocabulary
from lavise_fast.stats import safe_floor_rank
from lavise_fast.sweep_state import LayerSweep
from lavise_fast.validate import positive_int

__all__ = ["explain", "SweepPlan", "METHODS"]

METHODS = ("projection", "activation", "image", "original")
_THIN_BASELINE = 16  # fewer explained filters than this: the layer baseline is thin (a warning)


def _masked_image_features(tap, layer: str, images: torch.Tensor, features: torch.Tensor, rows: torch.Tensor,
                           filt: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``image`` method: z [M, C] = mean_hw of the features of ``images[rows] * 1[up(a) > t]``, with
    ``a = features[rows, filt]`` upsampled bilinearly (align_corners=False) to the image size."""
    a = features[rows, filt].float()[:, None]  # [M, 1, h, w]
    up = F.interpolate(a, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    mask = up > thresholds[filt][:, None, None]
    masked = images[rows] * mask[:, None].to(images.dtype)
    return tap(masked, only=[layer])[layer].float().mean((2, 3))


@torch.no_grad()
def explain(
    model: torch.nn.Module,
    loader,
    explainer: Explainer | Sequence[Explainer] | Mapping[str, Explainer] | None = None,
    *,
    layer: str | torch.nn.Module | Sequence[str | torch.nn.Module] | None = None,
    filters: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    method: str = "projection",
    scoring: str = DEFAULT_SCORING,
    top_images: int = 25,
    words_per_image: int = 5,
    num_words: int = 10,
    vocabulary: Vocabulary | None = None,
    quantile: float = 0.995,
    thresholds: Sequence[float] | torch.Tensor | Mapping[str, Sequence[float] | torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    head: str | OnnxHead = "torch",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    distributed: bool = False,
    stash_bytes: int | None = None,
    progress: bool = True,
) -> ExplainResult | dict[str, ExplainResult]:
    """Describes the filters of a layer (or of several layers at once) of ``model`` in words, over
    the images of ``loader``.

    Args:
        model: the frozen network (put in eval mode).
        loader: yields float image batches [N, 3, H, W], or tuples/lists that start with one; image
            indices are positions in iteration order.
        explainer: a trained :class:`Explainer` for the layer; for several layers a list of
            explainers (each for its ``layer``) or a dict {layer name: explainer}. When None, one
            is trained per layer on the embedded reference set for this model and cached (see
            :func:`lavise_fast.default_explainers.default_explainer`).
        layer: dotted name or module; default the explainer's layer (they must agree), or the last
            4-D layer of the model when no explainer is given. A list of layers explains them all
            in the same forward pass, each with its own statistics, and returns a dict
            {layer name: ExplainResult}.
        filters: the filter indices to explain (default all), in the order of the result; for
            several layers a dict {layer name: indices} (layers not in it: all filters).
        method: ``projection`` (the paper's, default), ``activation``, ``image`` or ``original``
            (module docstring). Only ``projection`` and ``original``, and ``activation`` with
            ``thresholds``, run in exactly one pass; the others re-run the top images once.
        scoring: how the top images' embeddings become the filter's words (:mod:`lavise_fast.scoring`):
            ``centred`` (default: each word's activation-weighted mean cosine over the filter's top
            images minus its mean over every explained filter's top images, so that words every
            image is near do not win everywhere), ``zscore``, ``pmi`` or ``vote`` (the paper's flat
            vote). The relative scorings need the layer's baseline: explain many filters (all by
            default); with fewer than 16 of a layer's filters a warning says the baseline is thin.
        top_images: P, the images per filter (at most 65,536; at most the dataset's length when the
            loader has one: larger values are clamped to it).
        words_per_image: s, the words each top image votes for (``scoring="vote"`` only).
        num_words: the words kept per filter (and per group).
        vocabulary: the candidate words in the explainer's space; default the 1,202 LaViSE
            entities in the default space (only for explainers trained in it).
        quantile: the per-filter threshold quantile over all positions of all images (0.995, the
            top 0.5 % of Network Dissection). When the pass's number of images is known (a list of
            batches or a DataLoader), the CPU sketch bins the values far below it instead of
            sorting them (``stats.safe_floor_rank``): the thresholds stay those of a full sort.
        thresholds: per-filter thresholds [C] to use instead of the quantile (e.g.
            ``result.thresholds`` of an earlier run over all filters); for several layers a dict
            {layer name: thresholds}.
        head: what embeds the pooled vectors: ``"torch"`` (default: the explainer), ``"onnx"`` (the
            explainer is exported with :func:`lavise_fast.export_onnx` to a temporary file and run
            in onnxruntime), or a vocabulary-free :class:`lavise_fast.OnnxHead` (one layer only; its
            layer, channels and dimension must be the explainer's; that its weights are the
            explainer's is up to the caller). The words equal the torch head's up to float32
            rounding (scores within about 1e-7 may swap).
        checkpoint: a folder. The state of the pass is saved there every ``checkpoint_every``
            batches and when the pass ends (atomically); a sweep that finds a checkpoint of the same
            sweep there resumes from it (skipping the batches it had read) and gives the result an
            uninterrupted run gives. A checkpoint of another model, layer, dataset length or
            settings is refused (ValueError naming what differs). The re-run of the top images
            (``image``, ``activation`` without thresholds) is not checkpointed.
        checkpoint_every: batches between two saves of the checkpoint (default 100).
        distributed: shard the images over the ranks of the initialised ``torch.distributed``
            process group (``torchrun``; NCCL on GPUs, gloo on CPUs): rank r reads the images r,
            r + W, ... of ``loader``'s dataset (a DataLoader read in order), and the ranks merge
            their top images, sketches and embeddings, so every rank returns the result of one process
            over all images (thresholds: up to the sketch's error where it is no longer exact, see
            ``ChannelQuantiles``). A rank that dies makes the others fail with a RuntimeError once
            the process group notices (at the latest after its ``timeout``).
        stash_bytes: memory per layer for the pooled vectors of pairs that entered the top images
            and await scoring (default max(64 MiB, C * P * C * 4 bytes): about 420 MB for ResNet-50
            ``layer4``, 64 MiB for ResNet-18's); a smaller stash is scored more often, including
            pairs that later leave the top images, which costs time (the head's C * C per pair).
        device: where the model and the pass run (default: the device of the model's parameters).
        progress: a tqdm bar over the batches (and over training, when an explainer is trained).

    The vote weights each top image by its maximum activation of the filter, a real number; the
    official code repeats a word ``int(max)`` times instead, which drops images whose maximum
    is below 1. Images whose maximum is <= 0 do not vote (as in the official code). NaN
    activations are ignored (the sketch counts them, top images never hold them) and reported.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if isinstance(head, str) and head not in ("torch", "onnx"):
        raise InputError(f"head must be 'torch', 'onnx' or a lavise_fast.OnnxHead, got {head!r}")
    for argument, value in (("top_images", top_images), ("words_per_image", words_per_image),
                            ("num_words", num_words), ("checkpoint_every", checkpoint_every),
                            *([] if stash_bytes is None else [("stash_bytes", stash_bytes)])):
        positive_int(argument, value)
    if top_images > _MAX_TOP_IMAGES:  # it sizes [channels, top_images] tables before the first image
        raise InputError(f"top_images must be at most {_MAX_TOP_IMAGES:,}, got {top_images:,}")
    images_given = length_of(getattr(loader, "dataset", None))
    if images_given and images_given < top_images:
        top_images = images_given  # never more top images than there are images: the same result, less memory
    if not 0.0 < quantile < 1.0:
        raise InputError(f"quantile must lie in (0, 1), got {quantile}")
    many = isinstance(layer, (list, tuple)) or isinstance(explainer, (list, tuple, Mapping))
    plan = _plan(model, loader, explainer, layer, vocabulary, device, head, distributed, progress)
    names, device, explainers, vocabulary = list(plan.layers), plan.device, plan.explainers, plan.vocabulary
    words, heads, shard = plan.words, plan.heads, plan.shard
    s = min(words_per_image, len(vocabulary.words))
    filters_of = _per_layer(filters, names, many, "filters")
    given_of = {name: None if t is None else torch.as_tensor(t, dtype=torch.float32).flatten().to(device)
                for name, t in _per_layer(thresholds, names, many, "thresholds").items()}
    for name, given in given_of.items():
        if given is not None and torch.isnan(given).any():  # a > NaN is never true: every filter would look alike
            bad = torch.isnan(given).nonzero().flatten().tolist()
            raise InputError(f"thresholds of {name!r} hold NaN for {len(bad)} filter(s) ({bad[:10]}"
                             f"{' ...' if len(bad) > 10 else ''}): give a number for every filter")

    def start(channels: dict[str, int]) -> dict[str, LayerSweep]:
        sweeps = {}
        for name in names:
            C = channels[name]
            explainers[name].check_compatible(name, C)
            given = given_of[name]
            if given is not None and given.numel() != C:
                raise InputError(f"thresholds must hold one value per filter of {name!r} ({C}), got {given.numel()}")
            sweeps[name] = LayerSweep(name, heads[name], method, top_images, C, _chosen_filters(filters_of[name], C),
                                      given, device, stash_bytes)
        return sweeps

    run_loader, image_index = loader, None
    if shard is not None:
        run_loader, image_index = shard_loader(loader, shard)
    saver = None
    if checkpoint is not None:
        fields = _checkpoint_fields(model, loader, explainers, vocabulary, filters_of, given_of, method, top_images,
                                    s, quantile, head)
        overrides = {name: repr(layout_override(module)) for name, module in plan.layers.items()
                     if layout_override(module) is not None}
        if overrides:  # a layout set by hand changes the maps (absent otherwise, so older checkpoints resume)
            fields["layouts"] = overrides
        saver = SweepCheckpoint(checkpoint, fields, *((shard.rank, shard.world) if shard else (0, 1)))

    sweeps: dict[str, LayerSweep] | None = None
    base = batches = 0
    pass_done = False
    with LayerFeatures(model, plan.layers) as tap:
        resumed = saver.load() if saver is not None else None
        if resumed is not None:
            base, batches, pass_done = resumed["images"], resumed["batches"], resumed["pass_done"]
            if resumed["layers"]:
                sweeps = start({name: state["top_values"].shape[0] for name, state in resumed["layers"].items()})
                for name, state in resumed["layers"].items():
                    sweeps[name].load_state_dict(state)

        layouts = dict(resumed.get("layouts", {})) if resumed is not None else {}

        def save() -> None:
            saver.save({"images": base, "batches": batches, "pass_done": pass_done, "layouts": layouts,
                        "layers": {} if sweeps is None else {n: sw.state_dict() for n, sw in sweeps.items()}})

        if not pass_done:
            total, run_images = length_of(run_loader), images_at_most(run_loader)
            desc = f"explain {', '.join(names)}" + (f" (rank {shard.rank} of {shard.world})" if shard else "")
            for batch in tqdm(batches_after(run_loader, batches, base), desc=desc, total=total, initial=batches,
                              disable=not progress):
                images = image_batch(batch).to(device, non_blocking=True)  # from pinned memory: asynchronous
                features = tap(images)
                layouts.update({name: layout.describe() for name, layout in tap.layouts.items()})
                if sweeps is None:
                    sweeps = start({name: features[name].shape[1] for name in names})
                floor_rank = safe_floor_rank(quantile, base, run_images)  # spares sorting values far below it
                for name, sweep in sweeps.items():
                    sweep.update(features[name], base, floor_rank)
                base += images.shape[0]
                batches += 1
                del features  # freed before the next forward, which can then reuse its memory
                if saver is not None and batches % checkpoint_every == 0:
                    save()
            pass_done = True
            if saver is not None:
                save()
        if shard is not None:
            sweeps, base = _merge_ranks(sweeps, base, image_index, start)
        if sweeps is None:
            raise InputError("the loader yielded no batch: explain needs at least one image")
        threshold_of = {name: sw.given if sw.given is not None else sw.quantiles.quantile(quantile)
                        for name, sw in sweeps.items()}
        rerun = [sw for sw in sweeps.values() if not sw.in_pass]
        if rerun:
            _rerun_top_images(rerun, run_loader, tap, threshold_of, batch_size_of(loader, 64), device, progress,
                              image_index)
            layouts.update({name: layout.describe() for name, layout in tap.layouts.items()})
            if shard is not None:
                _merge_pairs(rerun)
        for sweep in sweeps.values():
            sweep.settle()

    results = {}
    for name, sweep in sweeps.items():
        _report_non_finite(sweep)
        results[name] = _result(sweep, vocabulary, words, explainers[name], threshold_of[name], scoring, s, num_words,
                                quantile, thresholds is not None, base, layouts.get(name))
    return results if many else results[names[0]]


def _result(sweep: LayerSweep, vocabulary: Vocabulary, words: torch.Tensor, explainer: Explainer,
            thresholds: torch.Tensor, scoring: str, s: int, num_words: int, quantile: float, thresholds_given: bool,
            images: int, layout: str | None) -> ExplainResult:
    """The words of every chosen filter and of its groups, from the top pairs' embeddings."""
    top = sweep.tops.indices[sweep.chosen]
    embeddings, weights = sweep.pairs.tensors(sweep.chosen, top.cpu(), words.shape[1], words.device)
    if scoring != "vote" and len(sweep.chosen) < min(_THIN_BASELINE, sweep.tops.values.shape[0]):
        warnings.warn(f"scoring={scoring!r} compares each filter with the layer's baseline, which here rests on "
                      f"{len(sweep.chosen)} filter(s) of {sweep.name!r} only; explain more filters (all, by default) "
                      "for specific words, or use scoring='vote'", UserWarning, stacklevel=4)
    scores, baseline = score_layer(embeddings, weights, words, scoring, s)
    ranked = ranked_words(scores, num_words)
    result_words = [[vocabulary.words[w] for w, _ in ranks] for ranks in ranked]
    result_scores = [[v for _, v in ranks] for ranks in ranked]
    result_images, result_acts = [], []
    for row, k in enumerate(sweep.chosen):
        idx = [i for i in top[row].tolist() if i >= 0]
        result_images.append(idx)
        result_acts.append(sweep.tops.values[k, : len(idx)].tolist())
    groups = _groups(embeddings, weights, top, words, scoring, s, num_words, baseline, vocabulary, result_words,
                     result_scores)
    settings = SweepSettings(layer=sweep.name, layout=layout, method=sweep.method, scoring=scoring,
                             top_images=sweep.tops.k, words_per_image=s, num_words=num_words,
                             quantile=None if thresholds_given else quantile,
                             thresholds_given=thresholds_given, images=images, space=explainer.space,
                             vocabulary_size=len(vocabulary.words), baseline_pairs=baseline.pairs,
                             seen=list(explainer.seen), unseen=list(explainer.unseen))
    t = thresholds.tolist()
    return ExplainResult(list(sweep.chosen), result_words, result_scores, result_images, result_acts,
                         [t[k] for k in sweep.chosen], settings, groups)


def _groups(embeddings: torch.Tensor, weights: torch.Tensor, images: torch.Tensor, words: torch.Tensor,
            scoring: str, s: int, num_words: int, baseline, vocabulary: Vocabulary, filter_words: list[list[str]],
            filter_scores: list[list[float]]) -> list[list[dict]]:
    """Every filter's groups of top images (:mod:`lavise_fast.groups`), each with its own words: one
    group (the filter's words) unless its images split clearly and the two groups' best words differ
    (neither group's first word among the other's first two)."""
    live = weights > 0
    whole = [[{"images": images[row][live[row]].tolist(), "words": filter_words[row], "scores": filter_scores[row]}]
             for row in range(len(filter_words))]
    if not baseline.pairs:
        return whole
    centre = F.normalize(embeddings[live].sum(0), dim=0)
    labels = split_in_two(embeddings, weights, centre)
    split = (labels == 1).any(1).nonzero().flatten()
    if not len(split):
        return whole
    part_weights = torch.cat([torch.where(labels[split] == g, weights[split], 0.0) for g in range(2)])
    ranked = ranked_words(word_scores(embeddings[split].repeat(2, 1, 1), part_weights, words, scoring, s, baseline),
                          num_words)
    S = len(split)
    for j, row in enumerate(split.tolist()):
        pair = (ranked[j], ranked[S + j])
        firsts = [[w for w, _ in ranks[:2]] for ranks in pair]
        if not all(firsts) or firsts[0][0] in firsts[1] or firsts[1][0] in firsts[0]:
            continue  # a group's best word is among the other's two best: not two concepts
        whole[row] = [{"images": images[row][labels[row] == g].tolist(),
                       "words": [vocabulary.words[w] for w, _ in ranks], "scores": [v for _, v in ranks]}
                      for g, ranks in enumerate(pair)]
    return whole


@dataclass
class SweepPlan:
    """A sweep's model, layers and device, resolved once and passed down: ``layers`` {dotted name:
    module} in order, the ``explainers`` and ``heads`` (what embeds the pooled vectors) by layer name,
    the ``vocabulary`` and its unit ``words`` [V, D] on ``device``, and the ``shard`` of this rank
    (None outside a distributed sweep)."""

    model: torch.nn.Module
    device: torch.device
    layers: dict[str, torch.nn.Module]
    explainers: dict[str, Explainer]
    heads: dict[str, torch.nn.Module | OnnxHead]
    vocabulary: Vocabulary
    words: torch.Tensor
    shard: Shard | None


def _plan(model: torch.nn.Module, loader, explainer, layer, vocabulary: Vocabulary | None, device, head,
          distributed: bool, progress: bool) -> SweepPlan:
    """explain's arguments resolved: the device, every layer (looked up once), the explainers (trained
    and cached where none is given), the vocabulary checked against each, the heads."""
    shard = current_shard() if distributed else None
    device = model_device(model, device)
    model.eval()
    layers, explainers = _explainers_for(model, loader, explainer, layer, device, distributed, progress)
    names = list(explainers)
    if not isinstance(head, str) and len(names) > 1:
        raise InputError("a given OnnxHead scores one layer: pass head='onnx' to export one per layer")
    vocabulary = _vocabulary_for(explainers[names[0]], vocabulary)
    for name in names[1:]:
        explainers[name].check_vocabulary(vocabulary)
    heads = {name: expl.to(device).eval() if head == "torch" else _head_for(head, expl)
             for name, expl in explainers.items()}
    return SweepPlan(model, device, layers, explainers, heads, vocabulary, vocabulary.vectors.to(device), shard)


def _explainers_for(model, loader, explainer, layer, device, distributed,
                    progress) -> tuple[dict[str, torch.nn.Module], dict[str, Explainer]]:
    """({layer name: module}, {layer name: explainer}) from explain's ``explainer`` and ``layer``
    arguments, in order; every layer is looked up in ``model`` once, here."""
    specs = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not specs:
        raise InputError("layer must name at least one layer")
    modules: dict[str, torch.nn.Module] = {}

    def look_up(spec) -> str:
        if spec is None:  # the model's default layer, found on the loader's first image
            spec = default_layer(model, image_batch(next(iter(loader)))[:1].to(device))
        name, module = resolve_layer(model, spec)
        modules[name] = module
        return name

    if isinstance(explainer, Mapping):
        pairs = [(look_up(name), expl) for name, expl in explainer.items()]
    elif isinstance(explainer, (list, tuple)):
        pairs = [(look_up(expl.layer) if getattr(expl, "layer", "") else None, expl) for expl in explainer]
        if any(name is None for name, _ in pairs):
            raise InputError("each explainer of a list must know its layer (Explainer(layer=...)); or pass a dict "
                             "{layer name: explainer}")
    elif explainer is None or isinstance(explainer, Explainer):
        if explainer is not None and len(specs) > 1:
            raise InputError(f"one explainer explains one layer, and layer= names {len(specs)}: pass explainer= a "
                             "list (or a dict by layer name) with one explainer per layer, or None")
        pairs = []
        for spec in specs:
            if explainer is None:
                name = look_up(spec)
                expl = default_explainer(model, loader, layer=modules[name], device=device, distributed=distributed,
                                         progress=progress)
                pairs.append((name, expl))
            else:
                pairs.append((look_up(explainer.layer if spec is None else spec), explainer))
    else:
        raise InputTypeError(f"explainer must be an Explainer, a list or dict of them, or None; got "
                             f"{type(explainer).__name__}")
    if not all(isinstance(expl, Explainer) for _, expl in pairs):
        raise InputTypeError("explainer= must hold lavise_fast.Explainer objects")
    if layer is not None and not (explainer is None or isinstance(explainer, Explainer)):
        wanted = [look_up(spec) for spec in specs]
        if sorted(wanted) != sorted(name for name, _ in pairs):
            raise InputError(f"layer= names {wanted}, the explainers are for {[name for name, _ in pairs]}")
    explainers = dict(pairs)
    if len(explainers) != len(pairs):
        raise InputError(f"layers must not repeat, got {[name for name, _ in pairs]}")
    for name, expl in explainers.items():
        expl.check_compatible(name, expl.channels)
    return {name: modules[name] for name in explainers}, explainers


_MAX_TOP_IMAGES = 1 << 16


def _per_layer(value, names: list[str], many: bool, argument: str) -> dict:
    """{layer name: value for that layer} from a per-layer dict (several layers) or a plain value (one)."""
    if not many:
        if isinstance(value, Mapping):
            raise InputTypeError(f"{argument}= is a dict, which is for several layers; give the values for the one "
                                 "layer")
        return {names[0]: value}
    if value is None:
        return dict.fromkeys(names)
    if not isinstance(value, Mapping):
        raise InputTypeError(f"with several layers, {argument}= must be a dict {{layer name: values}}, got "
                        f"{type(value).__name__}")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise InputError(f"{argument}= names layers that are not explained: {unknown} (explained: {names})")
    return {name: value.get(name) for name in names}


def _checkpoint_fields(model, loader, explainers, vocabulary, filters_of, given_of, method, top_images, s, quantile,
                       head) -> dict:
    """What a checkpoint must match to be resumed (plain values; weights and words as SHA-1s)."""
    dataset = getattr(loader, "dataset", None)
    length = length_of(dataset) if dataset is not None else None
    length = length if length is not None else length_of(loader)
    return {
        "model": model_fingerprint(model), "layers": list(explainers), "dataset_length": length,
        "batch_size": getattr(loader, "batch_size", None), "method": method, "top_images": top_images,
        "words_per_image": s, "quantile": quantile,
        "filters": {name: None if f is None else [int(k) for k in f] for name, f in filters_of.items()},
        "thresholds": {name: None if t is None else digest(t) for name, t in given_of.items()},
        "explainers": {name: digest(expl.channels, expl.dim, expl.space, expl) for name, expl in explainers.items()},
        "vocabulary": digest(vocabulary.words, vocabulary.vectors),
        "head": head if isinstance(head, str) else str(head.path),
    }


def _merge_ranks(sweeps: dict[str, LayerSweep] | None, images: int, image_index: torch.Tensor,
                 start) -> tuple[dict[str, LayerSweep] | None, int]:
    """Every rank's layer states (image indices made global) merged in rank order; the images of all ranks."""
    states = None
    if sweeps is not None:
        for sweep in sweeps.values():
            sweep.settle()
        states = {name: sweep.state_dict(image_index) for name, sweep in sweeps.items()}
    gathered = all_gather((images, states), "the top images, sketches and embeddings")
    present = [states for _, states in gathered if states is not None]
    if not present:
        return None, 0
    merged = start({name: state["top_values"].shape[0] for name, state in present[0].items()})
    for i, states in enumerate(present):
        for name, state in states.items():
            merged[name].load_state_dict(state, merge=i > 0)
    return merged, sum(n for n, _ in gathered)


def _merge_pairs(sweeps: list[LayerSweep]) -> None:
    """Adds the pairs the other ranks scored in the re-run (disjoint images) to every rank's pairs."""
    for sweep in sweeps:
        sweep.settle()
    mine = {sweep.name: sweep.pairs.state_dict() for sweep in sweeps}
    gathered = all_gather(mine, "the embeddings of the re-run top images")
    for rank, rank_pairs in enumerate(gathered):
        if rank != current_shard().rank:
            for sweep in sweeps:
                sweep.pairs.load_state_dict(rank_pairs[sweep.name], sweep.device, merge=True)


def _chosen_filters(filters: Sequence[int] | None, channels: int) -> list[int]:
    if filters is None:
        return list(range(channels))
    chosen = [int(f) for f in filters]
    bad = [f for f in chosen if not 0 <= f < channels]
    if bad or not chosen:
        shown = f"{len(bad)} outside it ({', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})"
        raise InputError(f"filters must be indices in [0, {channels}), got {shown if bad else 'none'}")
    if len(set(chosen)) != len(chosen):
        raise InputError("filters must not repeat an index")
    return chosen


def _vocabulary_for(explainer: Explainer, vocabulary: Vocabulary | None) -> Vocabulary:
    """The given vocabulary (checked against the explainer), or the entities in the default space."""
    if vocabulary is None:
        space = semantics.default_space()
        if explainer.space and explainer.space != space.name:
            raise InputError(f"the explainer was trained in the word space {explainer.space!r}: pass vocabulary= "
                             f"(a lavise_fast.Vocabulary in that space); the default vocabulary is in {space.name!r}")
        return Vocabulary.from_words(vocabularies.entities(), space)
    explainer.check_vocabulary(vocabulary)
    return vocabulary


def _head_for(head: str | OnnxHead, explainer: Explainer) -> OnnxHead:
    """explain's ``head="onnx"`` (the explainer exported to a temporary file) or a given vocabulary-free
    OnnxHead, checked against the explainer."""
    if head == "onnx":
        with tempfile.TemporaryDirectory(prefix="lavise_fast_onnx_") as tmp:
            return OnnxHead(export_onnx(explainer, Path(tmp) / "head.onnx"))
    if not isinstance(head, OnnxHead):
        raise InputTypeError(f"head must be 'torch', 'onnx' or a lavise_fast.OnnxHead, got {type(head).__name__}")
    if head.fused:
        raise InputError(f"the ONNX head {head.path} is fused with a vocabulary and gives each image's best words "
                         "only; explain scores every word against the layer's baseline and needs the embeddings: "
                         "export the head without vocabulary= (export_onnx(explainer, path))")
    explainer.check_compatible(head.layer or explainer.layer, head.channels, head.space or None)
    if head.dim != explainer.dim:
        raise InputError(f"the ONNX head {head.path} embeds into {head.dim} dimensions, the explainer into "
                         f"{explainer.dim}")
    return head


def _rerun_top_images(sweeps: list[LayerSweep], loader, tap, thresholds: dict[str, torch.Tensor], batch_size: int,
                      device, progress, image_index: torch.Tensor | None = None) -> None:
    """``activation`` without given thresholds and ``image``: runs the model again on the union of
    the chosen filters' top images (those with a positive maximum) of every layer in ``sweeps``,
    batched, and scores their pairs. ``image_index`` [n]: the global indices of the images this
    rank's ``loader`` yields; only those are re-run here."""
    plans = []
    for sweep in sweeps:
        idx, val = sweep.tops.indices[sweep.chosen], sweep.tops.values[sweep.chosen]
        live = (idx >= 0) & (val > 0)
        filt = torch.tensor(sweep.chosen, device=idx.device)[:, None].expand_as(idx)[live]
        plans.append((sweep, filt, idx[live], val[live]))
    union = torch.tensor(sorted(set(torch.cat([plan[2] for plan in plans]).tolist())), dtype=torch.int64)
    if image_index is not None:
        union = union[torch.isin(union, image_index)]
        positions = torch.searchsorted(image_index, union)
    else:
        positions = union
    if not len(union):
        return
    total = math.ceil(len(union) / batch_size)
    methods = sorted({sweep.method for sweep in sweeps})
    for local, images in tqdm(images_at(loader, positions.tolist(), batch_size), total=total,
                              desc=f"re-running top images ({', '.join(methods)})", disable=not progress):
        glob = (local if image_index is None else image_index[local]).to(device)
        images = images.to(device)
        features = tap(images)
        for sweep, filt, image_of, weight_of in plans:
            pair = torch.isin(image_of, glob).nonzero().flatten()
            rows = torch.searchsorted(glob, image_of[pair])
            step = batch_size if sweep.method == "image" else sweep.pairs.chunk_rows
            for start in range(0, len(pair), step):
                part = pair[start : start + step]
                r = rows[start : start + step]
                t = thresholds[sweep.name]
                if sweep.method == "image":
                    z = _masked_image_features(tap, sweep.name, images, features[sweep.name], r, filt[part], t)
                else:
                    z = ops.attention_pool(features[sweep.name], r, filt[part], mode="activation", thresholds=t)
                sweep.pairs.add(filt[part], image_of[part], weight_of[part], z)


def _report_non_finite(sweep: LayerSweep) -> None:
    nan = sweep.quantiles.nan_count
    if nan.sum() > 0:
        bad = nan.nonzero().flatten().tolist()
        warnings.warn(f"{int(nan.sum())} activations of {len(bad)} filter(s) of {sweep.name!r} were NaN and were "
                      f"ignored (filters {bad[:10]}{' ...' if len(bad) > 10 else ''}); filters with no finite "
                      "activation get no top images and no words", UserWarning, stacklevel=4)
    if sweep.pairs.non_finite:
        warnings.warn(f"{sweep.pairs.non_finite} (filter, image) pair(s) of {sweep.name!r} gave a non-finite "
                      "embedding and were left out", UserWarning, stacklevel=4)
