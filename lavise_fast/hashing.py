"""Stable digests (SHA-1) of what lavise_fast caches and checkpoints are keyed by.

- :func:`digest`: tensors (dtype, shape and bytes), modules (their state_dict) and the ``repr`` of
  anything else, in order.
- :func:`model_fingerprint`: a model's class, parameters and buffers, and further parts: the key of
  a trained explainer, a cached pooled-feature file, a sweep checkpoint.
- :func:`file_digest`: the bytes of a file (a GloVe file's ``.npy`` cache is keyed by it).
- :func:`json_digest`: a JSON-serialisable value, keys sorted (the demo model's settings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

__all__ = ["digest", "model_fingerprint", "file_digest", "json_digest"]


def digest(*parts: object) -> str:
    """SHA-1 (hex) of tensors (dtype, shape and bytes), modules (their state_dict) and reprs of anything else.

    Args:
        *parts: what to hash, in order: tensors, modules, dicts of tensors (names and tensors) or any
            value with a stable ``repr``.
    """
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, torch.nn.Module):
            part = part.state_dict()
        if isinstance(part, dict) and all(torch.is_tensor(v) for v in part.values()):
            for name, tensor in part.items():
                h.update(name.encode())
                h.update(digest(tensor).encode())
        elif torch.is_tensor(part):
            t = part.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module, *parts: object) -> str:
    """SHA-1 (hex) of the model's class, its parameters and buffers, and ``parts``.

    Args:
        model: the model; its class name and ``state_dict`` are hashed.
        *parts: further values hashed after it (see :func:`digest`).
    """
    return digest(type(model).__qualname__, model, parts)


def file_digest(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-1 of the file's bytes (read in 4 MiB blocks).

    Args:
        path: the file to hash.
        length: how many hex digits to keep (at most 40).
    """
    h = hashlib.sha1()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:length]


def json_digest(value: object, length: int = 20) -> str:
    """The first ``length`` hex digits of the SHA-1 of ``value`` as JSON with sorted keys.

    Args:
        value: a JSON-serialisable value.
        length: how many hex digits to keep (at most 40).
    """
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]
