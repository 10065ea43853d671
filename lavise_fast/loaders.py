"""What a sweep needs of a target loader: its image batches, and loaders over a part of its dataset.

The parts: the images after a checkpoint, the top images to re-run, a rank's share.

A loader yields float image batches [N, 3, H, W], or tuples/lists that start with one; an
image's index is its position in iteration order. A ``DataLoader`` over a map-style dataset read
in order (``shuffle=False``) can be cut into parts without reading the rest; any other loader is
read again and the wanted images picked out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler, Subset

from lavise_fast.errors import InputError, InputTypeError

__all__ = ["image_batch", "batch_size_of", "is_sequential", "subset_loader", "images_at", "batches_after",
           "default_workers", "length_of", "images_at_most"]


def length_of(items) -> int | None:
    """``len(items)``, or None for what has no length (an iterable, a DataLoader over an
    ``IterableDataset`` without ``__len__``, whose ``len`` raises TypeError).

    Args:
        items: a loader, a dataset or any iterable.
    """
    try:
        return len(items)
    except TypeError:
        return None


def images_at_most(loader) -> int | None:
    """At least as many images as one pass over ``loader`` yields, known before it starts, or None:
    a list or tuple of batches: their images; a DataLoader over a map-style dataset:
    ``len(loader) * batch_size`` (its last batch may be smaller); anything else (an iterable
    dataset's length is only what it says, and each worker may yield it whole): None.

    Args:
        loader: any loader.
    """
    if isinstance(loader, (list, tuple)):
        return sum(image_batch(batch).shape[0] for batch in loader)
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    batches, size = length_of(loader), loader.batch_size
    return batches * size if batches is not None and isinstance(size, int) and size > 0 else None


def default_workers() -> int:
    """DataLoader worker processes for decoding image files: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def image_batch(batch) -> torch.Tensor:
    """The image batch [N, 3, H, W] of a loader's item; TypeError naming what was found otherwise.

    Args:
        batch: what the loader yielded: a float tensor [N, 3, H, W], or a tuple or list starting with one.
    """
    images = batch[0] if isinstance(batch, (tuple, list)) and len(batch) else batch
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        found = repr(images)[:60]
        if torch.is_tensor(images):
            found = f"{images.dtype} tensor of shape {tuple(images.shape)}"
        raise InputTypeError(f"the loader must yield float image batches [N, 3, H, W] (or tuples starting with one), "
                        f"got {found}")
    return images


def batch_size_of(loader, default: int) -> int:
    """The loader's ``batch_size`` when it is a positive int, else ``default``.

    Args:
        loader: any loader (a DataLoader has ``batch_size``; others may not).
        default: the batch size to use otherwise.
    """
    size = getattr(loader, "batch_size", None)
    return int(size) if isinstance(size, int) and size > 0 else default


def is_sequential(loader) -> bool:
    """Whether ``loader`` is a DataLoader over a sized map-style dataset, read in order in batches of ``batch_size``.

    Such a loader can be cut into parts (:func:`subset_loader`) without reading the rest.

    Args:
        loader: any loader.
    """
    dataset = getattr(loader, "dataset", None)
    return (isinstance(loader, DataLoader) and not isinstance(dataset, IterableDataset)
            and hasattr(dataset, "__len__") and isinstance(loader.sampler, SequentialSampler)
            and loader.batch_size is not None)


def subset_loader(loader: DataLoader, indices: Sequence[int], batch_size: int | None = None) -> DataLoader:
    """A DataLoader like ``loader`` (collate, workers, pinning, drop_last) over ``dataset[indices]``, in order.

    Args:
        loader: a DataLoader over a map-style dataset.
        indices: the dataset positions to read, in the order given.
        batch_size: the new loader's batch size; None: ``loader.batch_size``.
    """
    return DataLoader(Subset(loader.dataset, indices), batch_size=batch_size or loader.batch_size, shuffle=False,
                      drop_last=loader.drop_last, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory)


def images_at(loader, wanted: list[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (indices [n] int64, images [n, 3, H, W]) for the sorted image positions ``wanted``.

    Args:
        loader: the target loader; a sequential one (:func:`is_sequential`) reads only the wanted images,
            any other is iterated again from the start.
        wanted: the image positions (in iteration order) to yield, sorted ascending.
        batch_size: the batch size of the subset loader (used for a sequential loader only).

    Raises:
        InputError: a second iteration of ``loader`` ends before the last wanted image.
    """
    if is_sequential(loader):
        start = 0
        for batch in subset_loader(loader, wanted, batch_size):
            images = image_batch(batch)
            yield torch.tensor(wanted[start : start + len(images)]), images
            start += len(images)
        return
    want = torch.tensor(wanted)
    base = found = 0
    for batch in loader:
        images = image_batch(batch)
        lo, hi = torch.searchsorted(want, torch.tensor([base, base + len(images)])).tolist()
        if hi > lo:
            yield want[lo:hi], images[want[lo:hi] - base]
            found += hi - lo
        base += len(images)
        if found == len(wanted):
            return
    raise InputError(f"iterating the loader a second time gave {base} images, not the {wanted[-1] + 1} or more of "
                     "the first pass: this method re-runs the top images, so the loader must be re-iterable and "
                     "yield the same images in the same order (or pass thresholds= for method='activation')")


def batches_after(loader, batches: int, images: int) -> Iterable:
    """The loader's batches after its first ``batches``, which held ``images`` images.

    Args:
        loader: the target loader.
        batches: how many batches were read already (0: the loader itself).
        images: how many images those batches held.

    Raises:
        InputError: (when iterated) the loader's first ``batches`` batches now hold another number of images.
    """
    if batches == 0:
        return loader
    if is_sequential(loader) and not loader.drop_last:
        return subset_loader(loader, range(images, len(loader.dataset)))
    return _drop_batches(loader, batches, images)


def _drop_batches(loader, batches: int, images: int) -> Iterator:
    it = iter(loader)
    seen = 0
    for _ in range(batches):
        batch = next(it, None)
        if batch is None:
            break
        seen += image_batch(batch).shape[0]
    if seen != images:
        raise InputError(f"the checkpoint had read {batches} batches holding {images} images, and the loader's first "
                         f"{batches} batches now hold {seen}: resume with the same loader")
    yield from it
