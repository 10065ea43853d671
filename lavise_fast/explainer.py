"""The LaViSE explainer (a small head from pooled feature vectors to a word space) and its training loss.

Head (the paper's): BatchNorm1d(C), Dropout(0.1), Linear(C, C), ReLU, BatchNorm1d(C),
Dropout(0.1), Linear(C, D). Trained (:mod:`lavise_fast.training`) with the cosine-similarity
margin ranking loss (CSMR): each true word of a region must score at least ``margin`` higher in
cosine similarity than every other training word.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import atomic_torch_save, gist, read_torch_file

__all__ = ["Explainer", "csmr_loss", "FORMAT"]

FORMAT = "lavise_fast.explainer/1"


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
        embeddings: [B, D] head outputs.
        targets: [B] word indices, or [B, V] marks (nonzero: a true word); every row marks at least one word.
        words: [V, D] vectors of the training (seen) words.
        margin: how much higher in cosine similarity each true word must score than each other word (the
            paper's is 1.0).

    Returns:
        The loss, a scalar tensor.
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

    Args:
        channels: C, the layer's channel count (the head's input size), at least 1.
        dim: D, the word space's dimension (the head's output size), at least 1.
        layer: the dotted name of the layer it explains ("": not recorded, not checked).
        space: the word space's name ("": not recorded, not checked).
        seen: the words that supervised its training.
        unseen: the label words held out of training.
        dropout: the dropout rate of the head's two Dropout layers.
        unit_input: scale pooled vectors to unit length before the head.
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
        for name, value in (("channels", channels), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputTypeError(f"{name} must be an int, got {type(value).__name__}")
        if channels < 1 or dim < 1:
            raise InputError(f"channels and dim must be positive, got channels={channels}, dim={dim}")
        for name, value in (("layer", layer), ("space", space)):
            if not isinstance(value, str):
                raise InputTypeError(f"{name} must be a string, got {type(value).__name__}")
        for name, value in (("seen", seen), ("unseen", unseen)):
            if isinstance(value, str) or not all(isinstance(w, str) for w in value):
                raise InputTypeError(f"{name} must be a list of words (strings), got {value!r:.60}")
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
        """The embeddings [M, D] float32 of pooled vectors (scaled to unit length first with ``unit_input``).

        Args:
            z: pooled feature vectors [M, C], any float dtype (computed in float32).
        """
        if z.dim() != 2 or z.shape[1] != self.channels:
            raise InputError(
                f"the explainer of layer {self.layer!r} takes pooled vectors [M, {self.channels}], "
                f"got {tuple(z.shape)}"
            )
        z = z.float()
        if self.unit_input:
            z = F.normalize(z, dim=1)
        return self.head(z)

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, C], b [C]) such that, in eval mode, the head's first BatchNorm1d, Dropout and Linear
        map x [M, C] to ``x @ W.T + b``. That map is linear up to ``b``, so it commutes with pooling:
        ``W mean_hw(A * w) = mean_hw((W A) * w)`` for a map A [C, h, w] and weights w [h, w]."""
        if self.training:
            raise InputError("first_layer() is the head in eval mode: call explainer.eval() first")
        norm, linear = self.head[0], self.head[2]
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0.0)
        return (linear.weight * scale).detach(), (linear.weight @ shift + linear.bias).detach()

    def after_first_layer(self, h: torch.Tensor) -> torch.Tensor:
        """The rest of the head (ReLU, BatchNorm1d, Dropout, Linear): the embeddings [M, D] of the first
        layer's outputs (see :meth:`first_layer`; ``unit_input`` applies before it).

        Args:
            h: [M, C] outputs of the head's first layer.
        """
        return self.head[4:](F.relu(h.float()))

    def check_compatible(self, layer: str, channels: int, space: str | None = None) -> None:
        """Refuses a layer, channel count or word space other than the one it was trained for.

        Args:
            layer: the dotted name of the layer to explain (checked when the explainer records one).
            channels: the layer's channel count C.
            space: the word space's name; None (or no recorded space): not checked.

        Raises:
            InputError: naming what differs.
        """
        if channels != self.channels:
            raise InputError(
                f"this explainer was trained on {self.channels} channels ({self.layer!r}); the layer has {channels}"
            )
        if self.layer and layer != self.layer:
            raise InputError(f"this explainer was trained for layer {self.layer!r}, not {layer!r}")
        if space is not None and self.space and space != self.space:
            raise InputError(f"this explainer was trained in the word space {self.space!r}, not {space!r}")

    def check_vocabulary(self, vocabulary) -> None:
        """Refuses a :class:`lavise_fast.Vocabulary` of another dimension or word space than this head's.

        Args:
            vocabulary: the vocabulary to rank words from: its ``vectors`` [V, D] and ``space`` name.

        Raises:
            InputError: naming what differs.
        """
        if self.dim != vocabulary.vectors.shape[1]:
            raise InputError(f"the explainer embeds into {self.dim} dimensions, the vocabulary has "
                             f"{vocabulary.vectors.shape[1]}")
        space = getattr(vocabulary, "space", "")
        if space and self.space and space != self.space:
            raise InputError(f"the vocabulary is in the word space {space!r}, the explainer was trained in "
                             f"{self.space!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Writes the head and its metadata to ``path`` (atomically: a temporary file, then a rename).

        Args:
            path: the torch file to write (read back with :meth:`load`).
        """
        path = Path(path)
        payload = {
            "format": FORMAT,
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
        """Reads an explainer written by :meth:`save`, in eval mode.

        Args:
            path: the file written by :meth:`save`.
            map_location: where to load the weights (``torch.load``'s ``map_location``; default the CPU).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: naming the file and what is wrong with it (empty, truncated or corrupted,
                another kind of file, metadata that does not fit the weights).
        """
        where = f"explainer file {str(path)!r}"
        payload = read_torch_file(path, "explainer file", map_location)
        version = payload.get("format") if isinstance(payload, dict) else None
        if isinstance(version, str) and version.startswith("lavise_fast.explainer/") and version != FORMAT:
            raise InputError(f"{where} is an explainer of format {version!r}, which this lavise_fast does not read "
                             f"(it reads {FORMAT}): update lavise_fast")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = (f"format {payload.get('format')!r}" if isinstance(payload, dict) and "format" in payload
                     else f"a dict of {list(payload)[:4]}" if isinstance(payload, dict) else type(payload).__name__)
            raise InputError(f"{where} is not a lavise_fast explainer: expected a dict of format {FORMAT!r} "
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
