"""The stash of a sweep's top pairs awaiting the explainer head, in fixed slots.

A pair (filter, image) that enters a filter's top images is stashed with its weight and its pooled
vector z [C] (or the head's first layer's output, flagged) until it is scored or leaves the top
images again. The rows live in slots: dropping a row frees its slot, so pruning the stash never
copies the pooled vectors (ResNet-50 ``layer4`` keeps about 400 MB of them). New rows fill the
lowest free slots. The vectors are kept in blocks of ``block_rows`` slots, and a block is added
only when every slot is taken, so the stash grows without copying what it holds; when dropping
rows leaves them fitting in half of the blocks or fewer, they move into the first blocks and the
others are let go.
"""

from __future__ import annotations

import torch

__all__ = ["PairStash"]


class PairStash:
    """Rows (filter, image, weight, z [C], first_layer) in slots; read back in the order they were added.

    Args:
        channels: C, the length of each row's vector z.
        block_rows: the slots added at a time (a block of block_rows * C float32).
    """

    def __init__(self, channels: int, block_rows: int) -> None:
        self.channels, self.block_rows = channels, max(1, block_rows)
        self.clear()

    def clear(self) -> None:
        """Drops every row and lets the blocks go."""
        self.rows = 0  # rows held
        self._added = 0  # rows ever added: each row's place in the order
        self._blocks: list[torch.Tensor] = []  # [block_rows, C] float32 each
        self._keys = torch.empty(0, 3, dtype=torch.int64)  # per slot: filter, image, order
        self._weight = torch.empty(0)
        self._first = torch.empty(0, dtype=torch.bool)
        self._used = torch.empty(0, dtype=torch.bool)

    @property
    def capacity(self) -> int:
        """The slots the blocks hold (rows <= capacity)."""
        return len(self._blocks) * self.block_rows

    def _add_blocks(self, count: int, device: torch.device) -> None:
        """Adds ``count`` blocks on ``device`` (the small columns move there too)."""
        B = self.block_rows
        self._blocks = [b.to(device) for b in self._blocks] + [torch.empty(B, self.channels, device=device)
                                                               for _ in range(count)]
        grow = count * B
        self._keys = torch.cat([self._keys.to(device), torch.empty(grow, 3, dtype=torch.int64, device=device)])
        self._weight = torch.cat([self._weight.to(device), torch.empty(grow, device=device)])
        self._first = torch.cat([self._first.to(device), torch.empty(grow, dtype=torch.bool, device=device)])
        self._used = torch.cat([self._used.to(device), torch.zeros(grow, dtype=torch.bool, device=device)])

    def add(self, filt: torch.Tensor, images: torch.Tensor, weights: torch.Tensor, z: torch.Tensor,
            first_layer: bool | torch.Tensor = False) -> None:
        """Stashes M rows into the lowest free slots (adding blocks on z's device when too few are free).

        Args:
            filt: [M] int64 the rows' filters.
            images: [M] int64 their image indices.
            weights: [M] their weights (kept as float32).
            z: [M, C] their vectors (kept as float32).
            first_layer: whether each z is the head's first layer's output: one bool for all, or [M] bool.
        """
        M = len(filt)
        if not M:
            return
        free = (~self._used).nonzero().flatten()
        if len(free) < M or self._used.device != z.device:
            self._add_blocks(-(-(M - len(free)) // self.block_rows) if len(free) < M else 0, z.device)
            free = (~self._used).nonzero().flatten()
        slots = free[:M]
        self._write(slots, z.float())
        dev = self._used.device
        order = torch.arange(self._added, self._added + M, device=dev)
        self._keys[slots] = torch.stack([filt.to(dev, torch.int64), images.to(dev, torch.int64), order], 1)
        self._weight[slots] = weights.float().to(dev)
        self._first[slots] = first_layer.to(dev) if isinstance(first_layer, torch.Tensor) else first_layer
        self._used[slots] = True
        self._added += M
        self.rows += M

    def _write(self, slots: torch.Tensor, z: torch.Tensor) -> None:
        """Writes z [M, C] float32 into the ascending ``slots`` [M] (the rows of one block are neighbours)."""
        block, row = slots // self.block_rows, slots % self.block_rows
        ids, counts = torch.unique_consecutive(block, return_counts=True)
        for b, rows, vectors in zip(ids.tolist(), row.split(counts.tolist()), z.split(counts.tolist()), strict=True):
            self._blocks[b].index_copy_(0, rows, vectors)

    def slots(self, ordered: bool = True) -> torch.Tensor:
        """The slots that hold rows [R] int64.

        Args:
            ordered: in the order the rows were added; False: in slot order (cheaper).
        """
        held = self._used.nonzero().flatten()
        return held[self._keys[held, 2].argsort()] if ordered else held

    def keys(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(filters, images, weights) of the rows in ``slots``.

        Args:
            slots: [R] int64 slots that hold rows (from :meth:`slots`).
        """
        return self._keys[slots, 0], self._keys[slots, 1], self._weight[slots]

    def vectors(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [R, C], first_layer [R]) of the rows in ``slots`` (a copy).

        Args:
            slots: [R] int64 slots that hold rows (from :meth:`slots`).
        """
        z = torch.empty(len(slots), self.channels, device=self._used.device)
        block = slots // self.block_rows
        for b in block.unique().tolist():
            mine = (block == b).nonzero().flatten()
            z[mine] = self._blocks[b][slots[mine] % self.block_rows]
        return z, self._first[slots]

    def drain(self):
        """Yields, block by block, ((filters, images, weights), z [r, C], first_layer [r]) of the rows the
        block holds, in slot order, z being the block itself when every slot of it holds a row (no
        copy); each block is let go once the next is asked for, and the stash is empty afterwards
        (also when the reader stops early)."""
        B = self.block_rows
        try:
            for b, block in enumerate(self._blocks):
                held = self._used[b * B:(b + 1) * B].nonzero().flatten()
                if len(held):
                    slots = held + b * B
                    yield self.keys(slots), (block if len(held) == B else block[held]), self._first[slots]
                self._blocks[b] = None  # read: its memory goes before the next block's head work
        finally:
            self.clear()

    def drop(self, slots: torch.Tensor) -> None:
        """Frees ``slots``, dropping their rows (and blocks no longer needed: see the module's note).

        Args:
            slots: [R] int64 distinct slots that hold rows.
        """
        self._used[slots] = False
        self.rows -= len(slots)
        if len(self._blocks) > 1 and 2 * -(-self.rows // self.block_rows) <= len(self._blocks):
            self._shrink()

    def _shrink(self) -> None:
        """Moves the rows of the blocks beyond the first ceil(rows / block_rows) into free slots of
        those, one block at a time, and lets those blocks go: pruning once gives back the memory of
        what it dropped."""
        B = self.block_rows
        cut = -(-self.rows // B) * B
        free = (~self._used[:cut]).nonzero().flatten()
        taken = 0
        for b in range(cut // B, len(self._blocks)):
            held = self._used[b * B:(b + 1) * B].nonzero().flatten()
            to, moving = free[taken:taken + len(held)], held + b * B
            self._write(to, self._blocks[b][held])
            for column in (self._keys, self._weight, self._first):
                column[to] = column[moving]
            self._used[to] = True
            taken += len(held)
            self._blocks[b] = None
        self._blocks = self._blocks[:cut // B]
        self._keys, self._weight, self._first, self._used = (
            column[:cut].clone() for column in (self._keys, self._weight, self._first, self._used))
