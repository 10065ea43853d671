"""Helpers shared by the reference loaders: reading images with errors that name them, box masks."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lavise_fast.errors import InputError, MissingInputError


def check_dir(path: str | os.PathLike, argument: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, refused unless it is an existing folder.

    Args:
        path: the folder to check.
        argument: the argument's name, for the error message.

    Raises:
        MissingInputError: ``path`` does not exist or is not a folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingInputError(f"{argument} {str(path)!r} does not exist (or is not a directory)")
    return path


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """A grey image of more than 8 bits as 8 bits, scaled, not clipped (PIL's ``convert`` clips: a
    16-bit PNG would turn white): 16-bit integers (``I;16*``, or ``I`` within 0..65535) as
    ``round(v / 257)``; floats (``F``, a float TIFF) in [0, 1] as ``round(255 v)``; anything else refused."""
    values = np.asarray(image)
    if image.mode == "F":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise InputError(f"image file {str(path)!r} holds floating-point pixels from {low:g} to {high:g} "
                             "(or NaN/infinity): lavise_fast reads float images with values in [0, 1]; convert "
                             "it to 8 or 16 bits")
        scaled = np.rint(values.astype(np.float64) * 255)
    else:
        values = values.astype(np.int64)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise InputError(f"image file {str(path)!r} holds {image.mode} pixels from {low} to {high}: "
                             "lavise_fast reads integer images of at most 16 bits (0..65535)")
        scaled = np.rint(values / 257)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as an RGB PIL image, fully read; errors name the file. Grey images of 16
    bits (PNG, TIFF) or of floats in [0, 1] (TIFF) are scaled to 8 bits, not clipped.

    Args:
        path: the image file.

    Raises:
        MissingInputError: there is no file at ``path``.
        InputError: the file does not decode as an image, or holds 32-bit integers above 65535 or floats
            outside [0, 1].
    """
    if not path.is_file():
        raise MissingInputError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            deep = image.mode.startswith("I") or image.mode == "F"
            image = image.copy() if deep else image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"image file {str(path)!r} cannot be read as an image: {error}") from None
    return _eight_bit(image, path).convert("RGB") if deep else image


BAD_IMAGE_POLICIES = ("skip", "raise")


def check_bad_image_policy(on_bad_image: str) -> str:
    """``on_bad_image``, refused unless it is one of ``BAD_IMAGE_POLICIES`` ("skip", "raise").

    Args:
        on_bad_image: what a loader does with an image that does not decode.

    Raises:
        InputError: another value.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise InputError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    return on_bad_image


def read_image(path: Path, index: int, on_bad_image: str) -> Image.Image | None:
    """:func:`open_rgb`, except that with ``on_bad_image="skip"`` a file that exists but does not decode
    gives a warning naming it and None (a missing file always raises: it means a wrong folder).

    Args:
        path: the image file.
        index: the item's index in its dataset, named in the warning.
        on_bad_image: "skip" (warn, give None) or "raise" for a file that does not decode.
    """
    try:
        return open_rgb(path)
    except ValueError as error:
        if on_bad_image == "raise":
            raise
        warnings.warn(f"skipped item {index}: {error}; a blank image with no object stands in its place", stacklevel=3)
        return None


def blank_item(transform: Any, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The item that stands for a skipped image: zeros (the mean colour once normalised) of the shape the
    transform gives a ``height`` x ``width`` image, no mask, no label.

    Args:
        transform: the dataset's pair transform ``(PIL image, masks [M, H, W]) -> (image, masks)``; None: the
            image is zeros [3, height, width].
        height: the skipped image's height (the blank one's before the transform).
        width: the skipped image's width.

    Returns:
        ``(image [3, h, w] zeros, masks [0, h, w] bool, [])``.
    """
    masks = torch.zeros((0, height, width), dtype=torch.bool)
    if transform is None:
        return torch.zeros(3, height, width), masks, []
    image, masks = transform(Image.new("RGB", (width, height)), masks)
    return torch.zeros_like(image), masks, []


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool).

    Args:
        value: anything (e.g. a number read from an annotation file).
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def box_mask(
    height: int, width: int, x: float, y: float, w: float, h: float, out: np.ndarray | None = None
) -> np.ndarray:
    """A bool [height, width] mask of the box (x, y, w, h), clipped to the image.

    Pixel (i, j) is in the box when ``x <= j < x + w`` and ``y <= i < y + h`` (pixel centres at integer
    coordinates, as pycocotools rasterises polygons): for integer boxes, columns x .. x+w-1, as the
    official LaViSE code slices ``mask[y:y+h, x:x+w]``. With ``out`` given, the box is OR-ed into it.

    Args:
        height: the image's height in pixels (the mask's rows).
        width: the image's width in pixels (the mask's columns).
        x: the box's left edge, in pixels.
        y: the box's top edge, in pixels.
        w: the box's width, in pixels.
        h: the box's height, in pixels.
        out: a bool [height, width] mask to OR the box into (and return); None: a new one of zeros.
    """
    if out is None:
        out = np.zeros((height, width), dtype=bool)
    x0, x1 = max(math.ceil(x), 0), min(math.ceil(x + w), width)
    y0, y1 = max(math.ceil(y), 0), min(math.ceil(y + h), height)
    if x0 < x1 and y0 < y1:
        out[y0:y1, x0:x1] = True
    return out
