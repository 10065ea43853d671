"""The folder where lavise_fast caches what it computes.

What it caches: trained default explainers, the demo's network, sentence embeddings. The folder is
``$LAVISE_FAST_CACHE`` when set (``~`` expanded), else ``~/.cache/lavise_fast``, read at each call.
A cache is never fatal: an unreadable entry is logged, recomputed and rewritten by its user, and a
folder that cannot be made or written (a file, a read-only place) is logged once and replaced by a
temporary folder of this process."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir"]

log = logging.getLogger(__name__)
_FALLBACKS: dict[Path, Path] = {}


def cache_dir() -> Path:
    """``$LAVISE_FAST_CACHE`` (``~`` expanded) if set and not empty, else ``~/.cache/lavise_fast``;
    created; a temporary folder (logged once) when that one cannot be made or written."""
    root = os.environ.get("LAVISE_FAST_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "lavise_fast"
    if path in _FALLBACKS:
        return _FALLBACKS[path]
    try:
        path.mkdir(parents=True, exist_ok=True)
        usable = os.access(path, os.W_OK | os.X_OK)
        problem = "it is not writable"
    except OSError as error:
        usable, problem = False, f"{type(error).__name__}: {error.strerror or error}"
    if usable:
        return path
    fallback = Path(tempfile.mkdtemp(prefix="lavise_fast_cache_"))
    log.warning("the cache folder %s cannot be used (%s); caching in %s for this process instead", path, problem,
                fallback)
    _FALLBACKS[path] = fallback
    return fallback
