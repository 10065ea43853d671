"""The report: one self-contained HTML file that shows what every filter of a layer is about.

``write_report(result, "report.html", images=target_set, model=model, evaluation=scores)`` writes
a page that needs no server and no network (images are embedded as base64 PNG, the charts are
inline SVG and HTML, the script is inline):

- a summary: the settings of the run, the distribution of concepts over filters (how many filters
  each word describes), and, when ``evaluation`` (the dict of :func:`lavise_fast.evaluate`) is
  given, the recall@5/10/20 plot for all, seen and unseen concepts and the distribution of the
  Network-Dissection labels;
- one card per filter: its words with their scores, its threshold, its top activation, its
  Network-Dissection label and IoU (with ``evaluation``), and its first ``max_images`` top images
  (with ``images``), each with the filter's activation map overlaid as a heatmap and the region
  above the filter's threshold outlined (with ``model``);
- a search box (every whitespace-separated term must occur in one of the filter's words or its ND label,
  or be its number) and sorting (filter index, top score, ND IoU).

The page stays usable for wide layers (2,048 cards: cards off screen are not laid out); its size is
mostly the pictures, about 10-25 kB each at 96 px, so ``max_images`` x filters sets it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.evaluation import Evaluation
from lavise_fast.files import atomic_write
from lavise_fast.report.page import page
from lavise_fast.report.pictures import colourmap, display, heatmap_overlay, pictures_for
from lavise_fast.result import ExplainResult, checked_result

__all__ = ["write_report", "heatmap_overlay", "colourmap", "display"]


def _triple(name: str, value) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or (name == "std" and any(not v > 0 for v in values)):
        raise InputError(f"{name} must be 3 floats{' (positive)' if name == 'std' else ''}, got {value!r}")
    return values  # type: ignore[return-value]


def write_report(
    result: ExplainResult,
    path: str | os.PathLike,
    *,
    images=None,
    model: torch.nn.Module | None = None,
    evaluation: Evaluation | Mapping | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_images: int = 8,
    thumbnail: int = 96,
    title: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Writes the report of ``result`` to ``path`` as one self-contained HTML file (atomically: a temporary
    file, then a rename) and returns the path.

    Args:
        result: what :func:`lavise_fast.explain` returned (or :meth:`ExplainResult.load` read).
        path: the HTML file to write.
        images: the target images, indexable by the result's image indices (positions in the explain
            loader's order), each item an image tensor [3, H, W] normalised with ``mean``/``std`` or a
            tuple/list starting with one (a ``ConceptWorld``, any reference dataset, a list of tensors).
            Without it the report shows words, scores, thresholds and top activations, no pictures.
        model: the explained model. With ``images``, it is run again (batched, stopped at
            ``result.settings["layer"]``) on the union of the shown top images, and each picture gets the
            filter's activation map as a heatmap and the region above the filter's threshold outlined.
        evaluation: what :func:`lavise_fast.evaluate` returned (or :meth:`Evaluation.load` read): adds the
            recall plot and each filter's Network-Dissection label and IoU (``evaluation["dissection"][str(filter)]``).
        mean: the per-channel mean of ``images``' normalisation, undone for display (``(0, 0, 0)`` for
            images in [0, 1]).
        std: its per-channel deviation (``(1, 1, 1)`` for images in [0, 1]).
        max_images: the top images shown per filter (0: none).
        thumbnail: their longest side in pixels.
        title: the page title (default: the layer's name).
        device: where the model runs (default: its own).
        progress: a tqdm bar while the pictures are rendered.
    """
    checked_result(result)
    for name, value, low in (("max_images", max_images, 0), ("thumbnail", thumbnail, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}")
    if evaluation is not None and not isinstance(evaluation, Mapping):
        raise InputTypeError(f"evaluation must be the dict of lavise_fast.evaluate (an Evaluation or its JSON "
                             f"object), got {type(evaluation).__name__}")
    if model is not None and images is None:
        raise InputError("model= draws the activation maps over the top images, so it needs images= too "
                         "(the target set the result was explained on)")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mean, std = _triple("mean", mean), _triple("std", std)
    path = Path(path)
    if path.is_dir():
        raise InputError(f"path must be a file name, {path} is a directory")
    layer = result.settings.layer
    if title is None:
        title = f"LaViSE report: {layer}" if layer else "LaViSE report"
    pictures: dict[tuple[int, int], str] = {}
    if images is not None and max_images > 0:
        pictures = pictures_for(result, images, model, mean, std, int(max_images), int(thumbnail), device, progress)
    text = page(result, pictures, evaluation, str(title), int(max_images), int(thumbnail), model is not None)
    return atomic_write(path, text)


def _report(self: ExplainResult, path: str | os.PathLike, **kwargs) -> Path:
    """Writes the self-contained HTML report of this result to ``path``; the keywords (images=, model=,
    evaluation=, ...) are those of :func:`lavise_fast.report.write_report`."""
    return write_report(self, path, **kwargs)


ExplainResult.report = _report  # the result's method; the report depends on the result, not the other way
