"""Word lists: the ones shipped with the package, and :func:`read_word_list` for your own.

The shipped lists come from the official LaViSE repository (MIT licence:
``lavise_fast/data/LICENSE-LaViSE-data.txt``).

A word-list file is UTF-8 text (a byte-order mark is ignored), one word or phrase per line
("traffic light" is one entry). Surrounding blanks are stripped and blank lines ignored; a word that
comes again is dropped, its first place kept, with a warning naming it and its lines. Non-ASCII words
("café", "東京") are read, kept and written back as they are: no case folding, no Unicode
normalisation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path

from lavise_fast.errors import InputError, MissingInputError

__all__ = ["entities", "visual_genome_labels", "read_word_list"]


def _unique_lines(lines: Iterable[str]) -> tuple[list[str], dict[str, list[int]]]:
    """The stripped non-blank lines, each once in first-seen order, and line numbers of every repeated word."""
    first: dict[str, int] = {}
    repeats: dict[str, list[int]] = {}
    for lineno, line in enumerate(lines, 1):
        word = line.strip()
        if not word:
            continue
        if word in first:
            repeats.setdefault(word, [first[word]]).append(lineno)
        else:
            first[word] = lineno
    return list(first), repeats


def read_word_list(path: str | os.PathLike) -> list[str]:
    """The words of a word-list file (module docstring), in file order.

    Args:
        path: the word-list file: UTF-8 text, one word or phrase per line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file: not UTF-8 text (with the line of the first bad byte), a
            binary file (NUL bytes), or no word at all.
    """
    path = Path(path)
    where = f"word list {str(path)!r}"
    if not path.is_file():
        raise MissingInputError(f"{where} does not exist (or is not a file)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            f"{where} is not UTF-8 text: line {line} holds the byte 0x{data[error.start]:02x}; "
            "save it as UTF-8, one word per line"
        ) from None
    if "\0" in text:
        raise InputError(f"{where} is not a text file (it holds NUL bytes); expected one word per line")
    words, repeats = _unique_lines(text.split("\n"))
    if not words:
        raise InputError(f"{where} holds no word ({len(text.splitlines())} line(s), all blank)")
    if repeats:
        shown = "; ".join(f"{w!r} on lines {', '.join(map(str, lines))}" for w, lines in list(repeats.items())[:5])
        warnings.warn(
            f"{where}: {len(repeats)} word(s) repeat and are kept once, at their first line: {shown}"
            + (" ..." if len(repeats) > 5 else ""),
            stacklevel=2,
        )
    return words


@cache
def _read(name: str) -> tuple[str, ...]:
    text = resources.files("lavise_fast").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(_unique_lines(text.splitlines())[0])


def entities() -> list[str]:
    """The LaViSE concept vocabulary (``lavise_entities.txt``), in file order.

    The official file has 1,204 lines, one of them blank and one ("tabletop") a repeat, so this
    returns 1,202 distinct words.
    """
    return list(_read("lavise_entities.txt"))


def visual_genome_labels() -> list[str]:
    """The 1,208 Visual Genome object labels LaViSE trains on (``vg_labels.txt``), in file order."""
    return list(_read("vg_labels.txt"))
