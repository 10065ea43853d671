"""Reference pooling: the frozen model runs once over a reference set, each region's features pooled under its mask.

Pooling is ``masked_pool``; the vectors stay in memory or go to a memory-mapped ``.npy`` cache keyed
by the model's weights, shared by the ranks of a distributed run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lavise_fast import ops
from lavise_fast.data.collate import collate_reference
from lavise_fast.distributed import all_gather, current_shard, shard_indices
from lavise_fast.errors import DistributedError, InputError, InputTypeError
from lavise_fast.files import atomic_write, atomic_write_json, check_output
from lavise_fast.grids import layout_override
from lavise_fast.hashing import model_fingerprint
from lavise_fast.layers import LayerFeatures, model_device, resolve_layer

__all__ = ["pool_reference", "POOLED_FORMAT"]

POOLED_FORMAT = "lavise_fast.pooled/2"  # /2: one row per region, labels are lists of words
log = logging.getLogger(__name__)


@torch.no_grad()
def pool_reference(
    model: nn.Module,
    reference,
    layer: str | nn.Module,
    *,
    batch_size: int = 32,
    cache: str | os.PathLike | None = None,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    distributed: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor | np.ndarray, list[str], str]:
    """Runs the frozen model ONCE over the reference set and pools the layer's features under
    every region's mask (``masked_pool``): returns (vectors [regions, C] float32, labels, layer name)
    where ``labels[r]`` lists the words of region r: masks equal pixel for pixel in one image are one
    region with all their words (an object's colour, shape and pattern; two names of one box).

    Vectors are a CPU tensor, or with ``cache`` (a ``.npy`` path) a read-only memory-mapped
    array written there (atomically, with a ``.json`` beside it holding the labels and a key of
    the model's weights, the layer and the set's length), so that sets larger than memory train
    too and a second call with the same model, layer and set reads the file instead of running
    the model.

    ``distributed``: the ranks of the initialised ``torch.distributed`` process group each pool
    their share of the items (r, r + W, ...) and every rank returns what one process would, the
    rows in the items' order. Without ``cache`` the rows are gathered in memory. With ``cache``
    each rank writes its rows to a file beside it and rank 0 puts them in order into the ``.npy``,
    which every rank then maps, so no rank holds the set in memory; that needs a folder all ranks
    see (one machine, or a shared file system), and where rank 0 cannot see the other ranks'
    files the rows are gathered in memory instead and rank 0 writes the cache.

    Args:
        model: the frozen network (set to eval mode).
        reference: a map-style dataset of reference items ``(image [3, H, W], masks [M, H, W] bool, labels)``.
        layer: the layer to pool, a dotted module name or the module.
        batch_size: reference items per forward pass.
        cache: a ``.npy`` path for the vectors (its ``.json`` beside it); None: keep them in memory.
        num_workers: the DataLoader's worker processes.
        device: where the model runs (it must already be there); None: the device of its parameters.
        distributed: share the pass among the ranks of the initialised process group (above).
        progress: show a tqdm progress bar.

    Raises:
        InputError: the reference set holds no object, or an item is malformed (naming its batch).
    """
    name, module = resolve_layer(model, layer)
    shard = current_shard() if distributed else None
    meta_path = key = None
    if cache is not None:
        cache = Path(cache)
        meta_path = cache.with_name(cache.name + ".json")
        _check_cache_paths(cache, meta_path)
        override = layout_override(module)  # a layout set by hand changes the vectors
        key = model_fingerprint(model, name, len(reference), type(reference).__qualname__,
                                *([override] if override is not None else []))
        cached = _read_pooled(cache, meta_path, key)
        if shard is not None and not all(all_gather(cached is not None, "the cache's presence")):
            cached = None  # every rank takes the same path
        if cached is not None:
            return cached[0], cached[1], name
    device = model_device(model, device)
    items = reference
    if shard is not None:
        items = torch.utils.data.Subset(reference, shard_indices(len(reference), shard).tolist())
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_reference)
    vectors, labels, counts = [], [], []
    raw, channels = None, 0
    if cache is not None:
        part = "" if shard is None else f"rank{shard.rank}."
        raw = tempfile.NamedTemporaryFile(dir=cache.parent, prefix=f".{cache.name}.{part}", suffix=".raw")
    model.eval()
    try:
        with LayerFeatures(model, {name: module}) as tap:
            batches = _reference_batches(loader, batch_size)
            for images, masks, rows, names in tqdm(batches, total=len(loader), desc="pooling reference",
                                                   disable=not progress):
                masks, rows, names = _shared_regions(masks, rows, names)
                counts.append(torch.bincount(rows, minlength=len(images)))
                if not names:
                    continue
                features = tap(images.to(device))[name]
                pooled = ops.masked_pool(features, masks.to(device), rows).cpu()  # CPU rows: no device sync
                if raw is not None:
                    raw.write(pooled.numpy().tobytes())
                else:
                    vectors.append(pooled)
                labels += names
                channels = pooled.shape[1]
        if raw is not None:
            raw.flush()
        if shard is not None and raw is not None:
            merged = _merge_shard_files(Path(raw.name), labels, counts, channels, cache, meta_path, key, len(reference))
            if merged is not None:
                return merged[0], merged[1], name
            # rank 0 cannot see the other ranks' files: gather the rows in memory instead
            vectors = [torch.from_numpy(np.fromfile(raw.name, dtype=np.float32).reshape(len(labels), channels))]
        if shard is not None:
            vectors, labels = _in_item_order(vectors, labels, counts, len(reference))
            if labels and cache is not None and shard.rank == 0:
                _write_pooled([vectors[0].numpy()], vectors[0].shape, cache, meta_path, labels, key)
            if labels:
                return vectors[0], labels, name
        if not labels:
            raise InputError("the reference set holds no object (no mask with a label)")
        if raw is None:
            return torch.cat(vectors), labels, name
        _write_pooled(_file_chunks(Path(raw.name)), (len(labels), channels), cache, meta_path, labels, key)
    finally:
        if raw is not None:
            raw.close()
    return np.load(cache, mmap_mode="r"), labels, name


def _shared_regions(masks: torch.Tensor, rows: torch.Tensor, labels: list[str]
                    ) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """One region per distinct (image, mask): the words of masks that are equal pixel for pixel in one
    image (an object's colour, shape and pattern in ConceptWorld; two names of one COCO or VG box)
    become one row with several labels, so that training never pushes an object's true words apart.

    Returns (masks [G, H, W], rows [G], labels: G lists of distinct words, in first-seen order)."""
    if not labels:
        return masks, rows, []
    flat = masks.flatten(1)
    group: dict[tuple[int, bytes], int] = {}
    first, words = [], []
    for m, (row, label) in enumerate(zip(rows.tolist(), labels, strict=True)):
        key = (row, flat[m].numpy().tobytes())
        g = group.setdefault(key, len(first))
        if g == len(first):
            first.append(m)
            words.append([label])
        elif label not in words[g]:
            words[g].append(label)
    index = torch.tensor(first, dtype=torch.long)
    return masks[index], rows[index], words


def _reference_batches(loader, batch_size: int):
    """The loader's batches; a bad item (``collate_reference`` names it by its place in the batch) is
    reported with the range of reference items that batch holds."""
    batches, start = iter(loader), 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (ValueError, TypeError) as error:
            kind = InputTypeError if isinstance(error, TypeError) else InputError
            raise kind(f"in the batch of reference items {start} to {start + batch_size - 1}: {error}") from error
        yield batch
        start += batch_size


def _item_runs(counts: list[torch.Tensor], length: int):
    """For the items 0 .. length - 1 in order, sharded r, r + W, ... over the ranks (``counts[r]``:
    objects per item of rank r), (rank, first row in that rank's rows, rows) of each item with objects."""
    starts = [(torch.cumsum(c, 0) - c).tolist() for c in counts]
    world = len(counts)
    for i in range(length):
        rank, j = i % world, i // world
        n = int(counts[rank][j])
        if n:
            yield rank, starts[rank][j], n


def _shard_counts(counts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64)


def _in_item_order(vectors: list[torch.Tensor], labels: list[str], counts: list[torch.Tensor],
                   length: int) -> tuple[list[torch.Tensor], list[str]]:
    """Every rank's pooled rows (of its items r, r + W, ...; ``counts`` objects per item) gathered and
    put back in the order of the items: ([vectors [objects, C]] or [], labels)."""
    mine = (torch.cat(vectors) if vectors else None, labels, _shard_counts(counts))
    gathered = all_gather(mine, "the pooled reference features")
    parts, ordered = [], []
    for rank, start, n in _item_runs([c for _, _, c in gathered], length):
        rows, names, _ = gathered[rank]
        parts.append(rows[start : start + n])
        ordered += names[start : start + n]
    return ([torch.cat(parts)] if parts else []), ordered


def shard_files_readable(files: list[Path], sizes: list[int]) -> bool:
    """Whether this process sees every file, each of its size in bytes (the ranks' row files).

    Args:
        files: the ranks' row files.
        sizes: the size in bytes each must have.
    """
    return all(f.is_file() and f.stat().st_size == size for f, size in zip(files, sizes, strict=True))


def _merge_shard_files(raw: Path, labels: list[str], counts: list[torch.Tensor], channels: int, cache: Path,
                       meta_path: Path, key: str, length: int) -> tuple[np.ndarray, list[str]] | None:
    """Every rank's rows are in its file ``raw`` (float32 [its objects, C]); rank 0 writes them in the
    items' order to ``cache`` and every rank maps it: (vectors, labels). None (on every rank) when
    rank 0 cannot read some rank's file, or when the set holds no object."""
    mine = (str(raw), labels, _shard_counts(counts), channels)
    gathered = all_gather(mine, "the pooled reference features' files")
    channels = max(c for *_, c in gathered)
    runs = list(_item_runs([c for _, _, c, _ in gathered], length))
    ordered = [name for rank, start, n in runs for name in gathered[rank][1][start : start + n]]
    written = None
    if current_shard().rank == 0 and ordered:
        files = [Path(path) for path, *_ in gathered]
        written = shard_files_readable(files, [len(names) * channels * 4 for _, names, _, _ in gathered])
        if written:
            rows = [np.memmap(f, dtype=np.float32, mode="r", shape=(len(names), channels)) if names else None
                    for f, (_, names, _, _) in zip(files, gathered, strict=True)]
            chunks = (rows[rank][start : start + n] for rank, start, n in runs)
            _write_pooled(chunks, (len(ordered), channels), cache, meta_path, ordered, key)
    if not all_gather(written, "whether rank 0 merged the pooled features")[0]:
        return None
    merged = _read_pooled(cache, meta_path, key)
    if merged is None:
        raise DistributedError(f"distributed training: rank {current_shard().rank} cannot read the "
                           f"pooled-feature cache {cache} that rank 0 wrote; give a feature cache in a folder "
                           "every rank sees")
    return merged


def _write_pooled(chunks, shape: tuple[int, int], path: Path, meta_path: Path, labels: list[str], key: str) -> None:
    """Writes the pooled vectors, float32 rows of ``shape`` given in order by ``chunks`` (arrays or
    bytes), to the ``.npy`` file ``path`` and the labels to its ``.json``, atomically."""

    def copy(out) -> None:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
        for chunk in chunks:
            out.write(chunk if isinstance(chunk, bytes) else np.ascontiguousarray(chunk, dtype=np.float32).tobytes())

    meta_path.unlink(missing_ok=True)  # never an old key beside new vectors, should the second write fail
    atomic_write(path, copy)
    atomic_write_json(meta_path, {"format": POOLED_FORMAT, "key": key, "labels": labels})


def _file_chunks(path: Path, size: int = 64 << 20):
    """The bytes of the file ``path``, ``size`` at a time."""
    with open(path, "rb") as src:
        while chunk := src.read(size):
            yield chunk


def _check_cache_paths(cache: Path, meta_path: Path) -> None:
    """Refuses, before the pass, a cache path that lavise_fast may not write (the output policy of
    :mod:`lavise_fast.files`) or that holds a file it did not write: an existing ``cache`` is replaced
    only when a ``.json`` beside it is a pooled-feature cache's (of any key or version, or damaged)."""
    for path in (cache, meta_path):
        check_output(path, "feature_cache")
    if not cache.exists():
        return
    try:  # a damaged .json is a damaged cache of ours: rebuilt, as every cache is
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ours = not isinstance(meta, dict) or str(meta.get("format", "lavise_fast.pooled/")).startswith(
            "lavise_fast.pooled/")
    except ValueError:
        ours = True
    except OSError:
        ours = False
    if not ours:
        raise InputError(f"feature_cache {str(cache)!r} exists and is not a pooled-feature cache of lavise_fast (no "
                         f"{meta_path.name} beside it says so): it is not replaced; give another path, or delete it")


def _read_pooled(path: Path, meta_path: Path, key: str) -> tuple[np.ndarray, list[str]] | None:
    """The cached vectors and labels when ``path`` holds them for ``key``, else None."""
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("format") != POOLED_FORMAT:
            return None
        vectors = np.load(path, mmap_mode="r")
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != len(meta["labels"]):
            raise InputError(f"shape {vectors.shape} for {len(meta['labels'])} labels")
        labels = meta["labels"]
        if not all(isinstance(ws, list) and ws and all(isinstance(w, str) for w in ws) for ws in labels):
            raise InputError("labels must be non-empty lists of words")
        return vectors, labels
    except Exception as error:  # any unreadable cache is recomputed, never fatal
        log.warning("ignoring the unreadable pooled-feature cache %s: %s", path, error)
        return None
