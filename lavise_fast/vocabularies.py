"""Word lists shipped with the package (from the official LaViSE repository, MIT licence:
``lavise_fast/data/LICENSE-LaViSE-data.txt``)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["entities", "visual_genome_labels"]


@cache
def _read(name: str) -> tuple[str, ...]:
    text = resources.files("lavise_fast").joinpath("data", name).read_text(encoding="utf-8")
    words: dict[str, None] = {}
    for line in text.splitlines():
        word = line.strip()
        if word:
            words.setdefault(word, None)
    return tuple(words)


def entities() -> list[str]:
    """The LaViSE concept vocabulary (``lavise_entities.txt``), in file order.

    The official file has 1,204 lines, one of them blank and one ("tabletop") a repeat, so this
    returns 1,202 distinct words.
    """
    return list(_read("lavise_entities.txt"))


def visual_genome_labels() -> list[str]:
    """The 1,208 Visual Genome object labels LaViSE trains on (``vg_labels.txt``), in file order."""
    return list(_read("vg_labels.txt"))
