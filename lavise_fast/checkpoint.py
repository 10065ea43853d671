"""Checkpoints of a sweep in progress, so that a crashed sweep resumes where it stopped.

A checkpoint is one torch file in a folder (``sweep.pt``, or ``sweep.rank{r}-of-{w}.pt`` per rank
of a distributed sweep), written atomically (a temporary file, then a rename): the batches and
images read so far and every layer's :class:`~lavise_fast.sweep_state.LayerSweep` state. Beside
the state it records what the sweep was: the model's weights (a SHA-1), the layers, the
dataset's length, the settings, the explainers and the vocabulary; a sweep resumes from it only
when all of these are the same, and otherwise is refused with an error naming what differs.
"""

from __future__ import annotations

import os
from pathlib import Path

from lavise_fast.errors import InputError, NotAFolderError
from lavise_fast.files import atomic_torch_save, read_torch_file

__all__ = ["SweepCheckpoint"]

FORMAT = "lavise_fast.sweep/2"  # /2: the top pairs keep embeddings, not word indices


class SweepCheckpoint:
    """The checkpoint file of one sweep (one rank of it) in ``folder``, for a sweep described by
    ``fields`` (a dict of plain values: what must match for a resume).

    Args:
        folder: the folder of the checkpoint (created at the first save; a file there is refused).
        fields: what the sweep is (model digest, layers, dataset length, settings, ...), plain values;
            a resume needs every one equal.
        rank: this process's rank in a distributed sweep (0 for a single process).
        world: the number of ranks; 1 names the file ``sweep.pt``, more ``sweep.rank{rank}-of-{world}.pt``.

    Raises:
        NotAFolderError: ``folder`` exists and is a file.
    """

    def __init__(self, folder: str | os.PathLike, fields: dict, rank: int = 0, world: int = 1) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotAFolderError(f"checkpoint={str(folder)!r} must be a folder, and it is a file")
        name = "sweep.pt" if world == 1 else f"sweep.rank{rank}-of-{world}.pt"
        self.path = self.folder / name
        self.fields = fields

    def load(self) -> dict | None:
        """The saved state when there is a checkpoint of this sweep, None when there is none.

        Raises:
            ValueError: the file is truncated or corrupted, or is the checkpoint of another sweep
                (the message names each field that differs).
        """
        if not self.path.is_file():
            return None
        try:
            payload = read_torch_file(self.path, "sweep checkpoint")
        except ValueError as error:
            raise InputError(f"{error}; delete it to start the sweep over") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputError(f"{self.path} is not a lavise_fast sweep checkpoint (expected format {FORMAT!r})")
        saved = payload.get("fields", {})
        differ = [f"{key}: the checkpoint has {_short(saved.get(key))}, this sweep {_short(value)}"
                  for key, value in self.fields.items() if saved.get(key) != value]
        if differ:
            raise InputError(f"sweep checkpoint {self.path} belongs to another sweep ("
                             + "; ".join(differ) + "): pass another checkpoint folder, or delete it to start over")
        return payload["state"]

    def save(self, state: dict) -> None:
        """Writes ``state`` with the fields, atomically (a temporary file, then a rename).

        Args:
            state: what :meth:`load` gives back: CPU tensors and plain values.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"format": FORMAT, "fields": self.fields, "state": state}, self.path)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
