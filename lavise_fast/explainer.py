"""The LaViSE explainer: a small head that maps pooled feature vectors into a word space.

Head (the paper's): BatchNorm1d(C), Dropout(0.1), Linear(C, C), ReLU, BatchNorm1d(C),
Dropout(0.1), Linear(C, D). Trained with the cosine-similarity margin ranking loss (CSMR):
the object's word must score at least ``margin`` higher in cosine similarity than every other
training word.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lavise_fast import distributed as distributed_sweep
from lavise_fast.cache import cache_dir
from lavise_fast.data.collate import collate_reference
from lavise_fast.errors import DistributedError, InputError, InputTypeError
from lavise_fast.files import atomic_torch_save, atomic_write, atomic_write_json, gist, read_torch_file
from lavise_fast.hashing import model_fingerprint
from lavise_fast.layers import LayerFeatures, default_layer, model_device, resolve_layer

__all__ = ["Explainer", "csmr_loss", "pool_reference", "train_explainer", "default_explainer"]

_FORMAT = "lavise_fast.explainer/1"
_POOLED_FORMAT = "lavise_fast.pooled/2"  # /2: one row per region, labels are lists of words
_RECIPE = 2  # how the default explainer is trained (2: concept families, regions with several words, margin 0.1,
# unit inputs); part of its cache key, so that a cached one of an older recipe is not reused


def csmr_loss(
    embeddings: torch.Tensor, targets: torch.Tensor, words: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Cosine-similarity margin ranking loss, for regions with one or several true words.

    With ``s[b, v] = cos(embeddings[b], words[v])`` and ``T_b`` the words that ``targets[b]``
    marks, every true word must beat every other word by ``margin``:
    ``mean_b (1 / |T_b|) sum_{t in T_b} sum_{v not in T_b} max(0, margin - s[b, t] + s[b, v])``.
    A region's other true words are never negatives, so an object's colour, shape and pattern are
    not pushed apart. With one word per row this is the paper's loss.

    Args:
        embeddings: [B, D] head outputs. targets: [B] word indices, or [B, V] 0/1 marks.
        words: [V, D] vectors of the training (seen) words.
    """
    sims = F.normalize(embeddings, dim=1) @ F.normalize(words, dim=1).t()  # [B, V]
    if targets.dim() == 1:
        marks = torch.zeros_like(sims).scatter_(1, targets.long()[:, None], 1.0)
    else:
        marks = (targets != 0).to(sims.dtype)
    count = marks.sum(1)
    if (count == 0).any():
        raise InputError("every row of targets must mark at least one word")
    row, word = marks.nonzero(as_tuple=True)  # one (row, true word) pair per true word
    hinge = (margin - sims[row, word][:, None] + sims[row]).clamp_min(0.0) * (1.0 - marks[row])  # [pairs, V]
    per_row = torch.zeros_like(count).index_add_(0, row, hinge.sum(1))
    return (per_row / count).mean()


class Explainer(nn.Module):
    """The head plus what it was trained for: ``layer`` (dotted name), ``channels`` (C), ``dim``
    (D of the word space), ``space`` (its name), ``seen`` and ``unseen`` words.

    ``explainer(z)`` maps pooled vectors [M, C] to embeddings [M, D]. With ``unit_input`` the
    pooled vectors are scaled to unit length first: training pools under binary masks and
    explaining under a filter's map normalised to ``a / ||a||``, whose scales differ by up to the
    square root of the region's size; the direction of z is what both share.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        *,
        layer: str = "",
        space: str = "",
        seen: Sequence[str] = (),
        unseen: Sequence[str] = (),
        dropout: float = 0.1,
        unit_input: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1 or dim < 1:
            raise InputError(f"channels and dim must be positive, got channels={channels}, dim={dim}")
        self.channels, self.dim, self.layer, self.space = int(channels), int(dim), layer, space
        self.seen, self.unseen = list(seen), list(unseen)
        self.dropout = float(dropout)
        self.unit_input = bool(unit_input)
        self.trained = False
        self.head = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.Dropout(dropout),
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(channels),
            nn.Dropout(dropout),
            nn.Linear(channels, dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.channels:
            raise InputError(
                f"the explainer of layer {self.layer!r} takes pooled vectors [M, {self.channels}], "
                f"got {tuple(z.shape)}"
            )
        z = z.float()
        if self.unit_input:
            z = F.normalize(z, dim=1)
        return self.head(z)

    def check_compatible(self, layer: str, channels: int, space: str | None = None) -> None:
        """Refuses a layer, channel count or word space other than the one it was trained for."""
        if channels != self.channels:
            raise InputError(
                f"this explainer was trained on {self.channels} channels ({self.layer!r}); the layer has {channels}"
            )
        if self.layer and layer != self.layer:
            raise InputError(f"this explainer was trained for layer {self.layer!r}, not {layer!r}")
        if space is not None and self.space and space != self.space:
            raise InputError(f"this explainer was trained in the word space {self.space!r}, not {space!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Writes the head and its metadata to ``path`` (atomically: a temporary file, then a rename)."""
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "config": {
                "channels": self.channels, "dim": self.dim, "layer": self.layer, "space": self.space,
                "seen": self.seen, "unseen": self.unseen, "dropout": self.dropout, "trained": self.trained,
                "unit_input": self.unit_input,
            },
            "state_dict": self.state_dict(),
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Explainer:
        """Reads an explainer written by :meth:`save`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: naming the file and what is wrong with it (empty, truncated or corrupted,
                another kind of file, metadata that does not fit the weights).
        """
        where = f"explainer file {str(path)!r}"
        payload = read_torch_file(path, "explainer file", map_location)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            found = (f"format {payload.get('format')!r}" if isinstance(payload, dict) and "format" in payload
                     else f"a dict of {list(payload)[:4]}" if isinstance(payload, dict) else type(payload).__name__)
            raise InputError(f"{where} is not a lavise_fast explainer: expected a dict of format {_FORMAT!r} "
                             f"(written by Explainer.save), found {found}")
        try:
            config = dict(payload["config"])
            trained = bool(config.pop("trained"))
            explainer = cls(**config)
            explainer.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise InputError(f"{where} is damaged: its metadata and weights do not make an explainer "
                             f"({type(error).__name__}: {gist(error)})") from None
        explainer.trained = trained
        return explainer.eval()


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
    """
    from tqdm import tqdm

    from lavise_fast import ops

    name = resolve_layer(model, layer)[0]
    shard = distributed_sweep.current_shard() if distributed else None
    meta_path = key = None
    if cache is not None:
        cache = Path(cache)
        meta_path = cache.with_name(cache.name + ".json")
        key = model_fingerprint(model, name, len(reference), type(reference).__qualname__)
        cached = _read_pooled(cache, meta_path, key)
        if shard is not None and not all(distributed_sweep.all_gather(cached is not None, "the cache's presence")):
            cached = None  # every rank takes the same path
        if cached is not None:
            return cached[0], cached[1], name
    device = model_device(model, device)
    items = reference
    if shard is not None:
        items = torch.utils.data.Subset(reference, distributed_sweep.shard_indices(len(reference), shard).tolist())
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_reference)
    vectors, labels, counts = [], [], []
    raw, channels = None, 0
    if cache is not None:
        part = "" if shard is None else f"rank{shard.rank}."
        raw = tempfile.NamedTemporaryFile(dir=cache.parent, prefix=f".{cache.name}.{part}", suffix=".raw")
    model.eval()
    try:
        with LayerFeatures(model, [name]) as tap:
            batches = _reference_batches(loader, batch_size)
            for images, masks, rows, names in tqdm(batches, total=len(loader), desc="pooling reference",
                                                   disable=not progress):
                masks, rows, names = _shared_regions(masks, rows, names)
                counts.append(torch.bincount(rows, minlength=len(images)))
                if not names:
                    continue
                features = tap(images.to(device))[name]
                pooled = ops.masked_pool(features, masks.to(device), rows.to(device)).cpu()
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
    gathered = distributed_sweep.all_gather(mine, "the pooled reference features")
    parts, ordered = [], []
    for rank, start, n in _item_runs([c for _, _, c in gathered], length):
        rows, names, _ = gathered[rank]
        parts.append(rows[start : start + n])
        ordered += names[start : start + n]
    return ([torch.cat(parts)] if parts else []), ordered


def _all_readable(files: list[Path], sizes: list[int]) -> bool:
    """Whether this process sees every file, each of its size in bytes (the ranks' row files)."""
    return all(f.is_file() and f.stat().st_size == size for f, size in zip(files, sizes, strict=True))


def _merge_shard_files(raw: Path, labels: list[str], counts: list[torch.Tensor], channels: int, cache: Path,
                       meta_path: Path, key: str, length: int) -> tuple[np.ndarray, list[str]] | None:
    """Every rank's rows are in its file ``raw`` (float32 [its objects, C]); rank 0 writes them in the
    items' order to ``cache`` and every rank maps it: (vectors, labels). None (on every rank) when
    rank 0 cannot read some rank's file, or when the set holds no object."""
    mine = (str(raw), labels, _shard_counts(counts), channels)
    gathered = distributed_sweep.all_gather(mine, "the pooled reference features' files")
    channels = max(c for *_, c in gathered)
    runs = list(_item_runs([c for _, _, c, _ in gathered], length))
    ordered = [name for rank, start, n in runs for name in gathered[rank][1][start : start + n]]
    written = None
    if distributed_sweep.current_shard().rank == 0 and ordered:
        files = [Path(path) for path, *_ in gathered]
        written = _all_readable(files, [len(names) * channels * 4 for _, names, _, _ in gathered])
        if written:
            rows = [np.memmap(f, dtype=np.float32, mode="r", shape=(len(names), channels)) if names else None
                    for f, (_, names, _, _) in zip(files, gathered, strict=True)]
            chunks = (rows[rank][start : start + n] for rank, start, n in runs)
            _write_pooled(chunks, (len(ordered), channels), cache, meta_path, ordered, key)
    if not distributed_sweep.all_gather(written, "whether rank 0 merged the pooled features")[0]:
        return None
    merged = _read_pooled(cache, meta_path, key)
    if merged is None:
        raise DistributedError(f"distributed training: rank {distributed_sweep.current_shard().rank} cannot read the "
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
    atomic_write_json(meta_path, {"format": _POOLED_FORMAT, "key": key, "labels": labels})


def _file_chunks(path: Path, size: int = 64 << 20):
    """The bytes of the file ``path``, ``size`` at a time."""
    with open(path, "rb") as src:
        while chunk := src.read(size):
            yield chunk


def _read_pooled(path: Path, meta_path: Path, key: str) -> tuple[np.ndarray, list[str]] | None:
    """The cached vectors and labels when ``path`` holds them for ``key``, else None."""
    import json
    import logging

    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("format") != _POOLED_FORMAT:
            return None
        vectors = np.load(path, mmap_mode="r")
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != len(meta["labels"]):
            raise InputError(f"shape {vectors.shape} for {len(meta['labels'])} labels")
        labels = meta["labels"]
        if not all(isinstance(ws, list) and ws and all(isinstance(w, str) for w in ws) for ws in labels):
            raise InputError("labels must be non-empty lists of words")
        return vectors, labels
    except Exception as error:  # any unreadable cache is recomputed, never fatal
        logging.getLogger(__name__).warning("ignoring the unreadable pooled-feature cache %s: %s", path, error)
        return None


def _rows(vectors: torch.Tensor | np.ndarray, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """vectors[index] on ``device``, from a tensor or a memory-mapped array."""
    if isinstance(vectors, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(vectors[index.numpy()])).to(device)
    return vectors[index.to(vectors.device)].to(device)


def train_explainer(
    model: nn.Module,
    reference,
    layer: str | nn.Module,
    space,
    anno_rate: float = 0.5,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    device: torch.device | str | None = None,
    seed: int = 0,
    feature_cache: str | os.PathLike | None = None,
    distributed: bool = False,
    progress: bool = True,
    seen: Sequence[str] | None = None,
    margin: float = 0.1,
    unit_input: bool = True,
) -> Explainer:
    """Trains a LaViSE explainer for ``layer`` of the frozen ``model`` on ``reference`` items
    (image [3, H, W], masks [M, H, W] bool, labels list[str]).

    The model runs once over the reference set: every region (an object's mask; masks equal pixel
    for pixel in one image are one region with all their words) becomes one ``masked_pool``
    vector, kept in memory, or with ``feature_cache`` (a ``.npy`` path) in a memory-mapped file
    that a later call with the same model, layer and set reuses (see :func:`pool_reference`;
    with ``distributed`` the ranks of the process group share that pass and every rank gets
    rank 0's head); the head then trains on those vectors with
    :func:`csmr_loss` (each region's seen words against the other seen words). A seeded
    ``anno_rate`` share of the label words (those ``space`` knows) are *seen* and supervise, or
    the words of ``seen`` when it is given (e.g. ``ConceptWorld.split_words``, which holds out
    family members whose siblings are seen); the others are recorded as *unseen*. 10 % of the
    regions with a seen word are held out; the head with the best held-out loss is kept, and the
    learning rate is halved when that loss stalls.

    Defaults: the paper trained with lr 1e-4 at batch size 1. With Adam at lr 1e-3 the head
    converges in a few hundred steps, so the batch shrinks on small sets (at most an eighth
    of the training objects, at least 16) to give every epoch at least eight steps, and stays
    at ``batch_size`` (256) on large ones. ``margin`` 0.1 (the paper's is 1): in a sentence
    encoder's space related words are close (cos("red", "blue") = 0.73 in MiniLM), so no
    embedding can put one a margin of 1 above the other and the hinge never rests; 0.1 ranked
    the demo's seen and unseen colours markedly better (bench/RESULTS.md). ``unit_input``
    (:class:`Explainer`): pooled vectors scaled to unit length before the head.
    """
    if not 0.0 < anno_rate <= 1.0:
        raise InputError(f"anno_rate must lie in (0, 1], got {anno_rate}")
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    from tqdm import tqdm

    from lavise_fast.semantics import Vocabulary

    vectors, labels, layer_name = pool_reference(model, reference, layer, cache=feature_cache, device=device,
                                                 distributed=distributed, progress=progress)
    vocabulary = Vocabulary.from_words([w for words in labels for w in words], space)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(vocabulary.words), generator=generator).tolist()
    if seen is None:
        n_seen = max(1, round(anno_rate * len(order)))
        seen = sorted(vocabulary.words[i] for i in order[:n_seen])
    else:
        seen = _given_seen(seen, vocabulary.words)
    unseen = sorted(set(vocabulary.words) - set(seen))
    index = {w: i for i, w in enumerate(seen)}
    keep = torch.tensor([i for i, words in enumerate(labels) if any(w in index for w in words)], dtype=torch.long)
    words = space.encode(seen)
    perm = torch.randperm(len(keep), generator=generator)
    n_val = len(keep) // 10 if len(keep) >= 20 else 0
    val, train = perm[:n_val], perm[n_val:]
    dev = model_device(model, device)
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.to(dev)
    y = torch.zeros(len(keep), len(seen), dtype=torch.float32)  # marks of each kept region's seen words
    for r, i in enumerate(keep.tolist()):
        y[r, [index[w] for w in labels[i] if w in index]] = 1.0
    y = y.to(dev)
    torch.manual_seed(seed)  # the head's initialisation and dropout
    expl = Explainer(
        vectors.shape[1], words.shape[1], layer=layer_name, space=getattr(space, "name", ""), seen=seen, unseen=unseen,
        unit_input=unit_input,
    ).to(dev)
    words = words.to(dev)
    step = int(min(batch_size, max(16, len(train) // 8)))
    optimizer = torch.optim.Adam(expl.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    best, best_state = float("inf"), None
    held = val if n_val else train
    for _ in tqdm(range(epochs), desc="training explainer", disable=not progress):
        expl.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), step):
            batch = shuffled[start : start + step]
            if len(batch) < 2:  # BatchNorm needs two rows
                continue
            with torch.enable_grad():  # also when called under no_grad (explain's default explainer)
                loss = csmr_loss(expl(_rows(vectors, keep[batch], dev)), y[batch.to(dev)], words, margin)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        expl.eval()
        with torch.no_grad():
            score = sum(
                csmr_loss(expl(_rows(vectors, keep[part], dev)), y[part.to(dev)], words, margin).item() * len(part)
                for part in held.split(4096)
            ) / len(held)
        scheduler.step(score)
        if score < best:
            best, best_state = score, {k: v.detach().clone() for k, v in expl.state_dict().items()}
    if distributed:  # the ranks trained on the same rows with the same seed; rank 0's head is the one
        best_state = distributed_sweep.all_gather({k: v.cpu() for k, v in best_state.items()}, "the trained head")[0]
    expl.load_state_dict(best_state)
    expl.trained = True
    return expl.eval().cpu()


def _given_seen(seen: Sequence[str], words: list[str]) -> list[str]:
    """train_explainer's ``seen=``, sorted; words that label no reference region (or that the space lacks)
    cannot supervise and are left out with a warning."""
    if isinstance(seen, str) or not all(isinstance(w, str) for w in seen):
        raise InputTypeError(f"seen must be a list of words, got {seen!r}"[:200])
    absent = sorted(set(seen) - set(words))
    if absent:
        import warnings

        warnings.warn(f"{len(absent)} of the seen words label no reference region (or the space lacks them) and "
                      f"cannot supervise; they are left out: {absent[:10]}", UserWarning, stacklevel=3)
    kept = sorted(set(seen) & set(words))
    if not kept:
        raise InputError(f"seen must name at least one word that labels a reference region, got {list(seen)[:10]}")
    return kept


def default_explainer(
    model: nn.Module,
    loader=None,
    *,
    layer: str | nn.Module | None = None,
    world_size: int = 1000,
    epochs: int = 10,
    device: torch.device | str | None = None,
    distributed: bool = False,
    progress: bool = True,
) -> Explainer:
    """The explainer that ``explain(model, loader)`` uses when none is given: trained on the
    embedded reference set (``lavise_fast.data.ConceptWorld(world_size, image_size=224, seed=0)``)
    in the default word space (:func:`lavise_fast.semantics.default_space`), every concept word
    seen (``anno_rate=1``), and cached under :func:`cache_dir` keyed by the model's weights, the
    layer and these settings, so that the second call costs a file read.

    ``layer`` defaults to the last 4-D layer of ``model`` (``lavise_fast.layers.default_layer``),
    found on the first image batch of ``loader`` (a reference image when there is no loader).
    """
    from lavise_fast.data.world import ConceptWorld
    from lavise_fast.semantics import default_space

    world = ConceptWorld(size=world_size, image_size=224, seed=0)
    if layer is None:
        sample = None
        if loader is not None:
            from lavise_fast.loaders import image_batch

            sample = image_batch(next(iter(loader)))[:1]
        sample = world[0][0][None] if sample is None else sample
        dev = model_device(model, device)
        layer = default_layer(model, sample.to(dev))
    name = resolve_layer(model, layer)[0]
    space = default_space()
    key = model_fingerprint(model, name, space.name, world_size, epochs, _FORMAT, _RECIPE)
    path = cache_dir() / "explainers" / f"{key}.pt"
    cached = None
    if path.is_file():
        try:
            cached = Explainer.load(path)
        except ValueError as error:
            import logging

            logging.getLogger(__name__).warning("ignoring the unreadable cached explainer %s: %s", path, error)
    if distributed and not all(distributed_sweep.all_gather(cached is not None, "the cached explainer's presence")):
        cached = None  # every rank trains (sharing the feature pass), or none does
    if cached is not None:
        return cached
    expl = train_explainer(model, world, name, space, anno_rate=1.0, epochs=epochs, device=device,
                           distributed=distributed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    expl.save(path)
    return expl
