"""Atomic file writing, and reading torch and JSON files with one clear error when missing or damaged.

Every file lavise_fast writes goes through :func:`atomic_write`; :func:`read_torch_file` and
:func:`read_json` read.

The content is written to a temporary file in the target's folder (``.<name>.<random>.tmp``),
flushed to disk, then renamed over the target (``os.replace``), so that a reader sees the old file
or the new one, never half of one; on any failure (including Ctrl-C) the temporary file is removed
and the old file is left as it was. The new file gets the mode a plain ``open(path, "w")`` would
give it: ``0o666`` less the process's umask (``tempfile.mkstemp`` would leave ``0o600``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lavise_fast.errors import InputError, IsAFolderError, MissingInputError

__all__ = ["atomic_write", "atomic_write_json", "atomic_torch_save", "read_torch_file", "read_json", "gist"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, created with mode 0o666 so that the kernel applies the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(
    path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], object], *, encoding: str = "utf-8"
) -> Path:
    """Writes ``content`` to ``path`` atomically and returns ``path`` as a ``Path``.

    Args:
        path: the file to write (its folder must exist); an existing file is replaced.
        content: ``bytes``, ``str`` (written in ``encoding``), or a function that writes the file's
            bytes to the binary file object it is given (``lambda f: torch.save(obj, f)``).
        encoding: the text encoding of a ``str`` content.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        Whatever ``content`` raises; the temporary file is removed and an old ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsAFolderError(f"cannot write {str(path)!r}: it is a folder")
    if not path.parent.is_dir():
        raise MissingInputError(f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    if isinstance(content, str):
        content = content.encode(encoding)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = None) -> Path:
    """``data`` as JSON (UTF-8; non-ASCII characters as ``\\u`` escapes, so that any ``str``, even one
    holding the surrogates of an undecodable file name, round-trips) written with :func:`atomic_write`.
    ``data`` is serialised before anything is written: a value JSON cannot hold raises ``TypeError``
    and leaves no file behind.

    Args:
        path: the file to write (its folder must exist); an existing file is replaced.
        data: a JSON-serialisable value.
        indent: JSON indentation (None: one line).
    """
    return atomic_write(path, json.dumps(data, indent=indent))


def atomic_torch_save(payload: object, path: str | os.PathLike) -> Path:
    """``torch.save(payload, path)`` through :func:`atomic_write`: ``path`` is never left half-written.

    Args:
        payload: what to save (tensors, dicts, plain values).
        path: the file to write (its folder must exist); an existing file is replaced.
    """
    import torch

    return atomic_write(path, lambda f: torch.save(payload, f))


def read_torch_file(path: str | os.PathLike, what: str, map_location: str | object = "cpu") -> object:
    """``torch.load(path, weights_only=True)`` with one clear ``ValueError`` naming ``what`` and the
    file when it is empty, truncated, corrupted (the zip checksums of ``torch.save`` are checked) or
    not a torch file; ``FileNotFoundError`` when it is missing.

    Args:
        path: the file written by ``torch.save``.
        what: what the file is, for the messages (e.g. "explainer file").
        map_location: ``torch.load``'s ``map_location`` (default the CPU).
    """
    import zipfile

    import torch

    path = Path(path)
    where = f"{what} {str(path)!r}"
    if not path.is_file():
        raise MissingInputError(f"{where} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"{where} is empty (0 bytes)")
    try:  # torch.save writes a zip archive: its directory is at the end, a checksum guards every entry
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise InputError(f"{where} is not a file written by torch.save: no complete zip archive (truncated, "
                         "corrupted, or another kind of file)") from None
    if damaged is not None:
        raise InputError(f"{where} is corrupted: the checksum of its part {damaged!r} does not match its bytes")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise InputError(f"{where} cannot be read by torch.load (truncated or corrupted?): {gist(error)}") from None


def gist(error: BaseException) -> str:
    """The first line of an error's message (and the next one when the first ends with a colon).

    Args:
        error: the exception; its type's name stands in for an empty message.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON of ``path``; FileNotFoundError / ValueError naming the file (``what`` says what it is)
    and, for a file that stops in the middle of the JSON, that it looks truncated.

    Args:
        path: the JSON file (UTF-8, a BOM allowed).
        what: what the file is, for the messages (e.g. "COCO annotation file").
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{what} {str(path)!r} does not exist (or is not a file)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{what} {str(path)!r} is not UTF-8 JSON text (byte {error.start} is 0x{error.object[error.start]:02x})"
        ) from None
    except OSError as error:
        raise InputError(f"{what} {str(path)!r} cannot be read: {error}") from None
    if not text.strip():
        raise InputError(f"{what} {str(path)!r} is empty; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        ends_early = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
        hint = " (it ends early: truncated?)" if ends_early else ""
        raise InputError(f"{what} {str(path)!r} is not valid JSON{hint}: {error}") from None
