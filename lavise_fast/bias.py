"""Bias analysis: which concepts describe the filters of one result more often than another's.

:func:`compare` ranks the concepts by ``share_a - share_b``, the difference of the shares of filters
whose words hold them, for the same network explained on two subsets; :func:`compare_plot` draws
that as a self-contained SVG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import atomic_write
from lavise_fast.result import ExplainResult, checked_result
from lavise_fast.validate import positive_int

__all__ = ["compare", "compare_plot"]


def compare(
    result_a: ExplainResult,
    result_b: ExplainResult,
    *,
    num_words: int | None = None,
    names: Sequence[str] = ("a", "b"),
) -> list[dict]:
    """Concepts ranked by how much more often they describe filters in ``result_a`` than in ``result_b``.

    Both results must explain the same filters of the same layer (the same network on two
    subsets). The words are each result's, ranked by its scores (``settings["scoring"]``): with
    the default scoring a word counts for a filter when the filter's top images evoke it more than
    the subset's images do in general, so a concept tied to another in one subset (every circle is
    red) shows in that concept's filters, while a concept the subset merely holds more of is
    discounted with the rest of the subset; the vote (``scoring="vote"``) counts what the top
    images show. For every word w in either result: ``count_x(w)`` = the number of filters whose
    first ``num_words`` words (default: all kept) contain w, ``share_x = count_x / F`` (F the
    filters explained) and ``difference = share_a - share_b``. Rows
    ``{"concept", "count_a", "count_b", "share_a", "share_b", "difference"}`` are sorted by
    difference, descending (the concepts a evokes more first, those b evokes more last), ties by
    word.

    Args:
        result_a: the first result (e.g. the network on one subset).
        result_b: the second result: the same layer and filters on another subset.
        num_words: how many of each filter's first words count; None: all it kept.
        names: the two results' names, used in error messages.
    """
    names = _names(names)
    checked_result(result_a, f"result_a ({names[0]})", complete=False)
    checked_result(result_b, f"result_b ({names[1]})", complete=False)
    if num_words is not None:
        positive_int("num_words", num_words)
    layer_a, layer_b = result_a.settings.layer, result_b.settings.layer
    if layer_a != layer_b:
        raise InputError(f"the results explain different layers: {layer_a!r} ({names[0]}) and {layer_b!r} "
                         f"({names[1]}); compare needs the same layer of the same network")
    if sorted(result_a.filters) != sorted(result_b.filters):
        only_a = sorted(set(result_a.filters) - set(result_b.filters))
        only_b = sorted(set(result_b.filters) - set(result_a.filters))
        raise InputError(f"the results explain different filters of {layer_a!r} ({len(result_a.filters)} and "
                         f"{len(result_b.filters)}; only in {names[0]}: {only_a[:10]}, only in {names[1]}: "
                         f"{only_b[:10]}); compare needs the same filters")
    counts = []
    for result in (result_a, result_b):
        count: dict[str, int] = {}
        for words in result.words:
            for w in set(words[:num_words]):
                count[w] = count.get(w, 0) + 1
        counts.append(count)
    total = len(result_a.filters)
    rows = []
    for w in set(counts[0]) | set(counts[1]):
        a, b = counts[0].get(w, 0), counts[1].get(w, 0)
        share_a, share_b = (a / total, b / total) if total else (0.0, 0.0)
        rows.append({"concept": w, "count_a": a, "count_b": b, "share_a": share_a, "share_b": share_b,
                     "difference": share_a - share_b})
    rows.sort(key=lambda r: (-r["difference"], r["concept"]))
    return rows


def _names(names: Sequence[str]) -> tuple[str, str]:
    if isinstance(names, str) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise InputError(f"names must be two strings, got {names!r}")
    return names[0], names[1]


def compare_plot(comparison: list[dict], path: str | os.PathLike, *, top: int = 15,
                 names: Sequence[str] = ("a", "b")) -> None:
    """Writes ``comparison`` (from :func:`compare`) as a self-contained SVG bar chart to ``path``,
    atomically (a temporary file, then a rename).

    One horizontal bar per concept, of length ``difference`` (share_a - share_b): the ``top``
    concepts that ``names[0]`` evokes most over ``names[1]`` (bars to the right), then the ``top``
    that ``names[1]`` evokes most (bars to the left), each labelled with its two counts.

    Args:
        comparison: the rows :func:`compare` returns.
        path: the SVG file to write.
        top: how many concepts to draw on each side.
        names: the two results' names, for the legend.
    """
    positive_int("top", top)
    a_name, b_name = _names(names)
    keys = {"concept", "count_a", "count_b", "difference"}
    if not isinstance(comparison, list) or not all(isinstance(r, dict) and keys <= set(r) for r in comparison):
        raise InputTypeError(f"comparison must be the list of rows that compare() returns (dicts with keys "
                             f"{sorted(keys)})")
    more_a = [r for r in comparison if r["difference"] > 0][:top]
    more_b = [r for r in comparison if r["difference"] < 0][-top:]
    shown = more_a + more_b
    largest = max((abs(r["difference"]) for r in shown), default=0.0) or 1.0
    row_h, label_w, half, top_h = 18, 130, 220, 48
    width = label_w + 2 * half + 120
    height = top_h + row_h * max(1, len(shown)) + 24
    mid = label_w + half
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>Concepts {escape(a_name)} evokes more than {escape(b_name)}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{mid}" y="16" text-anchor="middle" font-weight="bold">share of filters: '
        f"{escape(a_name)} minus {escape(b_name)}</text>",
        f'<text x="{mid + 6}" y="34" fill="#c0392b">more in {escape(a_name)} \u2192</text>',
        f'<text x="{mid - 6}" y="34" text-anchor="end" fill="#2c6fbb">\u2190 more in {escape(b_name)}</text>',
        f'<line x1="{mid}" y1="{top_h - 6}" x2="{mid}" y2="{height - 20}" stroke="#444"/>',
    ]
    if not shown:
        parts.append(f'<text x="{mid}" y="{top_h + 12}" text-anchor="middle">no difference</text>')
    for n, r in enumerate(shown):
        y = top_h + n * row_h
        length = abs(r["difference"]) / largest * half
        x = mid if r["difference"] > 0 else mid - length
        colour = "#c0392b" if r["difference"] > 0 else "#2c6fbb"
        parts += [
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(str(r["concept"]))}</text>',
            f'<rect x="{x:.2f}" y="{y + 3}" width="{length:.2f}" height="{row_h - 6}" fill="{colour}">'
            f'<title>{escape(str(r["concept"]))}: {r["count_a"]} filters in {escape(a_name)}, '
            f'{r["count_b"]} in {escape(b_name)} (difference {r["difference"]:+.3f})</title></rect>',
            f'<text x="{mid + half + 8}" y="{y + 13}" fill="#555">{r["count_a"]} vs {r["count_b"]}</text>',
        ]
    parts.append(f'<text x="{mid}" y="{height - 6}" text-anchor="middle" fill="#555">'
                 f"largest bar = {largest:.3f} of the filters</text>")
    parts.append("</svg>\n")
    path = Path(path)
    atomic_write(path, "\n".join(parts))

