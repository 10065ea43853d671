"""The report's page: the HTML of the summary panels and of one card per filter.

The page's style and script are read from the package's ``style.css`` and ``script.js``.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from lavise_fast.diagnostics import filter_flags
from lavise_fast.result import ExplainResult

__all__ = ["page"]

_TOP_CONCEPTS = 30  # bars in the distribution of concepts over filters
_RECALL_KS = (5, 10, 20)


def _asset(name: str) -> str:
    return resources.files("lavise_fast.report").joinpath(name).read_text(encoding="utf-8")


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


def page(result: ExplainResult, pictures: dict[tuple[int, int], str], evaluation: Mapping | None, title: str,
          max_images: int, thumbnail: int, heatmaps: bool) -> str:
    """The report's whole HTML page: summary panels, then one card per filter in filter order.

    Args:
        result: the explained result.
        pictures: {(position of the filter in the result, image index): data URL}, from
            :func:`lavise_fast.report.pictures.pictures_for` (empty: no pictures).
        evaluation: what :func:`lavise_fast.evaluate` returned, as a mapping (adds the recall and
            Network-Dissection panels and each filter's IoU); None: none.
        title: the page title.
        max_images: the top images shown per filter.
        thumbnail: the pictures' width and height in the page, in pixels.
        heatmaps: whether the pictures carry heatmaps (the legend says so).
    """
    unseen = set(result.settings.unseen or ())
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
<style>
{_asset("style.css")}</style>
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
<script>
{_asset("script.js")}</script>
</body>
</html>
"""


