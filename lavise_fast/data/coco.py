"""COCO instance annotations as a LaViSE reference set (through pycocotools)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from lavise_fast.data._common import (
    blank_item,
    box_mask,
    check_bad_image_policy,
    check_dir,
    is_number,
    read_image,
)
from lavise_fast.data.transforms import DEFAULT_REFERENCE_TRANSFORM, PairTransform, TargetTransform
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import read_json

__all__ = ["CocoInstances"]

_TO_TENSOR = TargetTransform(resize=None, crop=None, normalize=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CocoInstances(torch.utils.data.Dataset):
    """COCO instances (``instances_train2017.json`` and the like) as reference items.

    Item ``i`` is ``(image float32 [3, H, W], masks bool [M, H, W], labels list[str])`` for the image of
    the ``i``-th smallest image id: one mask per object (annotation) and ``labels[m]`` its category
    name as written in the file (multi-word names such as ``"traffic light"`` stay one string).
    H, W are the transform's output size (224 x 224 by default) or, with ``transform=None``, the
    image's own size (values then in 0..1, not normalised).

    - Masks are decoded by ``COCO.annToMask``: polygons, compressed RLE (string counts) and
      uncompressed RLE (list counts) alike. An annotation with an empty or missing ``segmentation``
      falls back to its ``bbox`` rectangle. An object whose mask is empty once decoded (e.g. a polygon
      entirely outside the image) is skipped.
    - Crowd annotations (``iscrowd: 1``) are skipped.
    - An image with no object keeps its place with M = 0 (masks ``[0, H, W]``, labels ``[]``);
      ``skip_empty=True`` instead drops, when the file is read, every image with no non-crowd
      annotation of a selected category (an item may still come out with M = 0 if all its
      masks decode empty).
    - ``categories``: names of the categories to keep (default: all).

    Images are read with PIL and converted to RGB; the size stored in the file must match the
    image's. An image file that exists but does not decode (truncated, corrupted, not an image) is
    skipped with a warning naming it (``on_bad_image="skip"``, the default: the item is a blank
    image, zeros after the transform, with M = 0, so that indices stay those of the file) or raises
    ``ValueError`` (``on_bad_image="raise"``); a missing image file always raises.
    ``transform(image: PIL.Image, masks: bool tensor [M, H, W]) -> (image, masks)``, by default the
    official LaViSE one (:class:`ReferenceTransform`: resize 256, crop 224, ImageNet normalisation).
    Errors name the annotation file, the image file or the argument at fault.

    Args:
        image_dir: the folder of the images (``file_name`` in the file is relative to it).
        annotation_file: the COCO instances JSON file.
        transform: the pair transform of image and masks (default the official LaViSE one); None: the image as a
            tensor in 0..1 at its own size, masks untouched.
        categories: names of the categories to keep; None: all.
        skip_empty: drop the images with no non-crowd annotation of a selected category.
        on_bad_image: "skip" (warn, blank item) or "raise" for an image file that does not decode.

    Attributes: ``coco`` (the pycocotools ``COCO`` index), ``ids`` (image ids, item order),
    ``category_names`` (category id -> name).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transform: PairTransform | None = DEFAULT_REFERENCE_TRANSFORM,
        *,
        categories: Iterable[str] | None = None,
        skip_empty: bool = False,
        on_bad_image: str = "skip",
    ) -> None:
        self.on_bad_image = check_bad_image_policy(on_bad_image)
        self.image_dir = check_dir(image_dir, "image_dir")
        self.annotation_file = Path(annotation_file)
        self.transform = transform
        data = read_json(self.annotation_file, "COCO annotation file")
        self._validate(data)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.category_names: dict[int, str] = {c["id"]: str(c["name"]).strip() for c in data.get("categories", [])}
        if categories is None:
            self._selected = set(self.category_names)
        else:
            if isinstance(categories, str):
                raise InputTypeError(f"categories must be a list of category names, got the string {categories!r}")
            wanted = list(categories)
            by_name = {name: cid for cid, name in self.category_names.items()}
            unknown = [name for name in wanted if name not in by_name]
            if unknown:
                raise InputError(
                    f"categories {unknown} are not in {str(self.annotation_file)!r} "
                    f"(it has {sorted(by_name)[:10]}{' ...' if len(by_name) > 10 else ''})"
                )
            self._selected = {by_name[name] for name in wanted}
        ids = sorted(self.coco.imgs)
        if skip_empty:
            ids = [i for i in ids if any(self._counts(a) for a in self.coco.imgToAnns.get(i, []))]
        self.ids: list[int] = ids

    def _validate(self, data: Any) -> None:
        where = repr(str(self.annotation_file))
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise InputError(f"COCO annotation file {where} must hold a JSON object with an 'images' list")
        for key in ("annotations", "categories"):
            if key in data and not isinstance(data[key], list):
                raise InputError(f"COCO annotation file {where}: '{key}' must be a list")
        image_ids = set()
        for n, image in enumerate(data["images"]):
            if not isinstance(image, dict) or any(k not in image for k in ("id", "file_name", "height", "width")):
                raise InputError(
                    f"COCO annotation file {where}: images[{n}] needs 'id', 'file_name', 'height', 'width'"
                )
            height, width = image["height"], image["width"]
            if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
                raise InputError(
                    f"COCO annotation file {where}: images[{n}] has a bad height/width: expected positive "
                    f"integers, got {height!r} x {width!r}"
                )
            if not (_is_int(image["id"]) or isinstance(image["id"], str)):
                raise InputError(
                    f"COCO annotation file {where}: images[{n}] has a bad id {image['id']!r} (expected an integer)"
                )
            if image["id"] in image_ids:
                raise InputError(f"COCO annotation file {where}: images[{n}] repeats the id {image['id']!r}")
            if not isinstance(image["file_name"], str) or not image["file_name"].strip():
                raise InputError(
                    f"COCO annotation file {where}: images[{n}] has a bad file_name {image['file_name']!r}"
                )
            image_ids.add(image["id"])
        category_ids = set()
        for n, category in enumerate(data.get("categories", [])):
            if not isinstance(category, dict) or "id" not in category or "name" not in category:
                raise InputError(f"COCO annotation file {where}: categories[{n}] needs 'id' and 'name'")
            category_ids.add(category["id"])
        for n, ann in enumerate(data.get("annotations", [])):
            if not isinstance(ann, dict):
                raise InputError(f"COCO annotation file {where}: annotations[{n}] is not an object")
            name = f"annotations[{n}] (id {ann.get('id')})"
            if ann.get("image_id") not in image_ids:
                raise InputError(
                    f"COCO annotation file {where}: {name} refers to unknown image_id {ann.get('image_id')}"
                )
            if ann.get("category_id") not in category_ids:
                raise InputError(
                    f"COCO annotation file {where}: {name} refers to unknown category_id {ann.get('category_id')}"
                )
            if not ann.get("segmentation") and not ann.get("bbox"):
                raise InputError(f"COCO annotation file {where}: {name} has neither 'segmentation' nor 'bbox'")
            _check_coordinates(ann, where, name)
            bbox = ann.get("bbox")
            if not ann.get("segmentation") and not (
                isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)
            ):
                raise InputError(
                    f"COCO annotation file {where}: {name} has no segmentation and a bad bbox "
                    f"{bbox!r} (expected [x, y, width, height], finite numbers)"
                )

    def _counts(self, ann: dict) -> bool:
        return not ann.get("iscrowd", 0) and ann["category_id"] in self._selected

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """The file of item ``index``.

        Args:
            index: the item's index (0 .. ``len(self) - 1``).
        """
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        segmentation = ann.get("segmentation")
        if not segmentation:
            x, y, w, h = (float(v) for v in ann["bbox"])
            return box_mask(height, width, x, y, w, h)
        try:
            with warnings.catch_warnings():  # pycocotools' decoder trips a NumPy 2 DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = self.coco.annToMask(ann)
        except Exception as error:
            raise InputError(
                f"COCO annotation file {str(self.annotation_file)!r}: the segmentation of annotation "
                f"{ann.get('id')} cannot be decoded: {error}"
            ) from None
        if mask.shape != (height, width):
            raise InputError(
                f"COCO annotation file {str(self.annotation_file)!r}: annotation {ann.get('id')} decodes to a "
                f"{mask.shape[0]}x{mask.shape[1]} mask, but its image is {height}x{width}"
            )
        return mask.astype(bool)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        height, width = info["height"], info["width"]
        image = read_image(path, index, self.on_bad_image)
        if image is None:
            return blank_item(self.transform, height, width)
        if image.size != (width, height):
            raise InputError(
                f"image file {str(path)!r} is {image.width}x{image.height} (width x height), but "
                f"{str(self.annotation_file)!r} says {width}x{height}"
            )
        masks, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if not self._counts(ann):
                continue
            mask = self._mask(ann, height, width)
            if mask.any():
                masks.append(mask)
                labels.append(self.category_names[ann["category_id"]])
        if masks:
            mask_tensor = torch.from_numpy(np.stack(masks))
        else:
            mask_tensor = torch.zeros((0, height, width), dtype=torch.bool)
        if self.transform is None:
            return _TO_TENSOR(image), mask_tensor, labels
        out_image, out_masks = self.transform(image, mask_tensor)
        return out_image, out_masks, labels

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {len(self._selected)} categories, "
            f"annotation_file={str(self.annotation_file)!r}, transform={self.transform!r})"
        )


_MAX_COORDINATE = float(1 << 20)  # pixels: far beyond any image, far below what pycocotools' ints overflow at


def _check_coordinates(ann: dict, where: str, name: str) -> None:
    """Refuses polygon points and boxes that are not finite numbers within +-2**20 pixels (pycocotools
    overflows, or crashes the process, on coordinates of billions)."""
    bbox = ann.get("bbox")
    groups = [("bbox", bbox)] if isinstance(bbox, list) else []
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        groups += [("segmentation polygon", polygon) for polygon in segmentation]
    for what, values in groups:
        if not isinstance(values, list) or not all(is_number(v) and abs(v) <= _MAX_COORDINATE for v in values):
            shown = values if not isinstance(values, list) else [v for v in values if not (
                is_number(v) and abs(v) <= _MAX_COORDINATE)][:3]
            raise InputError(f"COCO annotation file {where}: {name} has a {what} with coordinates that are not "
                             f"finite numbers within +-{int(_MAX_COORDINATE)} pixels: {shown!r:.80}")

