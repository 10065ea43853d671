"""The streaming state of one layer of a sweep: what ``explain`` keeps per layer between batches.

:class:`LayerSweep` holds, for the C filters of one layer, the top images (``TopImages``), the
quantile sketch (``ChannelQuantiles``) and the top pairs' embeddings (:class:`TopPairs`) of the chosen filters.
Its whole state is a dict of CPU tensors (``state_dict`` / ``load_state_dict``) that a
checkpoint stores, and two states of disjoint image sets merge (``merge``) into the state of
one stream over both: the ranks of a distributed sweep merge this way.
"""

from __future__ import annotations

import math

import torch

from lavise_fast import ops
from lavise_fast.allocator import TEMPORARY_BYTES
from lavise_fast.explainer import Explainer
from lavise_fast.stash import PairStash
from lavise_fast.stats import ChannelQuantiles, TopImages

__all__ = ["LayerSweep", "TopPairs", "default_stash_bytes"]

CHUNK_BYTES = TEMPORARY_BYTES  # pooling weights, pooled vectors, head activations
# A batch applies the head's first layer per image (C * C * h * w each) when it holds at least this many
# entering pairs per position of those images (C * C each): per pair, pairs that leave again are never
# scored, so the per-image form must win by a margin.
FIRST_LAYER_PER_IMAGE = 2


class TopPairs:
    """The (filter, image) pairs of the top images and their embeddings.

    Pairs entering a filter's top images are stashed with their pooled vector z [C] and weight;
    stashed pairs that have left the top images are dropped before they are scored, and the
    stash is scored (the head) only when it outgrows ``budget_bytes`` and at the end, so most
    pairs that enter and leave again are never scored. Scored pairs keep their unit embedding:
    per filter, image -> (table, row), the embedding being ``tables[table][row]`` [D], its weight
    ``table_weights[table][row]`` (``table_finite[table][row]`` False: it was not finite). Each
    scoring adds one table; when the tables hold more than twice the rows still referenced, they
    are compacted into one. How the embeddings become words is :mod:`lavise_fast.scoring`'s job,
    at the end of the sweep.

    Args:
        channels: C, the layer's filter count (also the pooled vectors' length).
        head: the explainer head: pooled vectors [R, C] -> embeddings [R, D].
        budget_bytes: the memory of stashed pooled vectors (float32 [R, C]) before the stash is pruned, then scored.
    """

    def __init__(self, channels: int, head, budget_bytes: int = 64 << 20) -> None:
        self.pairs: list[dict[int, int]] = [{} for _ in range(channels)]  # per filter: image -> table << 32 | row
        self.tables: list[torch.Tensor] = []  # unit embeddings [R, D], one per scoring
        self.table_weights: list[list[float]] = []  # per table, each row's weight
        self.table_finite: list[list[bool]] = []  # per table, whether each row's embedding was finite
        self.head = head
        self.budget_rows = max(1, budget_bytes // (4 * channels))
        # pairs pooled or scored at once
        self.chunk_rows = max(1, min(budget_bytes // 4, CHUNK_BYTES) // (4 * channels))
        self.stash = PairStash(channels, block_rows=self.chunk_rows)
        self.non_finite = 0
        self.dim: int | None = None

    def add(self, filt: torch.Tensor, images: torch.Tensor, weights: torch.Tensor, z: torch.Tensor,
            tops: TopImages | None = None, first_layer: bool = False) -> None:
        """Stashes the pairs (filt[m], images[m]) [M] with weights [M] and pooled vectors z [M, C] (or,
        with ``first_layer``, the head's first layer already applied to them: ``Explainer.first_layer``).

        Args:
            filt: [M] int64 the pairs' filters.
            images: [M] int64 their image indices.
            weights: [M] their weights: the values they entered the top images with (the image's max
                activation of the filter), which ``prune`` ranks them by.
            z: [M, C] their pooled vectors.
            tops: the layer's top images, to prune the stash with when it outgrows the budget; None: no pruning.
            first_layer: z holds the outputs of the head's first layer (an :class:`Explainer` head only).
        """
        self.stash.add(filt, images, weights, z, first_layer)
        if self.stash.rows > self.budget_rows:
            if tops is not None:
                self.prune(tops)
            if self.stash.rows > self.budget_rows:
                self.score()

    def prune(self, tops: TopImages) -> None:
        """Drops the stashed pairs that are no longer among their filter's top images. A pair's weight is
        its image's maximum, the value it entered with, so it is still there iff it ranks at or above
        the filter's last top image (ties to the smaller index): one comparison a pair, not P.

        Args:
            tops: the layer's current top images (P >= 1).
        """
        slots = self.stash.slots(ordered=False)
        filt, images, weights = self.stash.keys(slots)
        value, image = tops.values[filt, -1], tops.indices[filt, -1]  # each filter's P-th image (-1: free slot)
        # in the top images iff it ranks at or above the P-th: a larger maximum, or the same and an index not larger
        alive = (image < 0) | (weights > value) | ((weights == value) & (images <= image))
        self.stash.drop(slots[~alive])  # the slots are freed: no pooled vector moves

    def score(self) -> None:
        """Sends the stash through the head, ``chunk_rows`` pairs at a time, and keeps each pair's unit embedding."""
        if not self.stash.rows:
            return
        keys, units, finite = [], [], []
        for key, z, first in self.stash.drain():  # chunk_rows rows at most, a full block not copied
            embedded = self._embed(z, first)
            del z  # with the stash's reference gone, the block is let go
            ok = torch.isfinite(embedded).all(1)
            units.append(torch.nn.functional.normalize(torch.where(ok[:, None], embedded, 0.0), dim=1))
            finite.append(ok)
            keys.append(key)
        self.dim = units[0].shape[1]
        filt, images, weights = (torch.cat(column) for column in zip(*keys, strict=True))
        finite = torch.cat(finite).tolist()
        self.non_finite += finite.count(False)
        self._add_table(torch.cat(units), filt.tolist(), images.tolist(), weights.tolist(), finite)

    def _embed(self, z: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The head's embeddings [R, D] float32 of stashed rows z [R, C]: pooled vectors, or where
        ``first`` [R] is set, outputs of the head's first layer."""
        if not first.any():
            return self.head(z).float()
        if first.all():
            return self.head.after_first_layer(z).float()
        out = torch.empty(len(z), self.head.dim, device=z.device)
        out[~first] = self.head(z[~first]).float()
        out[first] = self.head.after_first_layer(z[first]).float()
        return out

    def _add_table(self, unit: torch.Tensor, filt: list[int], images: list[int], weights: list[float],
                   finite: list[bool]) -> None:
        """Keeps unit embeddings [R, D] as a new table: pair r is (filt[r], images[r]) with weights[r]
        (not finite[r]: no embedding). A pair is stored as one int, table << 32 | row, so that
        many pairs make no work for Python's garbage collector (a tuple each did: its full
        collections took 0.13 s at a time)."""
        table = len(self.tables)
        self.tables.append(unit)
        self.table_weights.append(weights)
        self.table_finite.append(finite)
        for row, (k, image) in enumerate(zip(filt, images, strict=True)):
            self.pairs[k][image] = table << 32 | row
        referenced = sum(len(pairs) for pairs in self.pairs)
        if len(self.tables) > 1 and sum(len(t) for t in self.tables) > 2 * referenced:
            self._compact()

    def _entries(self) -> tuple[list[int], list[int], list[int], list[int], list[float]]:
        """Every scored pair as columns: filter, image, table (-1: not finite), row, weight."""
        filt, images, tables, rows, weights = [], [], [], [], []
        for k, pairs in enumerate(self.pairs):
            for image, code in pairs.items():
                table, row = code >> 32, code & 0xFFFFFFFF
                filt.append(k)
                images.append(image)
                tables.append(table if self.table_finite[table][row] else -1)
                rows.append(row)
                weights.append(self.table_weights[table][row])
        return filt, images, tables, rows, weights

    def _gather(self, tables: list[int], rows: list[int], device: torch.device) -> torch.Tensor:
        """The embeddings [len(rows), D] of (tables[i], rows[i]) (table -1: a NaN row), on device."""
        out = torch.full((len(rows), self.dim or 0), math.nan, device=device)
        where = torch.tensor(tables, dtype=torch.int64)
        index = torch.tensor(rows, dtype=torch.int64)
        for t, table in enumerate(self.tables):
            mine = (where == t).nonzero().flatten()
            if len(mine):
                out[mine.to(device)] = table[index[mine].to(table.device)].to(device)
        return out

    def _compact(self) -> None:
        """Copies the referenced embeddings into one table and drops the others."""
        filt, images, tables, rows, weights = self._entries()
        table = self._gather(tables, rows, self.tables[-1].device)
        self.pairs, self.tables, self.table_weights, self.table_finite = [{} for _ in self.pairs], [], [], []
        self._add_table(table, filt, images, weights, [t >= 0 for t in tables])

    def forget(self, tops: TopImages, filters: list[int]) -> None:
        """Drops the scored pairs of ``filters`` that are no longer among their top images.

        Args:
            tops: the layer's current top images.
            filters: the filters to clean up.
        """
        for k in filters:
            if self.pairs[k]:
                keep = set(tops.indices[k].tolist())
                self.pairs[k] = {i: v for i, v in self.pairs[k].items() if i in keep}

    def tensors(self, filters: list[int], images: torch.Tensor, dim: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [K, P, dim], weights [K, P]) of ``filters`` over their top images ``images``
        [K, P] (-1: an empty slot); a slot with no scored pair, a non-finite embedding or a weight
        <= 0 gets weight 0 (it does not count).

        Args:
            filters: the K filters, in row order.
            images: [K, P] their top images' indices (-1: an empty slot).
            dim: D, the embeddings' dimension.
            device: where to build the tensors.
        """
        K, P = images.shape
        embeddings = torch.zeros(K, P, dim, device=device)
        weights = torch.zeros(K, P, device=device)
        codes = torch.tensor([self.pairs[k].get(image, -1) for k, top in zip(filters, images.tolist(), strict=True)
                              for image in top], dtype=torch.int64).view(K, P)  # table << 32 | row; -1: none
        tables, rows = codes >> 32, codes & 0xFFFFFFFF
        for t, table in enumerate(self.tables):
            mine = (codes >= 0) & (tables == t)
            if not mine.any():
                continue
            row = rows[mine]
            weight = torch.tensor(self.table_weights[t], dtype=torch.float32)[row]
            counts = torch.tensor(self.table_finite[t], dtype=torch.bool)[row] & (weight > 0)
            at = mine.nonzero()[counts]
            if len(at):
                index = (at[:, 0].to(device), at[:, 1].to(device))
                embeddings[index] = table[row[counts].to(table.device)].to(device)
                weights[index] = weight[counts].to(device)
        return embeddings, weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The scored pairs (filter [M], image [M], weight [M], embedding [M, D] with NaN rows where it
        was not finite) and the stash (filter, image, weight, z [R, C], first_layer [R]: z is the head's
        first layer's output), on the CPU."""
        filt, images, tables, rows, weights = self._entries()
        embeddings = self._gather(tables, rows, torch.device("cpu"))
        slots = self.stash.slots()
        stash = self.stash.keys(slots) + self.stash.vectors(slots)
        return {
            "filter": torch.tensor(filt, dtype=torch.int64),
            "image": torch.tensor(images, dtype=torch.int64),
            "weight": torch.tensor(weights, dtype=torch.float32),
            "embedding": embeddings,
            "stash_filter": stash[0].cpu(), "stash_image": stash[1].cpu(),
            "stash_weight": stash[2].cpu(), "stash_z": stash[3].cpu(), "stash_first_layer": stash[4].cpu(),
            "non_finite": torch.tensor(self.non_finite),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device, merge: bool = False) -> None:
        """Restores :meth:`state_dict` (or, with ``merge``, adds its pairs to these, for disjoint images).

        Args:
            state: what :meth:`state_dict` returned.
            device: where the restored embeddings and stash go.
            merge: add to the current pairs instead of replacing them.
        """
        if not merge:
            self.pairs, self.tables, self.table_weights, self.table_finite = [{} for _ in self.pairs], [], [], []
            self.stash, self.non_finite = PairStash(len(self.pairs), self.stash.block_rows), 0
        embeddings = state["embedding"]
        if embeddings.shape[0]:
            self.dim = embeddings.shape[1]
            finite = (~embeddings.isnan().any(1)).tolist()  # a NaN row: not finite when it was scored
            self._add_table(embeddings.to(device), state["filter"].tolist(), state["image"].tolist(),
                            state["weight"].tolist(), finite)
        if len(state["stash_filter"]):
            first = state.get("stash_first_layer")  # absent from older checkpoints: pooled vectors only
            first = torch.zeros(len(state["stash_filter"]), dtype=torch.bool) if first is None else first
            self.stash.add(*(state[f"stash_{key}"].to(device) for key in ("filter", "image", "weight", "z")),
                           first.to(device))
        self.non_finite += int(state["non_finite"])


def default_stash_bytes(channels: int, top_images: int) -> int:
    """The default memory for pooled vectors awaiting scoring: max(64 MiB, C * P * C * 4 bytes), room
    for a pooled vector of every (filter, top image) pair, so that pruning alone keeps the stash
    within it and only the pairs that end among the top images are ever scored (the head costs
    C * C multiply-adds a pair: for ResNet-50 ``layer4`` the 51,200 final pairs cost about as much
    as 60 forward passes).

    Args:
        channels: C, the layer's filter count.
        top_images: P, the top images kept per filter.
    """
    return max(64 << 20, channels * top_images * channels * 4)


class LayerSweep:
    """Top images, quantile sketch and top pairs of one layer, fed one batch of its features at a time.

    ``chosen`` are the filters to explain; ``given`` the thresholds [C] when the caller gave them.
    ``in_pass`` methods pool the entering pairs during the pass (``projection``, ``original``, and
    ``activation`` with given thresholds); the others are scored by a re-run of the top images.
    ``stash_bytes``: the memory of pooled vectors awaiting scoring (default
    :func:`default_stash_bytes`); a smaller stash is scored more often, pairs that later leave the
    top images included. With an :class:`Explainer` head, a batch with many more entering pairs than
    positions stashes the head's first layer of its pairs instead, computed from ``W A`` per image
    (``FIRST_LAYER_PER_IMAGE``).

    Args:
        name: the layer's dotted name.
        head: the explainer head: pooled vectors [R, C] -> embeddings [R, D].
        method: how a pair is pooled: "projection" or "activation" (``ops.attention_pool``), "original"
            (the plain spatial mean), or another method (e.g. "image"), scored by a re-run of the top images.
        top_images: P, the top images kept per filter.
        channels: C, the layer's filter count.
        chosen: the filters to explain.
        given: [C] the thresholds the caller gave (``activation`` pools with them in the pass); None: none.
        device: where the state lives.
        stash_bytes: the memory of pooled vectors awaiting scoring; None: :func:`default_stash_bytes`.
    """

    def __init__(self, name: str, head, method: str, top_images: int, channels: int, chosen: list[int],
                 given: torch.Tensor | None, device: torch.device, stash_bytes: int | None = None) -> None:
        self.name, self.method, self.chosen, self.given = name, method, chosen, given
        self.in_pass = method in ("projection", "original") or (method == "activation" and given is not None)
        self.tops = TopImages(channels, top_images, device=device)
        self.quantiles = ChannelQuantiles(channels, device=device)
        stash_bytes = default_stash_bytes(channels, top_images) if stash_bytes is None else stash_bytes
        self.pairs = TopPairs(channels, head, stash_bytes)
        self.wanted = torch.zeros(channels, dtype=torch.bool, device=device)
        self.wanted[chosen] = True
        self.device = device
        self.first_layer = None  # (W, b) of a torch Explainer head: its first layer applied per image
        if isinstance(head, Explainer) and not head.training and method in ("projection", "activation"):
            self.first_layer = tuple(t.to(device) for t in head.first_layer())

    def update(self, features: torch.Tensor, base: int, floor_rank: float = 0.0) -> None:
        """Adds a batch of features [N, C, h, w] whose images have the indices base, ..., base + N - 1.

        Args:
            features: the layer's output for the batch, [N, C, h, w].
            base: the index of the batch's first image.
            floor_rank: the quantile sketch's floor for this batch (``ChannelQuantiles.update``).
        """
        tops, pairs = self.tops, self.pairs
        tops.update(features, base)
        self.quantiles.update(features, floor_rank)
        if not self.in_pass:
            return
        n = features.shape[0]
        entered = (tops.indices >= base) & (tops.indices < base + n) & self.wanted[:, None]
        filt, slot = entered.nonzero(as_tuple=True)
        image = tops.indices[filt, slot]
        by_image = image.argsort(stable=True)  # a chunk then pools few images, each read once
        filt, slot, image = filt[by_image], slot[by_image], image[by_image]
        step = min(pairs.chunk_rows, max(1, CHUNK_BYTES // (4 * math.prod(features.shape[2:]))))  # weights [step, hw]
        mapped = self._first_layer_per_image(features, image - base, len(filt))
        for f, sl, im in zip(filt.split(step), slot.split(step), image.split(step), strict=True):
            rows = im - base  # pooled in chunks: memory stays within the budget
            if self.method == "original":
                z = features[rows].float().mean((2, 3))
            elif mapped is not None:
                z = self._first_layer_outputs(features, mapped, rows, f)
            else:
                z = ops.attention_pool(features, rows, f, mode=self.method, thresholds=self.given)
            pairs.add(f, rows + base, tops.values[f, sl], z, tops, first_layer=mapped is not None)
        if len(filt):
            pairs.forget(tops, filt.unique().tolist())

    def _first_layer_per_image(self, features: torch.Tensor, rows: torch.Tensor, pairs: int
                               ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W A_i for each image i with an entering pair [n, C, h, w], the place of each batch row
        among them [N] (-1: none))`` when the head's first layer is cheaper per image than per pair:
        it costs C * C * h * w an image against C * C a pair, so when the batch's ``pairs`` number at
        least ``FIRST_LAYER_PER_IMAGE`` times its images' positions. Else None."""
        if self.first_layer is None or not pairs:
            return None
        N, C, h, w = features.shape
        images = rows.unique()
        if pairs < FIRST_LAYER_PER_IMAGE * len(images) * h * w:
            return None
        weight = self.first_layer[0]
        channels_last = features[images].float().permute(0, 2, 3, 1).reshape(-1, C)
        mapped = (channels_last @ weight.T).view(len(images), h, w, C).permute(0, 3, 1, 2)
        place = torch.full((N,), -1, dtype=torch.int64, device=features.device)
        place[images] = torch.arange(len(images), device=features.device)
        return mapped, place

    def _first_layer_outputs(self, features: torch.Tensor, mapped: tuple[torch.Tensor, torch.Tensor],
                             rows: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        """The head's first layer [M, C] of the pairs (rows, filt), from the maps W A of their images:
        ``mean_hw((W A) * w) + b = W z + b``, with the weights w of ``ops.attention_pool`` (and, for a
        ``unit_input`` head, divided by max(||z||, 1e-12) as ``F.normalize`` does)."""
        a = features[rows, filt].float()  # [M, h, w]
        if self.method == "projection":
            norm = torch.linalg.vector_norm(a, dim=(1, 2), keepdim=True)
            weights = torch.where(norm > 0, a / norm, torch.where(torch.isnan(norm), norm, 0.0))
        else:
            weights = (a > self.given[filt][:, None, None]).float()
        out = ops.masked_pool(mapped[0], weights, mapped[1][rows])
        if self.pairs.head.unit_input:
            z = ops.attention_pool(features, rows, filt, mode=self.method, thresholds=self.given)
            out /= torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(1e-12)
        return out + self.first_layer[1]

    def settle(self) -> None:
        """Drops the stashed pairs that left the top images and scores the rest."""
        self.pairs.prune(self.tops)
        self.pairs.score()

    def state_dict(self, image_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The whole state on the CPU; ``image_index`` [n] maps the image indices used so far
        (0..n-1, e.g. a rank's positions in its shard) to other ones (the global indices).

        Args:
            image_index: [n] int64, new index of each image index used so far; None: indices kept.
        """
        indices = self.tops.indices.cpu()
        pairs = self.pairs.state_dict()
        if image_index is not None:
            indices = torch.where(indices >= 0, image_index[indices.clamp_min(0)], indices)
            pairs["image"] = image_index[pairs["image"]]
            pairs["stash_image"] = image_index[pairs["stash_image"]]
        state = {"top_values": self.tops.values.cpu(), "top_indices": indices, "top_seen": torch.tensor(self.tops.seen),
                 "q_means": self.quantiles.means.cpu(), "q_weights": self.quantiles.weights.cpu(),
                 "q_summary": self.quantiles.summary.cpu()}
        state.update({f"pairs.{key}": value for key, value in pairs.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], merge: bool = False) -> None:
        """Restores :meth:`state_dict`, or with ``merge`` folds in the state of a disjoint image set
        (image indices in the same numbering): top images and sketch merge, pairs are added and
        those no longer among the top images dropped.

        Args:
            state: what :meth:`state_dict` returned.
            merge: fold it into the current state instead of replacing it.
        """
        other = self._stats_from(state)
        if merge:
            self.tops.merge(other[0])
            self.quantiles.merge(other[1])
        else:
            self.tops, self.quantiles = other
        self.pairs.load_state_dict({key[6:]: value for key, value in state.items() if key.startswith("pairs.")},
                                   self.device, merge=merge)
        if merge:
            self.pairs.forget(self.tops, self.chosen)

    def _stats_from(self, state: dict[str, torch.Tensor]) -> tuple[TopImages, ChannelQuantiles]:
        values = state["top_values"]
        tops = TopImages(values.shape[0], values.shape[1], device=self.device)
        tops.values.copy_(values)
        tops.indices.copy_(state["top_indices"])
        tops.seen = int(state["top_seen"])
        means = state["q_means"]
        quantiles = ChannelQuantiles(means.shape[0], capacity=means.shape[1], device=self.device)
        quantiles.means.copy_(means)
        quantiles.weights.copy_(state["q_weights"])
        quantiles.summary.copy_(state["q_summary"])
        return tops, quantiles
