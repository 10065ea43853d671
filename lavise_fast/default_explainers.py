"""The explainer that ``explain(model, loader)`` uses when none is given.

It is trained on the embedded reference world in the default word space and cached per model, layer
and recipe.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lavise_fast.cache import cache_dir
from lavise_fast.data.world import ConceptWorld
from lavise_fast.distributed import all_gather
from lavise_fast.explainer import FORMAT, Explainer
from lavise_fast.grids import layout_override
from lavise_fast.hashing import model_fingerprint
from lavise_fast.layers import default_layer, model_device, resolve_layer
from lavise_fast.loaders import image_batch
from lavise_fast.semantics import default_space
from lavise_fast.training import train_explainer

__all__ = ["default_explainer", "RECIPE"]

RECIPE = 2  # how the default explainer is trained (2: concept families, regions with several words, margin 0.1,
# unit inputs); part of its cache key, so that a cached one of an older recipe is not reused
log = logging.getLogger(__name__)


def default_explainer(
    model: nn.Module,
    loader=None,
    *,
    layer: str | nn.Module | None = None,
    world_size: int = 1000,
    epochs: int = 10,
    device: torch.device | str | None = None,
    distributed: bool = False,
    progress: bool = True,
) -> Explainer:
    """The explainer that ``explain(model, loader)`` uses when none is given: trained on the
    embedded reference set (``lavise_fast.data.ConceptWorld(world_size, image_size=224, seed=0)``)
    in the default word space (:func:`lavise_fast.semantics.default_space`), every concept word
    seen (``anno_rate=1``), and cached under :func:`cache_dir` keyed by the model's weights, the
    layer and these settings, so that the second call costs a file read.

    ``layer`` defaults to the last 4-D layer of ``model`` (``lavise_fast.layers.default_layer``),
    found on the first image batch of ``loader`` (a reference image when there is no loader).

    Args:
        model: the frozen network whose layer is explained.
        loader: the target loader; only its first image batch is read, to find the default layer; None: a
            ConceptWorld image stands in.
        layer: the layer to explain, a dotted module name or the module; None: the default layer.
        world_size: the number of ConceptWorld scenes to train on (part of the cache key).
        epochs: training epochs (part of the cache key).
        device: where the model runs (it must already be there); None: the device of its parameters.
        distributed: train as one rank of an initialised process group: the ranks share the feature
            pass, and they all use the cached explainer or all train.
        progress: show tqdm progress bars while training.
    """
    world = ConceptWorld(size=world_size, image_size=224, seed=0)
    if layer is None:
        sample = None
        if loader is not None:
            sample = image_batch(next(iter(loader)))[:1]
        sample = world[0][0][None] if sample is None else sample
        dev = model_device(model, device)
        layer = default_layer(model, sample.to(dev))
    name, module = resolve_layer(model, layer)
    space = default_space()
    override = layout_override(module)  # a layout set by hand changes the explainer
    key = model_fingerprint(model, name, space.name, world_size, epochs, FORMAT, RECIPE,
                            *([override] if override is not None else []))
    path = cache_dir() / "explainers" / f"{key}.pt"
    cached = None
    if path.is_file():
        try:
            cached = Explainer.load(path)
        except ValueError as error:
            log.warning("ignoring the unreadable cached explainer %s: %s", path, error)
    if distributed and not all(all_gather(cached is not None, "the cached explainer's presence")):
        cached = None  # every rank trains (sharing the feature pass), or none does
    if cached is not None:
        return cached
    expl = train_explainer(model, world, module, space, anno_rate=1.0, epochs=epochs, device=device,
                           distributed=distributed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    expl.save(path)
    return expl
