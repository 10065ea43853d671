"""Datasets of images alone, the ``loader`` that :func:`lavise_fast.explain` reads.

:class:`ImageFolder`: every image under a folder, sorted by path, through
:class:`lavise_fast.data.TargetTransform`. :class:`ImagesOf`: the images of a dataset of reference items."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from lavise_fast.data._common import read_image
from lavise_fast.data.transforms import TargetTransform
from lavise_fast.errors import InputError, MissingInputError

__all__ = ["ImageFolder", "ImagesOf", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolder(torch.utils.data.Dataset):
    """The images of a folder (and its subfolders), sorted by relative path: item i is the i-th image
    through :class:`lavise_fast.data.TargetTransform` (resize, centre crop, ImageNet normalisation).
    A file that does not decode is skipped with a warning naming it: its item is a blank image (zeros,
    the mean colour), so that the indices stay those of the sorted file list.

    Args:
        folder: the folder of images.
        resize: the shorter side after resizing (default 256); None: no resize.
        crop: the side of the centre crop (default 224); None: no crop.
        files: the images, as POSIX paths relative to ``folder``, in item order; None: every file under
            ``folder`` with a suffix in ``IMAGE_SUFFIXES`` (any case), sorted.

    Raises:
        MissingInputError: ``folder`` is not a folder.
        InputError: no image (``files`` empty, or no image file under ``folder``).
    """

    def __init__(self, folder: str | os.PathLike, resize: int | None = 256, crop: int | None = 224,
                 files: list[str] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MissingInputError(f"image folder {str(self.folder)!r} does not exist (or is not a folder)")
        if files is None:
            files = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"image folder {str(self.folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        self.files = list(files)
        self.transform = TargetTransform(resize=resize, crop=crop)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = read_image(self.folder / self.files[index], index, "skip")
        if image is None:
            side = self.transform.crop or self.transform.resize or 1
            return torch.zeros_like(self.transform(Image.new("RGB", (side, side))))
        return self.transform(image)


class ImagesOf(torch.utils.data.Dataset):
    """The images of a dataset of reference items (the explain loader's view of the target part; the CLI's too).

    Item i is ``items[i][0]``.

    Args:
        items: a dataset of reference items ``(image [3, H, W], masks, labels)``.
    """

    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.items[index][0]
