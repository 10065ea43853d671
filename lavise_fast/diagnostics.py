"""What a result's word lists say about themselves, without any ground truth.

A word that most filters list says nothing about any one of them (a *generic* word), and a filter
whose two best words score the same has not decided between them. :func:`word_statistics`
counts both over a result; :func:`filter_flags` marks each filter for the report.
"""

from __future__ import annotations

import math
from collections import Counter

__all__ = ["GENERIC_SHARE", "TOP", "filter_flags", "generic_words", "word_statistics"]

GENERIC_SHARE = 0.5  # a word in the first TOP words of more than this share of the filters is generic
TOP = 5


def _ties(scores: list[float]) -> bool:
    return len(scores) >= 2 and scores[0] == scores[1]


def generic_words(words: list[list[str]], top: int = TOP, share: float = GENERIC_SHARE) -> dict[str, float]:
    """{word: share of filters} for the words among the first ``top`` words of more than ``share`` of the
    filters, most shared first.

    Args:
        words: per filter, its words, best first.
        top: how many of each filter's first words count.
        share: the share of the filters (in [0, 1]) a word must exceed to be generic.
    """
    counts = Counter(w for ws in words for w in set(ws[:top]))
    K = len(words)
    return {w: n / K for w, n in counts.most_common() if K and n / K > share}


def word_statistics(result) -> dict:
    """Over the filters of ``result`` (an ExplainResult): ``ties`` (share of filters whose two best
    words have the same score), ``distinct_first`` (how many words are some filter's first word),
    ``most_shared`` (the word in the first 5 words of the most filters, and that share),
    ``generic`` (:func:`generic_words`), ``undecided`` (share of filters :func:`filter_flags` calls
    undecided) and ``polysemantic`` (filters with more than one group).

    Args:
        result: an ExplainResult (its ``filters``, ``words``, ``scores``, ``groups`` and ``settings``).
    """
    K = len(result.filters)
    counts = Counter(w for ws in result.words for w in set(ws[:TOP]))
    word, most = min(counts.items(), key=lambda kv: (-kv[1], kv[0])) if counts else (None, 0)
    flags = filter_flags(result)
    return {
        "filters": K,
        "ties": sum(_ties(s) for s in result.scores) / K if K else None,
        "distinct_first": len({ws[0] for ws in result.words if ws}),
        "most_shared": {"word": word, "share": most / K if K else None},
        "generic": generic_words(result.words),
        "undecided": sum("undecided" in f for f in flags) / K if K else None,
        "polysemantic": sum(len(g) > 1 for g in (result.groups or [])),
    }


def filter_flags(result) -> list[list[str]]:
    """Per filter, what to distrust in its words: ``"generic"`` when its first word is a generic word
    (:func:`generic_words`), ``"undecided"`` when it has no word, when its two best words score the
    same, or (with a relative scoring) when no word scores above the layer's baseline;
    ``"polysemantic"`` when its top images form two groups.

    Args:
        result: an ExplainResult (its ``words``, ``scores``, ``groups`` and ``settings.scoring``).
    """
    generic = generic_words(result.words)
    relative = (result.settings.scoring or "vote") != "vote"
    groups = result.groups or [[]] * len(result.filters)
    flags = []
    for words, scores, group in zip(result.words, result.scores, groups, strict=True):
        mine = []
        if words and words[0] in generic:
            mine.append("generic")
        if not words or _ties(scores) or (relative and not (math.isfinite(scores[0]) and scores[0] > 0)):
            mine.append("undecided")
        if len(group) > 1:
            mine.append("polysemantic")
        flags.append(mine)
    return flags
