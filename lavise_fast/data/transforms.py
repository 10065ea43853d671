"""The official LaViSE transforms, applied to an image and its object masks alike.

LaViSE (``image_datasets.py`` of the official code) evaluates and trains the explainer on images
resized so that their shorter side is 256 pixels (bilinear, antialiased, as PIL does it), centre
cropped to 224 x 224 and normalised with the ImageNet mean and std; the object masks go through the
same resize (nearest neighbour) and the same crop, so that they stay aligned with the image.

Only PIL and torch are needed (no torchvision). For a PIL image the result equals torchvision's
``Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)])``
exactly; a tensor image is resized with ``F.interpolate(mode="bilinear", antialias=True)``, which
matches PIL to within about one grey level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.validate import positive_int

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TargetTransform",
    "ReferenceTransform",
    "DEFAULT_REFERENCE_TRANSFORM",
    "PairTransform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PairTransform = Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""What the loaders accept as ``transform``: (PIL image, masks bool [M, H, W]) -> (image [3, h, w], masks [M, h, w])."""


def _resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``shorter`` and the aspect ratio kept (torchvision's rounding: truncation)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def _nearest_index(size: int, new_size: int) -> torch.Tensor:
    """For each of ``new_size`` output pixels, the input pixel PIL's NEAREST resize samples: the one under
    the output pixel's centre, ``(j + 0.5) * size / new_size``, accumulated in float64 as PIL does, so that
    ties fall the same way (``F.interpolate(mode="nearest-exact")`` differs from PIL at exact ties)."""
    steps = np.full(new_size, size / new_size)
    steps[0] *= 0.5
    return torch.from_numpy(np.minimum(np.cumsum(steps).astype(np.int64), size - 1))


def _crop_offset(size: int, crop: int) -> int:
    """Where a centre crop of ``crop`` starts in a side of ``size`` (negative: zero padding, as torchvision pads)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


def _crop_tensor(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """x[..., top:top+height, left:left+width], zero where the window leaves x."""
    h, w = x.shape[-2:]
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return x[..., top : top + height, left : left + width]
    out = x.new_zeros((*x.shape[:-2], height, width))
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y0 < y1 and x0 < x1:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = x[..., y0:y1, x0:x1]
    return out


class TargetTransform:
    """Image-only LaViSE transform for target sets (e.g. as the ``transform`` of a torchvision ImageFolder).

    ``TargetTransform()(image)`` takes a PIL image (any mode; converted to RGB), or a tensor [3, H, W]
    (uint8 in 0..255, or float in 0..1), and returns a float32 tensor [3, crop, crop].

    Args:
        resize: length of the shorter side after resizing (default 256); None: no resize.
        crop: side of the centre crop (default 224); None: no crop. A crop larger than the image
            pads with zeros (black, before normalisation), as torchvision's CenterCrop does.
        normalize: subtract ``mean`` and divide by ``std`` per channel (default ImageNet's);
            False leaves values in 0..1.
        mean: the per-channel (R, G, B) mean subtracted when ``normalize`` (default ``IMAGENET_MEAN``).
        std: the per-channel (R, G, B) std divided by when ``normalize``, all positive (default ``IMAGENET_STD``).
    """

    def __init__(
        self,
        resize: int | None = 256,
        crop: int | None = 224,
        normalize: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        for name, value in (("resize", resize), ("crop", crop)):
            if value is not None:
                positive_int(name, value)
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise InputError(f"mean and std must have 3 entries each, std positive; got mean={mean}, std={std}")
        self.resize, self.crop, self.normalize = resize, crop, bool(normalize)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resize={self.resize}, crop={self.crop}, normalize={self.normalize})"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the result for an input of ``height`` x ``width``.

        Args:
            height: the input image's height in pixels.
            width: the input image's width in pixels.
        """
        if self.resize is not None:
            height, width = _resized_size(height, width, self.resize)
        if self.crop is not None:
            height = width = self.crop
        return height, width

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self._image(image)[0]

    def _image(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """The transformed image [3, h, w], plus the input (H, W) and the resized (H, W)."""
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            size = (image.height, image.width)
            resized = size
            if self.resize is not None:
                resized = _resized_size(*size, self.resize)
                if resized != size:
                    image = image.resize((resized[1], resized[0]), Image.BILINEAR)
            if self.crop is not None:
                top, left = _crop_offset(resized[0], self.crop), _crop_offset(resized[1], self.crop)
                if (top, left, self.crop, self.crop) != (0, 0, *resized):
                    image = image.crop((left, top, left + self.crop, top + self.crop))
            out = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        elif isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise InputError(f"image must be a tensor [3, H, W], got shape {tuple(image.shape)}")
            if image.dtype == torch.uint8:
                out = image.float().div(255)
            elif image.is_floating_point():
                out = image.float()
            else:
                raise InputTypeError(f"a tensor image must be uint8 (0..255) or float (0..1), got {image.dtype}")
            size = resized = (int(out.shape[1]), int(out.shape[2]))
            if self.resize is not None:
                resized = _resized_size(*size, self.resize)
                if resized != size:
                    out = F.interpolate(out[None], size=resized, mode="bilinear", align_corners=False, antialias=True)
                    out = out[0].clamp_(0.0, 1.0) if image.dtype == torch.uint8 else out[0]
            if self.crop is not None:
                out = _crop_tensor(out, _crop_offset(resized[0], self.crop), _crop_offset(resized[1], self.crop),
                                   self.crop, self.crop)
        else:
            raise InputTypeError(f"image must be a PIL image or a torch tensor [3, H, W], got {type(image).__name__}")
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=out.dtype)[:, None, None]
            std = torch.tensor(self.std, dtype=out.dtype)[:, None, None]
            out = (out - mean) / std
        return out.contiguous(), size, resized


class ReferenceTransform(TargetTransform):
    """The LaViSE transform of a reference item: the image as :class:`TargetTransform` does it, and its
    object masks through the same resize (nearest neighbour: exactly PIL's NEAREST, i.e. the official
    ``mask_transforms``) and the same centre crop, so that both stay aligned.

    ``ReferenceTransform()(image, masks)`` takes a PIL image or a tensor [3, H, W] and masks [M, H, W]
    (bool, or anything nonzero-is-true; M may be 0) and returns (image float32 [3, crop, crop],
    masks bool [M, crop, crop]). Defaults: resize 256, crop 224, ImageNet normalisation.
    """

    def __call__(  # type: ignore[override]
        self, image: Image.Image | torch.Tensor, masks: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks = torch.as_tensor(masks)
        out, size, resized = self._image(image)
        if masks.dim() != 3 or tuple(masks.shape[1:]) != size:
            raise InputError(
                f"masks must have shape [M, {size[0]}, {size[1]}] to match the image, got {tuple(masks.shape)}"
            )
        masks = masks.bool()
        if resized != size:
            rows, cols = _nearest_index(size[0], resized[0]), _nearest_index(size[1], resized[1])
            masks = masks[:, rows][:, :, cols]
        if self.crop is not None:
            masks = _crop_tensor(masks, _crop_offset(resized[0], self.crop), _crop_offset(resized[1], self.crop),
                                 self.crop, self.crop)
        return out, masks.contiguous()


DEFAULT_REFERENCE_TRANSFORM = ReferenceTransform()
"""The official setting (resize 256, centre crop 224, ImageNet normalisation): the loaders' default."""
