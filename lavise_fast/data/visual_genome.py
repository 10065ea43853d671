"""Visual Genome object boxes as a LaViSE reference set."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavise_fast.data._common import (
    blank_item,
    box_mask,
    check_bad_image_policy,
    check_dir,
    is_number,
    read_image,
)
from lavise_fast.data.transforms import DEFAULT_REFERENCE_TRANSFORM, PairTransform, TargetTransform
from lavise_fast.errors import InputError, InputTypeError, MissingInputError
from lavise_fast.files import read_json

__all__ = ["VisualGenomeObjects", "normalize_name"]

_TO_TENSOR = TargetTransform(resize=None, crop=None, normalize=False)
_BOX_KEYS = ("x", "y", "w", "h")


def normalize_name(name: str) -> str:
    """An object name as LaViSE's labels write it: lower case, surrounding blanks removed, inner runs of
    blanks made single spaces (``" Traffic  Light "`` -> ``"traffic light"``).

    Args:
        name: an object name (anything: ``str()`` is taken first).
    """
    return " ".join(str(name).lower().split())


def _number(value: Any) -> float:
    if not is_number(value):
        raise InputTypeError(f"expected a finite number, got {value!r}")
    return float(value)


class VisualGenomeObjects(torch.utils.data.Dataset):
    """Visual Genome objects as reference items: one mask per object name per image, the union of
    all the boxes of that name (as the official LaViSE ``VisualGenome`` dataset builds them).

    Item ``i`` is ``(image float32 [3, H, W], masks bool [M, H, W], labels list[str])`` for the
    ``i``-th entry of ``objects_json``; labels in order of first appearance. H, W are the transform's
    output size (224 x 224 by default) or, with ``transform=None``, the image's own (values in 0..1).

    ``objects_json`` may be either layout:

    - the official LaViSE ``vg/vg_objects.json``: a list of
      ``{"image_id": 1, "objects": {"tree": [{"x": .., "y": .., "w": .., "h": ..}, ...], ...}}``;
    - Visual Genome's own ``objects.json``: a list of ``{"image_id": 1, "objects": [{"object_id": ..,
      "x": .., "y": .., "w": .., "h": .., "names": ["tree"], ...}, ...]}`` (``"name"`` also accepted);
      an object with several names counts under each of them.

    Names are normalised with :func:`normalize_name`. ``labels`` (default
    :func:`lavise_fast.vocabularies.visual_genome_labels`, the 1,208 LaViSE training labels) says which
    names count; the others are ignored; ``labels="all"`` keeps every name. A box covers the pixels
    ``x <= col < x + w``, ``y <= row < y + h`` (the official ``mask[y:y+h, x:x+w]``), clipped to the image;
    a name whose boxes all fall outside the image is dropped. Images with no object have M = 0;
    ``skip_empty=True`` drops, when the file is read, the entries with no box of a counted name.

    Image files are ``image_dir / filename.format(image_id=...)`` (``"<image_id>.jpg"``, as in
    Visual Genome's ``VG_100K``); ``image_dir`` may be a list of directories (``VG_100K``,
    ``VG_100K_2``), searched in order. ``transform(image: PIL.Image, masks [M, H, W]) -> (image, masks)``,
    by default the official one (:class:`ReferenceTransform`). Errors name the file at fault. An image
    file that exists but does not decode is skipped with a warning naming it (``on_bad_image="skip"``,
    the default: the item is a blank image, zeros after the transform, of 256 x 256 pixels before it,
    with M = 0) or raises ``ValueError`` (``on_bad_image="raise"``); a missing one always raises.

    Args:
        image_dir: the folder of the images, or a list of folders searched in order.
        objects_json: the objects file, in either layout above.
        labels: the names that count (normalised); None: the 1,208 LaViSE training labels; ``"all"``: every name.
        transform: the pair transform of image and masks (default the official LaViSE one); None: the image as a
            tensor in 0..1 at its own size, masks untouched.
        skip_empty: drop the entries with no box of a counted name.
        filename: the image file's name, a format string with the one field ``{image_id}``.
        on_bad_image: "skip" (warn, blank item) or "raise" for an image file that does not decode.

    Attributes: ``ids`` (image ids, item order), ``labels`` (the counted names, or None for all).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike | Sequence[str | os.PathLike],
        objects_json: str | os.PathLike,
        labels: Iterable[str] | str | None = None,
        transform: PairTransform | None = DEFAULT_REFERENCE_TRANSFORM,
        *,
        skip_empty: bool = False,
        filename: str = "{image_id}.jpg",
        on_bad_image: str = "skip",
    ) -> None:
        self.on_bad_image = check_bad_image_policy(on_bad_image)
        try:
            filename.format(image_id=1)
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise InputError(
                f"filename must be a format string with the field {{image_id}} only, got {filename!r} "
                f"({type(error).__name__}: {error})"
            ) from None
        dirs = [image_dir] if isinstance(image_dir, (str, os.PathLike)) else list(image_dir)
        if not dirs:
            raise InputError("image_dir must name at least one directory")
        self.image_dirs = [check_dir(d, "image_dir") for d in dirs]
        self.objects_json = Path(objects_json)
        self.transform = transform
        self.filename = filename
        if labels is None:
            from lavise_fast.vocabularies import visual_genome_labels

            labels = visual_genome_labels()
        if isinstance(labels, str):
            if labels != "all":
                raise InputTypeError(f"labels must be a list of names, None or 'all', got the string {labels!r}")
            self.labels: frozenset[str] | None = None
        else:
            self.labels = frozenset(normalize_name(name) for name in labels)
        data = read_json(self.objects_json, "Visual Genome objects file")
        if not isinstance(data, list):
            raise InputError(
                f"Visual Genome objects file {str(self.objects_json)!r} must hold a JSON list of "
                f"{{'image_id', 'objects'}} entries, got a {type(data).__name__}"
            )
        # per entry: (image id, names, boxes float64 [k, 4] as x, y, w, h, owner [k]: index into names)
        self._entries: list[tuple[Any, tuple[str, ...], np.ndarray, np.ndarray]] = []
        for n, entry in enumerate(data):
            parsed = self._parse(n, entry)
            if skip_empty and len(parsed[1]) == 0:
                continue
            self._entries.append(parsed)
        self.ids = [entry[0] for entry in self._entries]

    def _error(self, where: str, problem: str) -> ValueError:
        return ValueError(f"Visual Genome objects file {str(self.objects_json)!r}: {where} {problem}")

    def _parse(self, n: int, entry: Any) -> tuple[Any, tuple[str, ...], np.ndarray, np.ndarray]:
        if not isinstance(entry, dict) or "objects" not in entry or ("image_id" not in entry and "id" not in entry):
            raise self._error(f"entry {n}", "must be an object with 'image_id' and 'objects'")
        image_id = entry.get("image_id", entry.get("id"))
        where = f"entry {n} (image_id {image_id})"
        objects = entry["objects"]
        named: list[tuple[str, Any]] = []  # (raw name, box) pairs
        if isinstance(objects, dict):  # the official LaViSE layout: name -> boxes
            for name, boxes in objects.items():
                if not isinstance(boxes, list):
                    raise self._error(where, f"object {name!r}: expected a list of boxes")
                named += [(name, box) for box in boxes]
        elif isinstance(objects, list):  # Visual Genome's objects.json
            for j, obj in enumerate(objects):
                names = obj.get("names", obj.get("name")) if isinstance(obj, dict) else None
                if isinstance(names, str):
                    names = [names]
                if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
                    raise self._error(where, f"object {j}: expected 'names' (a list of strings), got {names!r}")
                named += [(name, obj) for name in dict.fromkeys(normalize_name(s) for s in names)]
        else:
            raise self._error(where, f"'objects' must be a list or an object, got {type(objects).__name__}")
        index: dict[str, int] = {}
        boxes, owner = [], []
        for name, box in named:
            if not isinstance(name, str):
                raise self._error(where, f"has an object name that is not a string: {name!r}")
            name = normalize_name(name)
            if not name or (self.labels is not None and name not in self.labels):
                continue
            try:
                boxes.append([_number(box[k]) for k in _BOX_KEYS])
            except (KeyError, TypeError) as error:
                raise self._error(where, f"object {name!r}: a box needs numbers 'x', 'y', 'w', 'h' ({error})") from None
            owner.append(index.setdefault(name, len(index)))
        return (
            image_id,
            tuple(index),
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(owner, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self._entries)

    def image_path(self, index: int) -> Path:
        """The file of item ``index`` (the first directory holding it; else where it was expected).

        Args:
            index: the item's index (0 .. ``len(self) - 1``).
        """
        name = self.filename.format(image_id=self._entries[index][0])
        for directory in self.image_dirs:
            if (directory / name).is_file():
                return directory / name
        return self.image_dirs[0] / name

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        _, names, boxes, owner = self._entries[index]
        path = self.image_path(index)
        if not path.is_file():
            tried = ", ".join(repr(str(d / path.name)) for d in self.image_dirs)
            raise MissingInputError(f"image file {tried} does not exist (from {str(self.objects_json)!r})")
        image = read_image(path, index, self.on_bad_image)
        if image is None:
            return blank_item(self.transform, 256, 256)
        width, height = image.size
        masks = np.zeros((len(names), height, width), dtype=bool)
        for (x, y, w, h), k in zip(boxes.tolist(), owner.tolist(), strict=True):
            box_mask(height, width, x, y, w, h, out=masks[k])
        keep = masks.reshape(len(names), height * width).any(1)
        labels = [name for name, kept in zip(names, keep.tolist(), strict=True) if kept]
        mask_tensor = torch.from_numpy(masks[keep])
        if self.transform is None:
            return _TO_TENSOR(image), mask_tensor, labels
        out_image, out_masks = self.transform(image, mask_tensor)
        return out_image, out_masks, labels

    def __repr__(self) -> str:
        labels = "all" if self.labels is None else len(self.labels)
        return (
            f"{type(self).__name__}({len(self)} images, labels={labels}, "
            f"objects_json={str(self.objects_json)!r}, transform={self.transform!r})"
        )
