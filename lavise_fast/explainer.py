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

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Explainer", "csmr_loss"]

_FORMAT = "lavise_fast.explainer/1"


def csmr_loss(
    embeddings: torch.Tensor, targets: torch.Tensor, words: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Cosine-similarity margin ranking loss.

    With ``s[b, v] = cos(embeddings[b], words[v])`` and the true score ``t[b]`` = the mean of
    ``s[b, v]`` over the words ``v`` that ``targets[b]`` marks, the loss is
    ``mean_b sum_{v not marked} max(0, margin - t[b] + s[b, v])``.

    Args:
        embeddings: [B, D] head outputs. targets: [B] word indices, or [B, V] 0/1 marks.
        words: [V, D] vectors of the training (seen) words.
    """
    sims = F.normalize(embeddings, dim=1) @ F.normalize(words, dim=1).t()  # [B, V]
    if targets.dim() == 1:
        marks = torch.zeros_like(sims).scatter_(1, targets.long()[:, None], 1.0)
    else:
        marks = targets.to(sims.dtype)
    if (marks.sum(1) == 0).any():
        raise ValueError("every row of targets must mark at least one word")
    true = (sims * marks).sum(1, keepdim=True) / marks.sum(1, keepdim=True)
    hinge = (margin - true + sims).clamp_min(0.0) * (1.0 - marks)
    return hinge.sum(1).mean()


class Explainer(nn.Module):
    """The head plus what it was trained for: ``layer`` (dotted name), ``channels`` (C), ``dim``
    (D of the word space), ``space`` (its name), ``seen`` and ``unseen`` words.

    ``explainer(z)`` maps pooled vectors [M, C] to embeddings [M, D].
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
    ) -> None:
        super().__init__()
        if channels < 1 or dim < 1:
            raise ValueError(f"channels and dim must be positive, got channels={channels}, dim={dim}")
        self.channels, self.dim, self.layer, self.space = int(channels), int(dim), layer, space
        self.seen, self.unseen = list(seen), list(unseen)
        self.dropout = float(dropout)
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
            raise ValueError(
                f"the explainer of layer {self.layer!r} takes pooled vectors [M, {self.channels}], "
                f"got {tuple(z.shape)}"
            )
        return self.head(z.float())

    def check_compatible(self, layer: str, channels: int, space: str | None = None) -> None:
        """Refuses a layer, channel count or word space other than the one it was trained for."""
        if channels != self.channels:
            raise ValueError(
                f"this explainer was trained on {self.channels} channels ({self.layer!r}); the layer has {channels}"
            )
        if self.layer and layer != self.layer:
            raise ValueError(f"this explainer was trained for layer {self.layer!r}, not {layer!r}")
        if space is not None and self.space and space != self.space:
            raise ValueError(f"this explainer was trained in the word space {self.space!r}, not {space!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Writes the head and its metadata to ``path`` (atomically: a temporary file, then a rename)."""
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "config": {
                "channels": self.channels, "dim": self.dim, "layer": self.layer, "space": self.space,
                "seen": self.seen, "unseen": self.unseen, "dropout": self.dropout, "trained": self.trained,
            },
            "state_dict": self.state_dict(),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Explainer:
        """Reads an explainer written by :meth:`save`; ValueError naming the file when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"explainer file {str(path)!r} does not exist")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} is not a readable explainer file (truncated or corrupted?): {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a lavise_fast explainer file (expected format {_FORMAT!r})")
        config = dict(payload["config"])
        trained = config.pop("trained")
        explainer = cls(**config)
        explainer.load_state_dict(payload["state_dict"])
        explainer.trained = trained
        return explainer.eval()
