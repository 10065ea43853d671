"""Word spaces: where concept words live as vectors.

A space maps words to unit vectors of dimension ``dim``: :class:`Static` holds an in-memory
table, :class:`GloVe` reads GloVe or word2vec text files (cached as ``.npy``). A
:class:`Vocabulary` is the words an explainer may answer with, and their unit vectors.
Multi-word concepts ("traffic light") not in a table are the mean of their words' vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["Static", "GloVe", "Vocabulary"]

log = logging.getLogger(__name__)
_SPLIT = re.compile(r"[\s_\-]+")


class Static:
    """An in-memory word space: ``words`` [V] and ``vectors`` [V, D] (rows are unit-normalised).

    A duplicate word keeps its first vector.
    """

    def __init__(self, words: Sequence[str], vectors: torch.Tensor | np.ndarray, name: str = "static") -> None:
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if not torch.is_tensor(vectors) else vectors)
        if vectors.dim() != 2 or vectors.shape[0] != len(words):
            raise ValueError(
                f"vectors must have shape [len(words), D] = [{len(words)}, D], got {tuple(vectors.shape)}"
            )
        if not torch.isfinite(vectors).all():
            raise ValueError("vectors must be finite (found NaN or inf)")
        self.name = name
        self._index: dict[str, int] = {}
        for i, word in enumerate(words):
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"words[{i}] must be a non-empty string, got {word!r}")
            self._index.setdefault(word, i)
        self._vectors = torch.nn.functional.normalize(vectors.float(), dim=1)

    @property
    def dim(self) -> int:
        return self._vectors.shape[1]

    def __len__(self) -> int:
        return len(self._index)

    def _row(self, word: str) -> torch.Tensor | None:
        i = self._index.get(word)
        if i is None:
            i = self._index.get(word.lower())
        if i is not None:
            return self._vectors[i]
        parts = [p for p in _SPLIT.split(word.strip()) if p]
        if len(parts) > 1 and all(self._index.get(p, self._index.get(p.lower())) is not None for p in parts):
            rows = [self._vectors[self._index.get(p, self._index.get(p.lower()))] for p in parts]
            return torch.nn.functional.normalize(torch.stack(rows).mean(0), dim=0)
        return None

    def __contains__(self, word: str) -> bool:
        return self._row(word) is not None

    def encode(self, words: Iterable[str]) -> torch.Tensor:
        """Unit vectors [len(words), D] of ``words``; KeyError naming the words the space lacks."""
        words = list(words)
        rows = [self._row(w) for w in words]
        missing = [w for w, r in zip(words, rows, strict=True) if r is None]
        if missing:
            raise KeyError(f"{len(missing)} word(s) not in the {self.name} space: {missing[:10]}")
        return torch.stack(rows) if rows else self._vectors.new_zeros(0, self.dim)


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _write_atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def read_word_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """Parses a GloVe (``word v1 ... vD``) or word2vec text file (the same after a ``V D`` header).

    Raises:
        ValueError: naming the file and line of the first malformed line.
    """
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    duplicates = 0
    dim = None
    with path.open("r", encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if lineno == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                dim = int(parts[1])  # word2vec header: vocabulary size and dimension
                continue
            if not line.strip():
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) != dim + 1 or dim < 1:
                raise ValueError(f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields")
            try:
                vector = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: the vector of {parts[0]!r} holds a non-number") from None
            if parts[0] in seen:
                duplicates += 1
                continue
            seen.add(parts[0])
            words.append(parts[0])
            rows.append(vector)
    if not words:
        raise ValueError(f"{path}: no word vectors found")
    if duplicates:
        log.warning("%s: %d duplicate word(s) skipped (the first vector of each is kept)", path, duplicates)
    return words, np.stack(rows)


class GloVe(Static):
    """A GloVe or word2vec text file (with or without the word2vec ``V D`` header line).

    The first load parses the text and writes ``<file>.<hash>.words.txt`` and
    ``<file>.<hash>.npy`` beside it (``hash`` = the file's SHA-1), so later loads skip the parse;
    ``cache=False`` never writes. Duplicate words keep their first vector.
    """

    def __init__(self, path: str | os.PathLike, cache: bool = True) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"GloVe file {str(path)!r} does not exist")
        key = _fingerprint(path)
        words_file = path.with_name(f"{path.name}.{key}.words.txt")
        vectors_file = path.with_name(f"{path.name}.{key}.npy")
        if words_file.is_file() and vectors_file.is_file():
            words = words_file.read_text(encoding="utf-8").split("\n")
            vectors = np.load(vectors_file)
        else:
            words, vectors = read_word_vectors(path)
            if cache:
                try:
                    _write_atomic(vectors_file, lambda tmp: _save_npy(tmp, vectors))
                    _write_atomic(words_file, lambda tmp: Path(tmp).write_text("\n".join(words), encoding="utf-8"))
                except OSError as error:
                    log.warning("could not cache %s beside it (%s); it will be parsed again next time", path, error)
        super().__init__(words, vectors, name=f"GloVe({path.name})")


class Vocabulary:
    """The words an explainer answers with (``words``, list of str) and their unit vectors
    (``vectors`` [V, D] float32) in one space."""

    def __init__(self, words: Sequence[str], vectors: torch.Tensor) -> None:
        if vectors.dim() != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"vectors must have shape [{len(words)}, D], got {tuple(vectors.shape)}")
        self.words = list(words)
        self.vectors = torch.nn.functional.normalize(vectors.float(), dim=1)

    @classmethod
    def from_words(cls, words: Iterable[str], space: Static) -> Vocabulary:
        """The words of ``words`` that ``space`` knows (first occurrence, order kept); the others are
        reported through logging and skipped. ValueError when the space knows none of them."""
        unique = list(dict.fromkeys(w.strip() for w in words if w and w.strip()))
        known = [w for w in unique if w in space]
        missing = len(unique) - len(known)
        if not known:
            raise ValueError(f"none of the {len(unique)} words is in the {getattr(space, 'name', 'given')} space")
        if missing:
            skipped = [w for w in unique if w not in space][:10]
            log.warning("%d of %d words are not in the space and are skipped, e.g. %s", missing, len(unique), skipped)
        return cls(known, space.encode(known))

    def __len__(self) -> int:
        return len(self.words)
