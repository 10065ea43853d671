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

import base64
import contextlib
import html
import io
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavise_fast.diagnostics import filter_flags
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import atomic_write
from lavise_fast.layers import LayerFeatures, model_device

if TYPE_CHECKING:
    from lavise_fast.explain import ExplainResult

__all__ = ["write_report", "heatmap_overlay"]

_BATCH = 32  # images per forward pass when the model re-runs the shown top images
_PAIRS = 256  # (filter, image) pictures drawn at once
_TOP_CONCEPTS = 30  # bars in the distribution of concepts over filters
_RECALL_KS = (5, 10, 20)

# Anchors of the heatmap's colour map (a "jet"-like ramp: dark blue, blue, cyan, yellow, red, dark red).
_COLOURMAP = torch.tensor(
    [[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
)
_HEAT_ALPHA = (0.2, 0.7)  # opacity of the heatmap where the activation is 0 and where it reaches the scale
_OUTLINE = (1.0, 1.0, 1.0)  # colour of the outline of the thresholded region


# ---------------------------------------------------------------------------------------- pictures


def _colourmap(values: torch.Tensor) -> torch.Tensor:
    """values [...] in [0, 1] -> RGB [..., 3] in [0, 1], linear between the anchors of ``_COLOURMAP``."""
    steps = len(_COLOURMAP) - 1
    x = values.clamp(0.0, 1.0) * steps
    low = x.floor().long().clamp(max=steps - 1)
    frac = (x - low)[..., None]
    return _COLOURMAP[low] * (1 - frac) + _COLOURMAP[low + 1] * frac


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """The boundary of ``mask`` [N, H, W] (bool): the pixels of the mask with a 4- or 8-neighbour
    outside it; beyond the image counts as outside, so a region touching the border is closed."""
    outside = F.pad((~mask).float()[:, None], (1, 1, 1, 1), value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=3, stride=1)[:, 0] > 0
    return mask & near_outside


def heatmap_overlay(
    image: torch.Tensor, activation: torch.Tensor, threshold: float | torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """Images with activation maps overlaid, as the report draws them.

    Args:
        image: [3, H, W], or [M, 3, H, W] one per map, in [0, 1] (the displayed image: unnormalised, resized).
        activation: [h, w] or [M, h, w], the filter's map(s) on that image at feature resolution; they are
            upsampled bilinearly (``align_corners=False``) to H x W.
        threshold: the filter's threshold t (scalar or [M]): the region ``upsampled > t`` is outlined.
        scale: the activation drawn with full heat (scalar or [M]), e.g. the filter's top activation;
            ``activation / scale`` is clipped to [0, 1] and coloured (dark blue -> red) with an opacity
            rising with it (0.2 to 0.7), so that an inactive region mostly shows the image (``scale <= 0``:
            all inactive).

    Returns:
        [M, 3, H, W] (or [3, H, W] for one map and one image) float in [0, 1], on the CPU.
    """
    single = activation.dim() == 2 and image.dim() == 3
    maps = activation[None] if activation.dim() == 2 else activation
    pictures = image[None] if image.dim() == 3 else image
    if maps.dim() != 3 or pictures.dim() != 4 or pictures.shape[1] != 3 or len(pictures) not in (1, len(maps)):
        raise InputError(f"image must be [3, H, W] or [M, 3, H, W] and activation [h, w] or [M, h, w], got "
                         f"{tuple(image.shape)} and {tuple(activation.shape)}")
    M = maps.shape[0]
    threshold = torch.as_tensor(threshold, dtype=torch.float32).flatten().cpu().expand(M)
    scale = torch.as_tensor(scale, dtype=torch.float32).flatten().cpu().expand(M)
    up = F.interpolate(maps[:, None].float(), size=tuple(pictures.shape[-2:]), mode="bilinear", align_corners=False)
    up = up[:, 0].cpu()
    positive = scale > 0
    value = up / torch.where(positive, scale, torch.ones_like(scale))[:, None, None]
    value = torch.nan_to_num(value * positive[:, None, None], nan=0.0).clamp(0.0, 1.0)
    heat = _colourmap(value).permute(0, 3, 1, 2)  # [M, 3, H, W]
    alpha = _HEAT_ALPHA[0] + (_HEAT_ALPHA[1] - _HEAT_ALPHA[0]) * value[:, None]
    out = pictures.float().cpu() * (1 - alpha) + heat * alpha
    edge = _outline(up > threshold[:, None, None])[:, None]
    out = torch.where(edge, torch.tensor(_OUTLINE)[None, :, None, None], out)
    return out[0] if single else out


def _pngs(pictures: torch.Tensor) -> list[str]:
    """[M, 3, H, W] in [0, 1] -> M ``data:image/png;base64,...`` URLs."""
    arrays = (pictures.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    urls = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array, "RGB").save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls


def _image_at(images, index: int) -> torch.Tensor:
    """The image tensor [3, H, W] at position ``index`` of ``images`` (an item or its first element)."""
    try:
        item = images[index]
    except TypeError as error:
        if hasattr(images, "__getitem__"):
            raise
        hint = ": pass its .dataset" if hasattr(images, "dataset") else ""
        raise InputTypeError(f"images must be indexable by image position (a dataset, a list or a tensor of images), "
                        f"got {type(images).__name__}{hint}") from error
    except (IndexError, KeyError) as error:
        size = f" (it holds {len(images)})" if hasattr(images, "__len__") else ""
        raise InputError(f"images has no item {index}{size}: images must be indexable by the result's image "
                         f"indices, i.e. the target set the explain loader read, in its order") from error
    if isinstance(item, (tuple, list)) and len(item):
        item = item[0]
    if not torch.is_tensor(item) or item.dim() != 3 or item.shape[0] != 3 or not item.is_floating_point():
        found = f"{item.dtype} tensor of shape {tuple(item.shape)}" if torch.is_tensor(item) else type(item).__name__
        raise InputTypeError(f"images[{index}] must be a float image tensor [3, H, W] (or a tuple starting with one), "
                        f"got {found}")
    return item


def _display(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, thumbnail: int) -> torch.Tensor:
    """Normalised images [N, 3, H, W] -> the displayed pictures [N, 3, h, w] in [0, 1]: longest side
    ``thumbnail``, or the image's own when smaller (the page scales those up)."""
    pictures = (images.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    H, W = pictures.shape[-2:]
    side = min(thumbnail, max(H, W))
    size = (max(1, round(H * side / max(H, W))), max(1, round(W * side / max(H, W))))
    if size != (H, W):
        pictures = F.interpolate(pictures, size=size, mode="bilinear", align_corners=False, antialias=True)
    return pictures.clamp(0.0, 1.0)


def _groups(images, indices: list[int]) -> list[tuple[list[int], torch.Tensor]]:
    """``images`` at ``indices``, stacked per image shape: [(indices, images [n, 3, H, W])]."""
    by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for index in indices:
        image = _image_at(images, index)
        by_shape.setdefault(tuple(image.shape), []).append((index, image))
    return [([i for i, _ in items], torch.stack([x for _, x in items])) for items in by_shape.values()]


@torch.no_grad()
def _pictures(result: ExplainResult, images, model, mean, std, max_images: int, thumbnail: int, device,
              progress: bool) -> dict[tuple[int, int], str]:
    """The embedded pictures: {(position of the filter in the result, image index): data URL} for the first
    ``max_images`` top images of every filter; with ``model``, with the filter's heatmap and outline."""
    wanted: dict[int, list[int]] = {}  # image index -> positions of the filters that show it
    for pos, tops in enumerate(result.top_images):
        for image in tops[:max_images]:
            wanted.setdefault(int(image), []).append(pos)
    union = sorted(wanted)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    out: dict[tuple[int, int], str] = {}
    with contextlib.ExitStack() as stack:
        layer = tap = None
        if model is not None:
            layer = result.settings.get("layer") if result.settings else None
            if not layer:
                raise InputError("result.settings has no 'layer': the report cannot re-run the model without it")
            device = model_device(model, device)
            model.eval()
            tap = stack.enter_context(LayerFeatures(model, [layer]))
            channels = torch.tensor(result.filters)
            thresholds = torch.tensor(result.thresholds, dtype=torch.float32)
            scales = torch.tensor([max((a for a in acts if math.isfinite(a)), default=0.0)
                                   for acts in result.top_activations], dtype=torch.float32)
        bar = stack.enter_context(tqdm(total=len(union), desc="report images", unit="image", disable=not progress))
        for start in range(0, len(union), _BATCH):
            for indices, batch in _groups(images, union[start : start + _BATCH]):
                shown = _display(batch, mean_t, std_t, thumbnail)
                if tap is None:
                    for index, url in zip(indices, _pngs(shown), strict=True):
                        out.update({(pos, index): url for pos in wanted[index]})
                    bar.update(len(indices))
                    continue
                features = tap(batch.to(device))[layer]
                if features.shape[1] <= int(channels.max()):
                    raise InputError(f"layer {layer!r} of the model has {features.shape[1]} filters, but the "
                                     f"result explains filter {int(channels.max())}: is it the explained model?")
                all_rows = torch.tensor([row for row, index in enumerate(indices) for _ in wanted[index]])
                all_positions = torch.tensor([pos for index in indices for pos in wanted[index]])
                for first in range(0, len(all_rows), _PAIRS):  # bounded memory however many filters share
                    rows, positions = all_rows[first : first + _PAIRS], all_positions[first : first + _PAIRS]
                    maps = features[rows.to(features.device), channels[positions].to(features.device)]
                    drawn = heatmap_overlay(shown[rows], maps, thresholds[positions], scales[positions])
                    keys = [(pos, indices[row]) for row, pos in zip(rows.tolist(), positions.tolist(), strict=True)]
                    out.update(zip(keys, _pngs(drawn), strict=True))
                bar.update(len(indices))
    return out


# ---------------------------------------------------------------------------------------- text


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _attr_number(value: Any) -> str:
    """A number for a data- attribute that the page's script parses ("" for none or non-finite)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(x) if math.isfinite(x) else ""


def _dissection(evaluation: Mapping | None, k: int) -> Mapping | None:
    if not evaluation:
        return None
    table = evaluation.get("dissection") or {}
    entry = table.get(str(k), table.get(k))
    return entry if isinstance(entry, Mapping) else None


def _bars(rows: list[tuple[str, int, int]], total: int, listed_label: str) -> str:
    """An HTML bar chart: per row (word, main count, secondary count) two overlaid bars scaled to the
    largest count; each row is a button that searches the filters for its word."""
    if not rows:
        return '<p class="muted">No words.</p>'
    top = max(max(a, b) for _, a, b in rows) or 1
    lines = ['<div class="bars">']
    for word, main, listed in rows:
        lines.append(
            f'<button type="button" class="bar-row" data-word="{_e(word)}" title="show the filters described by '
            f'{_e(word)}"><span class="bar-label">{_e(word)}</span><span class="bar-track">'
            f'<span class="bar-listed" style="width:{100 * listed / top:.1f}%"></span>'
            f'<span class="bar-main" style="width:{100 * main / top:.1f}%"></span></span>'
            f'<span class="bar-count">{main}<span class="muted"> / {listed}</span></span></button>'
        )
    lines.append("</div>")
    lines.append(f'<p class="muted legend"><span class="key key-main"></span> filters whose top word it is '
                 f'<span class="key key-listed"></span> {listed_label} (of {total} filters)</p>')
    return "\n".join(lines)


def _concept_distribution(result: ExplainResult) -> str:
    first = Counter(words[0] for words in result.words if words)
    listed = Counter(w for words in result.words for w in dict.fromkeys(words))
    rows = sorted(listed, key=lambda w: (-first[w], -listed[w], w))[:_TOP_CONCEPTS]
    distinct = len(first)
    note = (f'<p class="muted">{distinct} distinct top word{"s" if distinct != 1 else ""} over '
            f"{len(result.filters)} filters; the {len(rows)} most frequent:</p>")
    return note + _bars([(w, first[w], listed[w]) for w in rows], len(result.filters),
                        "filters that list it among their words")


def _dissection_distribution(result: ExplainResult, evaluation: Mapping) -> str:
    labels = Counter()
    for k in result.filters:
        entry = _dissection(evaluation, k)
        if entry and entry.get("concept"):
            labels[str(entry["concept"])] += 1
    rows = sorted(labels, key=lambda w: (-labels[w], w))[:_TOP_CONCEPTS]
    return _bars([(w, labels[w], labels[w]) for w in rows], len(result.filters), "(the same count)")


def _recall_svg(evaluation: Mapping) -> str:
    """Grouped bars: recall@5/10/20 for all, seen and unseen concepts, on a 0..1 axis."""
    series = [("all", evaluation, "#4e79a7"), ("seen", evaluation.get("seen") or {}, "#59a14f"),
              ("unseen", evaluation.get("unseen") or {}, "#e15759")]
    width, height, left, bottom, top = 420, 230, 40, 40, 14
    plot_h = height - bottom - top
    group_w = (width - left - 10) / len(_RECALL_KS)
    bar_w = group_w / (len(series) + 1)
    parts = [f'<svg class="recall" role="img" aria-label="recall at 5, 10 and 20" viewBox="0 0 {width} {height}">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for g, k in enumerate(_RECALL_KS):
        x0 = left + g * group_w + bar_w / 2
        for s, (name, values, colour) in enumerate(series):
            value = values.get(f"recall@{k}") if isinstance(values, Mapping) else None
            x = x0 + s * bar_w
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = math.nan
            if math.isfinite(v):
                h = plot_h * min(max(v, 0.0), 1.0)
                parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                             f'fill="{colour}"><title>{_e(name)} recall@{k}: {_fmt(v, 3)}</title></rect>'
                             f'<text x="{x + (bar_w - 2) / 2:.1f}" y="{top + plot_h - h - 3:.1f}" '
                             f'text-anchor="middle" class="value">{_fmt(v, 2)}</text>')
            else:
                parts.append(f'<text x="{x + (bar_w - 2) / 2:.1f}" y="{top + plot_h - 3:.1f}" text-anchor="middle" '
                             f'class="value">n/a</text>')
        parts.append(f'<text x="{left + (g + 0.5) * group_w:.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle">recall@{k}</text>')
    for s, (name, _, colour) in enumerate(series):
        x = left + s * 90
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{height - 5}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _evaluation_table(evaluation: Mapping) -> str:
    rows = [("pairs (image, filter)", evaluation.get("pairs")),
            ("IoU threshold", evaluation.get("iou_threshold")),
            ("unseen words", evaluation.get("unseen_words")),
            ("share of unseen words produced", evaluation.get("unseen_produced"))]
    for name in ("all", "seen", "unseen"):
        values = evaluation if name == "all" else evaluation.get(name) or {}
        if isinstance(values, Mapping):
            rows.append((f"recall@5 / 10 / 20 ({name})",
                         " / ".join(_fmt(values.get(f"recall@{k}"), 3) for k in _RECALL_KS)))
            beside = [(label, values.get(key)) for key, label in (("chance", "chance"), ("shuffled", "shuffled lists"),
                                                                 ("gain", "gain over shuffled"))]
            if all(isinstance(v, Mapping) for _, v in beside):
                rows.append((f"recall@10 ({name}): " + " / ".join(label for label, _ in beside),
                             " / ".join(_fmt(v.get("recall@10"), 3) for _, v in beside)))
    for name, rank in (evaluation.get("rank") or {}).items():
        if isinstance(rank, Mapping):
            rows.append((f"mean rank of {name} ground-truth words among {rank.get('words')} {name} words / chance",
                         f"{_fmt(rank.get('mean'), 3)} / {_fmt(rank.get('chance'), 3)}"))
    for name, entry in (evaluation.get("dissection_in_top") or {}).items():
        if isinstance(entry, Mapping):
            rows.append((f"ND label among the first 1 / 3 / 5 words ({name}: {entry.get('filters')} filters)",
                         " / ".join(_fmt(entry.get(n), 3) for n in ("1", "3", "5"))))
    sim = evaluation.get("simulation")
    if isinstance(sim, Mapping):
        rows.append(("simulation score: words / ND labels / random words",
                     " / ".join(_fmt(sim.get(key), 3) for key in ("words", "dissection", "random"))))
    return _table(rows)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value if isinstance(value, str) else _fmt(value))}</td></tr>"
                   for name, value in rows)
    return f'<table class="kv">{body}</table>'


_SETTINGS = (("layer", "layer"), ("method", "method"), ("top_images", "top images per filter (P)"),
             ("words_per_image", "words per image (s)"), ("num_words", "words kept per filter"),
             ("quantile", "threshold quantile"), ("thresholds_given", "thresholds given"),
             ("images", "images"), ("space", "word space"), ("vocabulary_size", "vocabulary size"))


def _settings_table(result: ExplainResult) -> str:
    settings = result.settings or {}
    described = sum(1 for words in result.words if words)
    rows: list[tuple[str, Any]] = [("filters explained", len(result.filters)), ("filters with words", described)]
    rows += [(label, settings[key]) for key, label in _SETTINGS if key in settings]
    for key in ("seen", "unseen"):
        if isinstance(settings.get(key), Sequence) and settings[key]:
            rows.append((f"{key} words (explainer)", len(settings[key])))
    known = {key for key, _ in _SETTINGS} | {"seen", "unseen"}
    for key, value in settings.items():
        if key not in known and isinstance(value, (str, int, float, bool, type(None))):
            rows.append((str(key), value))
    return _table(rows)


def _word_list(words: list[str], scores: list[float], unseen: set[str]) -> str:
    """The words as bars of their scores, relative to the best (scores <= 0 give empty bars)."""
    best = max((s for s in scores if math.isfinite(s)), default=0.0)
    best = best if best > 0 else 1.0
    items = []
    for word, score in zip(words, scores, strict=True):
        width = 100 * max(0.0, min(1.0, score / best)) if math.isfinite(score) else 0.0
        if word in unseen:
            label = f'<span class="w unseen" title="{_e(word)} (unseen in training)">{_e(word)}</span>'
        else:
            label = f'<span class="w" title="{_e(word)}">{_e(word)}</span>'
        items.append(f'<li>{label}<span class="score-track">'
                     f'<span class="score" style="width:{width:.1f}%"></span></span>'
                     f'<span class="s">{_fmt(score)}</span></li>')
    return f'<ol class="words">{"".join(items)}</ol>'


_FLAG_TITLES = {
    "generic": "its first word is among the first 5 words of most filters: it says little about this filter",
    "undecided": "its two best words score the same, or no word scores above the layer's baseline",
    "polysemantic": "its top images form two groups that evoke different words (listed below)",
}


def _card(result: ExplainResult, pos: int, pictures: dict[tuple[int, int], str], evaluation: Mapping | None,
          unseen: set[str], max_images: int, thumbnail: int, flags: list[str]) -> str:
    k = result.filters[pos]
    words, scores = result.words[pos], result.scores[pos]
    tops, acts = result.top_images[pos], result.top_activations[pos]
    threshold = result.thresholds[pos]
    top_score = scores[0] if scores else None
    nd = _dissection(evaluation, k)
    search = [w.lower() for w in words]
    search += [w.lower() for group in (result.groups[pos] if result.groups else [])[1:] for w in group["words"]]
    if nd and nd.get("concept"):
        search.append(str(nd["concept"]).lower())
    attrs = (f'id="filter-{k}" data-filter="{k}" data-score="{_attr_number(top_score)}" '
             f'data-iou="{_attr_number(nd.get("iou") if nd else None)}" data-words="{_e("|".join(search))}"')
    meta = [f'threshold <b>{_fmt(threshold)}</b>', f'top activation <b>{_fmt(acts[0] if acts else None)}</b>']
    if evaluation is not None:
        if nd:
            meta.append(f'ND <b class="nd">{_e(nd.get("concept", "n/a"))}</b> IoU <b>{_fmt(nd.get("iou"), 3)}</b>')
        else:
            meta.append('ND <span class="muted">none</span>')
        simulation = ((evaluation.get("simulation") or {}).get("per_filter") or {}).get(str(k))
        if simulation is not None:
            meta.append(f'<span title="correlation over the images between the filter\'s max activation and how '
                        f'many of its first words the image holds">simulation <b class="sim">'
                        f'{_fmt(simulation, 3)}</b></span>')
    badges = "".join(f' <span class="flag flag-{_e(f)}" title="{_e(_FLAG_TITLES[f])}">{_e(f)}</span>' for f in flags)
    parts = [f'<article class="card" {attrs}>', f'<h3>filter {k}{badges}</h3>',
             f'<p class="meta">{" · ".join(meta)}</p>']
    groups = result.groups[pos] if result.groups else []
    if len(groups) > 1:
        for g, group in enumerate(groups):
            parts.append(f'<p class="group">group {g + 1}: {len(group["images"])} top images '
                         f'<span class="muted">({_e(", ".join(f"#{i}" for i in group["images"][:8]))}'
                         f'{" ..." if len(group["images"]) > 8 else ""})</span></p>')
            parts.append(_word_list(group["words"], group["scores"], unseen))
    elif words:
        parts.append(_word_list(words, scores, unseen))
    else:
        parts.append('<p class="muted">No words (no top image with a positive activation voted).</p>')
    shown = [(i, a) for i, a in zip(tops[:max_images], acts[:max_images], strict=True) if (pos, i) in pictures]
    if shown:
        figures = "".join(f'<figure><img src="{pictures[pos, i]}" alt="image {i}" width="{thumbnail}" '
                          f'height="{thumbnail}"><figcaption>#{i} · {_fmt(a, 3)}</figcaption></figure>'
                          for i, a in shown)
        parts.append(f'<div class="thumbs">{figures}</div>')
    if tops:
        listed = ", ".join(f"#{i} ({_fmt(a, 3)})" for i, a in zip(tops, acts, strict=True))
        parts.append(f'<details><summary>{len(tops)} top images</summary><p class="tops">{_e(listed)}</p></details>')
    else:
        parts.append('<p class="muted">No top images.</p>')
    parts.append("</article>")
    return "\n".join(parts)


_STYLE = """
:root { --fg: #1d2330; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; --bg: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
         padding: 8px 20px; display: flex; gap: 24px; align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0; }
nav a { color: var(--accent); margin-right: 12px; text-decoration: none; }
main { padding: 12px 20px 40px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
h3 { font-size: 14px; margin: 0 0 6px; }
.muted { color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
table.kv { border-collapse: collapse; }
table.kv th { text-align: left; font-weight: normal; color: var(--muted); padding: 2px 12px 2px 0; }
table.kv td { padding: 2px 0; }
.bars { display: flex; flex-direction: column; gap: 2px; }
.bar-row { display: grid; grid-template-columns: 120px 1fr 70px; gap: 8px; align-items: center; border: 0;
           background: none; padding: 1px 0; font: inherit; text-align: left; cursor: pointer; }
.bar-row:hover .bar-label { color: var(--accent); text-decoration: underline; }
.bar-label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar-track { position: relative; height: 12px; }
.bar-listed, .bar-main { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 2px; }
.bar-listed, .key-listed { background: #bfd3f2; }
.bar-main, .key-main { background: var(--accent); }
.key { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; }
.legend { font-size: 12px; }
svg.recall { display: block; width: 100%; max-width: 420px; height: auto; }
svg.recall text { font-size: 11px; fill: var(--fg); }
svg.recall text.value { font-size: 10px; fill: var(--muted); }
svg.recall line.grid { stroke: var(--line); }
.toolbar { position: sticky; top: 41px; z-index: 1; background: var(--bg); padding: 8px 0; display: flex; gap: 16px;
           align-items: center; flex-wrap: wrap; }
#search { width: 320px; padding: 6px 8px; border: 1px solid #cbd5e1; border-radius: 6px; font: inherit; }
select { font: inherit; padding: 4px; }
#cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; min-width: 0;
        content-visibility: auto; contain-intrinsic-size: auto 260px; }
.card[hidden] { display: none; }
.meta { margin: 0 0 6px; color: var(--muted); font-size: 12px; }
.meta b { color: var(--fg); font-weight: 600; }
ol.words { margin: 0 0 6px; padding-left: 22px; }
ol.words li { display: grid; grid-template-columns: minmax(0, 1.2fr) 1fr 56px; gap: 6px; align-items: center; }
.w { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.w.unseen { font-style: italic; color: #b45309; }
.score-track { height: 8px; background: #f1f5f9; border-radius: 2px; }
.flag { font-size: 11px; font-weight: normal; border-radius: 3px; padding: 0 4px; margin-left: 4px; }
.flag-generic { background: #fde68a; } .flag-undecided { background: #fecaca; }
.flag-polysemantic { background: #ddd6fe; }
.group { margin: 6px 0 2px; font-size: 12px; }
.score { display: block; height: 100%; background: #93b4ea; border-radius: 2px; }
.s { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); font-size: 12px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; }
figure { margin: 0; text-align: center; }
figure img { display: block; object-fit: contain; background: #111; border-radius: 3px; }
figcaption { font-size: 10px; color: var(--muted); }
details { margin-top: 4px; font-size: 12px; color: var(--muted); }
.tops { margin: 4px 0 0; word-break: break-word; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var box = document.getElementById("cards");
  var cards = Array.prototype.slice.call(box.querySelectorAll("article.card"));
  var search = document.getElementById("search");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  function number(card, key) {
    var v = parseFloat(card.getAttribute("data-" + key));
    return isNaN(v) ? -Infinity : v;
  }
  function matches(card, term) {
    if (/^#?[0-9]+$/.test(term) && card.getAttribute("data-filter") === term.replace("#", "")) {
      return true;
    }
    return card.getAttribute("data-words").indexOf(term) >= 0;
  }
  function filter() {
    var terms = search.value.toLowerCase().split(/\\s+/).filter(function (t) { return t.length > 0; });
    var count = 0;
    cards.forEach(function (card) {
      var visible = terms.every(function (term) { return matches(card, term); });
      card.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = count + " of " + cards.length + " filters shown";
  }
  function order() {
    var key = sort.value;
    var sorted = cards.slice().sort(function (a, b) {
      if (key !== "filter") {
        var x = number(a, key), y = number(b, key);
        if (x > y) { return -1; }
        if (x < y) { return 1; }
      }
      return number(a, "filter") - number(b, "filter");
    });
    var fragment = document.createDocumentFragment();
    sorted.forEach(function (card) { fragment.appendChild(card); });
    box.appendChild(fragment);
  }
  search.addEventListener("input", filter);
  sort.addEventListener("change", order);
  Array.prototype.forEach.call(document.querySelectorAll(".bar-row"), function (row) {
    row.addEventListener("click", function () {
      search.value = row.getAttribute("data-word");
      filter();
      document.getElementById("filters").scrollIntoView();
    });
  });
  order();
  filter();
  document.body.setAttribute("data-ready", "1");
})();
"""


def _page(result: ExplainResult, pictures: dict[tuple[int, int], str], evaluation: Mapping | None, title: str,
          max_images: int, thumbnail: int, heatmaps: bool) -> str:
    unseen = set((result.settings or {}).get("unseen") or ())
    panels = [f'<div class="panel"><h3>Settings</h3>{_settings_table(result)}</div>',
              f'<div class="panel"><h3>Concepts over filters</h3>{_concept_distribution(result)}</div>']
    if evaluation is not None:
        panels.append(f'<div class="panel" id="recall"><h3>Recall against the reference masks</h3>'
                      f'{_recall_svg(evaluation)}{_evaluation_table(evaluation)}</div>')
        panels.append(f'<div class="panel"><h3>Network-Dissection labels over filters</h3>'
                      f'{_dissection_distribution(result, evaluation)}</div>')
    options = ['<option value="filter">filter index</option>', '<option value="score">top score</option>']
    if evaluation is not None:
        options.append('<option value="iou">ND IoU</option>')
    order = sorted(range(len(result.filters)), key=lambda pos: result.filters[pos])
    flags = filter_flags(result)
    cards = "\n".join(_card(result, pos, pictures, evaluation, unseen, max_images, thumbnail, flags[pos])
                      for pos in order)
    n = len(result.filters)
    legend = ""
    if pictures and heatmaps:
        legend = ('<p class="muted legend">Top images: the filter\'s activation as a heatmap (blue: none, red: its '
                  'top activation) and, outlined in white, the region above its threshold; captions: image index '
                  '· max activation.</p>')
    elif pictures:
        legend = '<p class="muted legend">Top images; captions: image index · max activation.</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><nav><a href="#summary">Summary</a><a href="#filters">Filters</a></nav></header>
<main>
<section id="summary">
<h2>Summary</h2>
<div class="grid">
{chr(10).join(panels)}
</div>
</section>
<section id="filters">
<h2>Filters</h2>
<div class="toolbar">
<input id="search" type="search" placeholder="Search words or a filter number" aria-label="search filters"
 autocomplete="off">
<label>Sort by <select id="sort">{"".join(options)}</select></label>
<span id="shown" class="muted">{n} of {n} filters shown</span>
</div>
{legend}
<div id="cards">
{cards}
</div>
</section>
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------- entry point


def _check_result(result: ExplainResult) -> None:
    n = len(result.filters)
    lengths = {"words": len(result.words), "scores": len(result.scores), "top_images": len(result.top_images),
               "top_activations": len(result.top_activations), "thresholds": len(result.thresholds)}
    bad = {name: size for name, size in lengths.items() if size != n}
    if bad:
        raise InputError(f"the result is inconsistent: {n} filters but {bad}")
    for pos in range(n):
        if len(result.words[pos]) != len(result.scores[pos]) or len(result.top_images[pos]) != len(
            result.top_activations[pos]
        ):
            raise InputError(f"the result is inconsistent for filter {result.filters[pos]}: words/scores or "
                             "top_images/top_activations differ in length")
    if result.groups and len(result.groups) != n:
        raise InputError(f"the result is inconsistent: {n} filters but {len(result.groups)} lists of groups")


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
    evaluation: dict | None = None,
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
        images: the target images, indexable by the result's image indices (positions in the explain
            loader's order), each item an image tensor [3, H, W] normalised with ``mean``/``std`` or a
            tuple/list starting with one (a ``ConceptWorld``, any reference dataset, a list of tensors).
            Without it the report shows words, scores, thresholds and top activations, no pictures.
        model: the explained model. With ``images``, it is run again (batched, stopped at
            ``result.settings["layer"]``) on the union of the shown top images, and each picture gets the
            filter's activation map as a heatmap and the region above the filter's threshold outlined.
        evaluation: the dict of :func:`lavise_fast.evaluate`: adds the recall plot and each filter's
            Network-Dissection label and IoU (``evaluation["dissection"][str(filter)]``).
        mean, std: the normalisation of ``images``, undone for display (``(0, 0, 0)``, ``(1, 1, 1)`` for
            images in [0, 1]).
        max_images: the top images shown per filter (0: none). thumbnail: their longest side in pixels.
        title: the page title (default: the layer's name). device: where the model runs (default: its own).
        progress: a tqdm bar while the pictures are rendered.
    """
    _check_result(result)
    for name, value, low in (("max_images", max_images, 0), ("thumbnail", thumbnail, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}")
    if evaluation is not None and not isinstance(evaluation, Mapping):
        raise InputTypeError(f"evaluation must be the dict of lavise_fast.evaluate, got {type(evaluation).__name__}")
    if model is not None and images is None:
        raise InputError("model= draws the activation maps over the top images, so it needs images= too "
                         "(the target set the result was explained on)")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mean, std = _triple("mean", mean), _triple("std", std)
    path = Path(path)
    if path.is_dir():
        raise InputError(f"path must be a file name, {path} is a directory")
    layer = (result.settings or {}).get("layer")
    if title is None:
        title = f"LaViSE report: {layer}" if layer else "LaViSE report"
    pictures: dict[tuple[int, int], str] = {}
    if images is not None and max_images > 0:
        pictures = _pictures(result, images, model, mean, std, int(max_images), int(thumbnail), device, progress)
    text = _page(result, pictures, evaluation, str(title), int(max_images), int(thumbnail), model is not None)
    return atomic_write(path, text)
