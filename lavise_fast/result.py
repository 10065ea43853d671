"""What a sweep returns: :class:`ExplainResult`, its :class:`SweepSettings`, and their JSON file.

A result file is one JSON object: the result's fields, ``settings`` as an object, and
``"format": "lavise_fast.result/2"``. A file without ``format`` is a result of the first
version (no ``groups``, no ``scoring``: the vote) and still loads; a file of a later version is
refused with a message that names it. The file is strict JSON: a number that is not finite (a NaN
threshold of a filter that never fired, say) is written as ``null`` and read back as NaN. Loading
checks every field's type and length and names the first that is wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import atomic_write_json

__all__ = ["ExplainResult", "SweepSettings", "FORMAT", "checked_result"]

FORMAT = "lavise_fast.result/2"
_KNOWN_FORMATS = ("lavise_fast.result/1", FORMAT)


@dataclass
class SweepSettings(Mapping):
    """How a sweep was run. Read by evaluation, the report, bias comparison and the CLI.

    ``layer`` explained and its ``layout``, how its output was read as a feature map
    (:meth:`lavise_fast.grids.Layout.describe`: ``"nchw"``, ``"nhwc"`` or which tokens were dropped;
    None in older files); ``method`` and ``scoring`` (``None`` in files of the first version: the
    vote); ``top_images`` (P), ``words_per_image`` (s), ``num_words``; ``quantile`` of the
    thresholds (None when given: ``thresholds_given``); ``images`` the loader gave; the word
    ``space`` and ``vocabulary_size``; ``baseline_pairs`` the layer baseline rests on; the
    explainer's ``seen`` and ``unseen`` words. ``extra`` holds what callers add (``target``,
    ``model``, ``demo``: plain JSON values).

    It reads like the dict it replaces (``settings["layer"]``, ``settings.get("seen")``,
    ``settings["target"] = ...`` for an extra), so that code written against the dict keeps working.
    """

    layer: str | None = None
    layout: str | None = None
    method: str | None = None
    scoring: str | None = None
    top_images: int | None = None
    words_per_image: int | None = None
    num_words: int | None = None
    quantile: float | None = None
    thresholds_given: bool | None = None
    images: int | None = None
    space: str | None = None
    vocabulary_size: int | None = None
    baseline_pairs: int | None = None
    seen: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> SweepSettings:
        """Settings from their JSON object (or the dict of a result written before they were typed):
        known keys become fields, the others ``extra``.

        Args:
            data: the ``settings`` object of a result file, a dict, settings (returned as they are) or None.
        """
        if isinstance(data, SweepSettings):
            return data
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InputError(f"settings must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {key: value for key, value in data.items() if key in names}
        extra = {key: value for key, value in data.items() if key not in names}
        if isinstance(extra.get("extra"), Mapping):  # dataclasses.asdict of settings: the extras nested
            extra.update(extra.pop("extra"))
        settings = cls(**known, extra=extra)
        settings.seen, settings.unseen = list(settings.seen or ()), list(settings.unseen or ())
        return settings

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the fields, then the extras, flat."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out

    # ------------------------------------------------------------------ the dict it replaces

    def __getitem__(self, key: str) -> Any:
        if key != "extra" and key in {f.name for f in fields(self)}:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key != "extra" and key in {f.name for f in fields(self)}:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SweepSettings):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # mutable, like the dict


@dataclass
class ExplainResult:
    """Per explained filter k (in the order of ``filters``): ``words[k]`` sorted by ``scores[k]``
    (descending; what a score means is ``settings.scoring``'s, see :mod:`lavise_fast.scoring`:
    by default how much more the filter's top images evoke the word than the layer's images do in
    general), ``top_images[k]`` and ``top_activations[k]`` (descending); ``thresholds`` the
    per-filter ``quantile`` of all activations (or the given thresholds); ``groups[k]`` the
    filter's groups of top images (:mod:`lavise_fast.groups`): one dict ``{"images", "words",
    "scores"}`` for a filter that responds to one concept, two for a polysemantic one, heavier
    group first (an empty list in results of the first version); ``settings`` how it was run
    (:class:`SweepSettings`; a dict given here is converted).

    ``result.report(path, ...)`` writes the HTML report (:func:`lavise_fast.report.write_report`).
    """

    filters: list[int]
    words: list[list[str]]
    scores: list[list[float]]
    top_images: list[list[int]]
    top_activations: list[list[float]]
    thresholds: list[float]
    settings: SweepSettings = field(default_factory=SweepSettings)
    groups: list[list[dict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = SweepSettings.from_dict(self.settings)

    def check(self, name: str = "result", *, complete: bool = True) -> ExplainResult:
        """Raises :class:`~lavise_fast.errors.InputError` (naming the argument ``name``) unless every
        per-filter list has one entry per filter and each filter's words/scores and
        top_images/top_activations have equal lengths; returns self. The report calls it before any
        work; evaluation and bias comparison, which read only the words, top images and thresholds,
        check those (``complete=False``).

        Args:
            name: what the caller calls the result, in the message.
            complete: check every list; False: only ``words``, ``top_images`` and ``thresholds``.
        """
        n = len(self.filters)
        for k, words in zip(self.filters, self.words, strict=False):  # lengths are checked below
            if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
                raise InputError(f"{name}.words of filter {k} must be a list of strings, got {words!r:.60}")
        if not complete:
            for key in ("words", "top_images", "thresholds"):
                if len(getattr(self, key)) != n:
                    raise InputError(f"{name}.{key} has {len(getattr(self, key))} entries for {n} filters")
            return self
        lengths = {"words": len(self.words), "scores": len(self.scores), "top_images": len(self.top_images),
                   "top_activations": len(self.top_activations), "thresholds": len(self.thresholds)}
        bad = {key: size for key, size in lengths.items() if size != n}
        if bad:
            raise InputError(f"{name} is inconsistent: {n} filters but {bad}")
        for pos in range(n):
            if len(self.words[pos]) != len(self.scores[pos]) or len(self.top_images[pos]) != len(
                self.top_activations[pos]
            ):
                raise InputError(f"{name} is inconsistent for filter {self.filters[pos]}: words/scores or "
                                 "top_images/top_activations differ in length")
        if self.groups and len(self.groups) != n:
            raise InputError(f"{name} is inconsistent: {n} filters but {len(self.groups)} lists of groups")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the result file."""
        out = {"format": FORMAT, **asdict(self)}
        out["settings"] = self.settings.to_dict()
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON atomically (a temporary file, then a rename).

        Args:
            path: the result file to write (``.json``).
        """
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExplainResult:
        """Reads a result file of this version or the first (module docstring).

        Args:
            path: a file that :meth:`save` wrote.

        Raises:
            InputError: the file is not a result (not JSON, missing or extra fields) or is of a later
                version than this lavise_fast reads.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path} is not an ExplainResult JSON file: {error}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path} is not an ExplainResult JSON file: it holds a {type(data).__name__}, "
                             "not an object")
        version = data.pop("format", "lavise_fast.result/1")
        if version not in _KNOWN_FORMATS:
            raise InputError(f"{path} is a result file of format {version!r}, which this lavise_fast does not read "
                             f"(it reads {', '.join(_KNOWN_FORMATS)}): update lavise_fast")
        try:
            _check_types(data)
            return cls(**data).check("the file")  # the lengths within each filter
        except (TypeError, InputError) as error:
            raise InputError(f"{path} is not an ExplainResult JSON file: {error}") from None


def _number(value: object) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_types(data: dict) -> None:
    """Refuses (InputError naming the field and filter) a result object whose fields have the wrong types
    or lists of the wrong count (:meth:`ExplainResult.check` then checks the lengths within each filter);
    turns ``null`` numbers (non-finite ones, as written) into NaN, in place."""
    expected = {f.name for f in fields(ExplainResult)}
    missing = sorted(expected - {"settings", "groups"} - set(data))
    unknown = sorted(set(data) - expected)
    if missing or unknown:
        raise InputError(f"missing fields {missing}" if missing else f"unknown fields {unknown}")
    filters = data["filters"]
    if not isinstance(filters, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                                for k in filters):
        raise InputError("'filters' must be a list of filter indices (ints >= 0)")
    n = len(filters)
    per_filter = {"words": str, "scores": "number", "top_images": int, "top_activations": "number"}
    for name, kind in per_filter.items():
        rows = data[name]
        if not isinstance(rows, list) or len(rows) != n:
            raise InputError(f"{name!r} must be a list of {n} lists (one per filter), got "
                             f"{type(rows).__name__ if not isinstance(rows, list) else f'{len(rows)} entries'}")
        for k, row in zip(filters, rows, strict=True):
            ok = isinstance(row, list) and all(
                _number(v) if kind == "number" else isinstance(v, kind) and not isinstance(v, bool) for v in row)
            if not ok:
                what = "numbers" if kind == "number" else "strings" if kind is str else "image indices (ints)"
                raise InputError(f"{name!r} of filter {k} must be a list of {what}, got {row!r:.80}")
            if kind == "number":
                row[:] = [math.nan if v is None else float(v) for v in row]
    thresholds = data["thresholds"]
    if not isinstance(thresholds, list) or len(thresholds) != n or not all(_number(t) for t in thresholds):
        raise InputError(f"'thresholds' must be a list of {n} numbers (one per filter)")
    data["thresholds"] = [math.nan if t is None else float(t) for t in thresholds]
    groups = data.get("groups", [])
    if not isinstance(groups, list) or (groups and len(groups) != n) or not all(
            isinstance(g, list) and all(isinstance(x, dict) for x in g) for g in groups):
        raise InputError(f"'groups' must be a list of {n} lists of groups (or empty)")
    if data.get("settings") is not None and not isinstance(data["settings"], dict):
        raise InputError(f"'settings' must be a JSON object, got {type(data['settings']).__name__}")


def checked_result(value: object, name: str = "result", *, complete: bool = True) -> ExplainResult:
    """``value`` if it is a consistent :class:`ExplainResult` (see :meth:`ExplainResult.check`); else a
    TypeError (not a result) or ValueError (inconsistent) naming the argument ``name``.

    Args:
        value: what the caller was given as a result.
        name: the argument's name, in the message.
        complete: check every per-filter list; False: only those evaluation and comparison read.
    """
    if not isinstance(value, ExplainResult):
        raise InputTypeError(f"{name} must be an ExplainResult (from lavise_fast.explain), got {type(value).__name__}")
    return value.check(name, complete=complete)
