"""The folder where lavise_fast caches what it computes.

What it caches: trained default explainers, the demo's network, sentence embeddings. The folder is
``$LAVISE_FAST_CACHE`` when set (``~`` expanded), else ``~/.cache/lavise_fast``, read at each call.
A cache is never fatal: an unreadable entry is logged, recomputed and rewritten by its user."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$LAVISE_FAST_CACHE`` (``~`` expanded) if set and not empty, else ``~/.cache/lavise_fast``."""
    root = os.environ.get("LAVISE_FAST_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lavise_fast"
