"""Helpers shared by the reference loaders: reading files with errors that name them, box masks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON of ``path``; FileNotFoundError / ValueError naming the file (``what`` says what it is)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist (or is not a file)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from None
    except OSError as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {error}") from None


def check_dir(path: str | os.PathLike, argument: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{argument} {str(path)!r} does not exist (or is not a directory)")
    return path


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as an RGB PIL image, fully read; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"image file {str(path)!r} cannot be read as an image: {error}") from None


def box_mask(
    height: int, width: int, x: float, y: float, w: float, h: float, out: np.ndarray | None = None
) -> np.ndarray:
    """A bool [height, width] mask of the box (x, y, w, h), clipped to the image.

    Pixel (i, j) is in the box when ``x <= j < x + w`` and ``y <= i < y + h`` (pixel centres at integer
    coordinates, as pycocotools rasterises polygons): for integer boxes, columns x .. x+w-1, as the
    official LaViSE code slices ``mask[y:y+h, x:x+w]``. With ``out`` given, the box is OR-ed into it.
    """
    if out is None:
        out = np.zeros((height, width), dtype=bool)
    x0, x1 = max(math.ceil(x), 0), min(math.ceil(x + w), width)
    y0, y1 = max(math.ceil(y), 0), min(math.ceil(y + h), height)
    if x0 < x1 and y0 < y1:
        out[y0:y1, x0:x1] = True
    return out
