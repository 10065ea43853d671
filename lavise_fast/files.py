"""Atomic file writing under one output policy, and reading torch and JSON files with one clear error
when missing or damaged.

Every file lavise_fast writes goes through :func:`atomic_write`; :func:`check_output` applies the
same policy to a path before any work starts; :func:`read_torch_file` and :func:`read_json` read.

The content is written to a temporary file in the target's folder (``.<name>.<random>.tmp``, the
name shortened to fit the file system's 255 bytes), flushed to disk, then renamed over the target
(``os.replace``), so that a reader sees the old file or the new one, never half of one; on any
failure (including Ctrl-C) the temporary file is removed and the old file is left as it was.

The output policy (the README's Errors table, "Output paths"):

- a symbolic link is written through, as a shell's ``>`` does: the file it points to is replaced
  and the link stays;
- an existing regular file is replaced and keeps its permission bits; a new file gets the mode a
  plain ``open(path, "w")`` would give it (``0o666`` less the umask);
- a folder, a FIFO, a device node or a socket is refused, and so is a file with other hard links
  (the rename would cut them off);
- the folder must exist and be writable; an output that is one of the command's inputs is refused.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lavise_fast.errors import InputError, IsAFolderError, MissingInputError, NotAFolderError, OutputError

__all__ = ["atomic_write", "atomic_write_json", "atomic_torch_save", "check_output", "strict_json", "read_torch_file",
           "read_json", "gist"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_NAME_MAX = 255  # bytes in a file name (Linux, macOS, Windows)
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, created with mode 0o666 so that the kernel applies the umask; its name
    is ``path``'s shortened to fit ``_NAME_MAX`` bytes with the prefix and the random suffix."""
    stem = os.fsencode(path.name)[: _NAME_MAX - 15].decode(errors="ignore") or "out"
    while True:
        tmp = path.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue


def _write_target(path: Path, what: str, make_folders: bool = False) -> tuple[Path, int | None]:
    """(the file to replace: ``path``, or where its symbolic link points; the permission bits of the file
    it replaces, None for a new file) under the output policy (module docstring); with ``make_folders``,
    the missing folders of ``path`` are created once nothing refuses it."""
    shown = f"{what} {str(path)!r}" if what else repr(str(path))

    def check_name(name: str) -> None:  # before any system call: a name too long fails every one of them
        if len(os.fsencode(name)) > _NAME_MAX:
            raise OutputError(f"cannot write {shown}: its name is {len(os.fsencode(name))} bytes, more than the "
                              f"{_NAME_MAX} a file name may have")

    check_name(path.name)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    check_name(target.name)
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsAFolderError(f"cannot write {shown}: it is a folder")
        for test, kind in _KINDS:
            if test(st.st_mode):
                raise OutputError(f"cannot write {shown}: it is {kind}, not a regular file (lavise_fast writes "
                                  "regular files only, and never replaces another kind)")
        if st.st_nlink > 1:
            raise OutputError(f"cannot write {shown}: the file has {st.st_nlink} hard links, which replacing it "
                              "would cut off; write elsewhere, or remove the other links")
    folder = target.parent
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotAFolderError(f"cannot write {shown}: {str(ancestor)!r} is a file, not a folder")
    if make_folders:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise MissingInputError(f"cannot write {shown}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {shown}: the folder {str(folder)!r} is not writable")
    return target, None if st is None else stat.S_IMODE(st.st_mode)


def check_output(path: str | os.PathLike, what: str = "output",
                 inputs: dict[str, str | os.PathLike | None] | None = None, *, make_folders: bool = False) -> Path:
    """``path`` checked against the output policy (module docstring) before any work starts; returns it.

    Args:
        path: the file to be written (its folder must exist, unless ``make_folders``).
        what: what the caller calls it, in messages (e.g. ``"--out"``).
        inputs: {what the caller calls it: path} of the inputs it must not be (None values skipped).
        make_folders: create the missing folders of ``path`` (as the command line does).

    Raises:
        OutputError: a folder, a special file, a hard-linked file, an unwritable folder or a name too long.
        MissingInputError: the folder does not exist.
        InputError: ``path`` is one of ``inputs``.
    """
    path = Path(path)
    target, _ = _write_target(path, what, make_folders)
    if target.exists():
        for name, given in (inputs or {}).items():
            if given is not None and Path(given).exists() and os.path.samefile(target, given):
                raise InputError(f"{what} {str(path)!r} is the input {name} ({str(given)!r}): writing it would "
                                 "destroy the input; write the output elsewhere")
    return path


def atomic_write(
    path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], object], *, encoding: str = "utf-8"
) -> Path:
    """Writes ``content`` to ``path`` atomically and returns ``path`` as a ``Path``.

    Args:
        path: the file to write (its folder must exist); an existing file is replaced under the output
            policy (module docstring): a symbolic link is written through, the mode is kept.
        content: ``bytes``, ``str`` (written in ``encoding``), or a function that writes the file's
            bytes to the binary file object it is given (``lambda f: torch.save(obj, f)``).
        encoding: the text encoding of a ``str`` content.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        OSError: ``path`` is another kind of file than a regular one, has other hard links, its folder
            is not writable or its name is too long (:class:`lavise_fast.errors.OutputError`).
        Whatever ``content`` raises; the temporary file is removed and an old ``path`` is untouched.
    """
    path = Path(path)
    target, mode = _write_target(path, "")
    if isinstance(content, str):
        content = content.encode(encoding)
    fd, tmp = _temporary(target)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def strict_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None, so that its JSON holds no ``NaN`` or
    ``Infinity`` token (which strict JSON readers refuse).

    Args:
        data: JSON-serialisable values (dicts, lists, tuples, numbers, strings).
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: strict_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(value) for value in data]
    return data


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = None) -> Path:
    """``data`` as strict JSON (UTF-8; non-ASCII characters as ``\\u`` escapes, so that any ``str``, even
    one holding the surrogates of an undecodable file name, round-trips; NaN and infinities as ``null``,
    see :func:`strict_json`) written with :func:`atomic_write`. ``data`` is serialised before anything
    is written: a value JSON cannot hold raises ``TypeError`` and leaves no file behind.

    Args:
        path: the file to write (its folder must exist); an existing file is replaced.
        data: a JSON-serialisable value.
        indent: JSON indentation (None: one line).
    """
    return atomic_write(path, json.dumps(strict_json(data), indent=indent, allow_nan=False))


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
    if path.is_dir():
        raise InputError(f"{where} is a folder, not a file")
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
    with zipfile.ZipFile(path) as archive:
        scripted = any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist())
    if scripted:
        raise InputError(f"{where} is a TorchScript model (torch.jit.save), not a file written by torch.save")
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
