"""Batching of reference items: images stacked, every image's masks concatenated with their row."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lavise_fast.errors import InputError, InputTypeError

__all__ = ["collate_reference"]


def collate_reference(
    items: Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[str]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Reference items ``(image [3, H, W], masks [M, h, w] bool, labels list[str])`` -> a batch.

    Returns ``(images [B, 3, H, W], masks [sum M, h, w] bool, rows [sum M] int64, labels list[str])``:
    ``rows[m]`` is the position in the batch of the image that mask ``m`` belongs to and ``labels[m]``
    its name. Items may hold no object (M = 0). All images must share one shape, and all masks one
    ``h, w``: the image's ``H, W``, or a resized copy of it (the same aspect ratio, to a pixel;
    ``masked_pool`` resizes masks to the feature grid anyway). Use it as a DataLoader's ``collate_fn``.

    Args:
        items: the batch's reference items, at least one.

    Raises:
        TypeError, ValueError: naming the item (its place in the batch) and what is wrong with it.
    """
    if len(items) == 0:
        raise InputError("collate_reference needs at least one item, got an empty batch")
    images, masks, rows, labels = [], [], [], []
    for b, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise InputTypeError(
                "reference items must be (image [3, H, W], masks [M, H, W], labels list[str]); "
                f"item {b} is a {type(item).__name__}" + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
            )
        image, item_masks, item_labels = item
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputError(f"item {b}: the image must be a tensor [3, H, W], got {shape}")
        if images and image.shape != images[0].shape:
            raise InputError(
                f"item {b}: image of shape {tuple(image.shape)}, but item 0 has {tuple(images[0].shape)}; "
                "a batch needs images of one size (use a transform that crops, e.g. ReferenceTransform())"
            )
        if isinstance(item_labels, str):
            raise InputTypeError(f"item {b}: labels must be a list of strings, got the string {item_labels!r}")
        item_labels = list(item_labels)
        if not isinstance(item_masks, torch.Tensor):
            raise InputTypeError(f"item {b}: masks must be a tensor [M, H, W], got {type(item_masks).__name__}")
        if item_masks.dim() != 3 or item_masks.shape[0] != len(item_labels):
            raise InputError(
                f"item {b}: an item has masks of shape {tuple(item_masks.shape)} for {len(item_labels)} labels; "
                "expected one [H, W] mask per label"
            )
        if len(item_labels) and not _covers_image(tuple(item_masks.shape[1:]), tuple(image.shape[1:])):
            raise InputError(
                f"item {b}: masks of size {tuple(item_masks.shape[1:])} for an image of size {tuple(image.shape[1:])}; "
                "expected the image's size or a resized copy of it (same aspect ratio): transform the image and "
                "its masks together, e.g. with ReferenceTransform()"
            )
        if masks and item_masks.shape[1:] != masks[0].shape[1:]:
            raise InputError(
                f"item {b}: masks of size {tuple(item_masks.shape[1:])}, but item 0 has {tuple(masks[0].shape[1:])}; "
                "all masks of a batch must share one [H, W]"
            )
        for label in item_labels:
            if not isinstance(label, str):
                raise InputTypeError(f"item {b}: labels must be strings, got {type(label).__name__} {label!r}")
        images.append(image)
        masks.append(item_masks.bool())
        rows += [b] * len(item_labels)
        labels += item_labels
    return torch.stack(images), torch.cat(masks), torch.tensor(rows, dtype=torch.long), labels


def _covers_image(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether masks of ``mask_size`` (h, w) can be the image's (H, W) resized: both sides at least one
    pixel and the aspect ratio the same to within a pixel (|h W - w H| <= max(H, W))."""
    (h, w), (height, width) = mask_size, image_size
    return h >= 1 and w >= 1 and abs(h * width - w * height) <= max(height, width)
