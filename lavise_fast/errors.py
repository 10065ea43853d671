"""The exceptions lavise_fast raises for what a user can get wrong, as one family.

One family, so that a caller (and the command line) can tell an input error from a bug.

- :class:`LaviseError`: the base of the family.
- :class:`InputError` (also a ``ValueError``): a bad value or a damaged file.
- :class:`InputTypeError` (also a ``TypeError``): a wrong kind of object.
- :class:`MissingInputError` (also a ``FileNotFoundError``): a file or folder that is not there.
- :class:`OutputError` (also an ``OSError``): an output that cannot be written where asked;
  :class:`IsAFolderError` (also an ``IsADirectoryError``) when the path is a folder, and
  :class:`NotAFolderError` (also a ``NotADirectoryError``) when a folder is asked for and a file is
  there.
- :class:`UnknownWordError` (also a ``KeyError``): a word a word space does not know.
- :class:`MissingPackageError` (also an ``ImportError``): an optional package that is not installed
  (the message names the ``pip install``).
- :class:`DistributedError` (also a ``RuntimeError``): a distributed sweep whose ranks cannot finish
  together (a rank died or stalled, or no process group).

Each also derives from the built-in exception it replaces, so ``except ValueError`` keeps working.
Anything else that escapes lavise_fast is a bug: ``lavise-fast`` reports the family as one line with
exit status 2 and lets everything else show its traceback.
"""

from __future__ import annotations

__all__ = ["LaviseError", "InputError", "InputTypeError", "MissingInputError", "OutputError", "IsAFolderError",
           "NotAFolderError", "UnknownWordError", "MissingPackageError", "DistributedError"]


class LaviseError(Exception):
    """Something the user can fix: a bad argument, an unreadable input, an output that cannot be written."""


class InputError(LaviseError, ValueError):
    """A bad value or a damaged input file."""


class InputTypeError(LaviseError, TypeError):
    """An argument of the wrong kind."""


class MissingInputError(LaviseError, FileNotFoundError):
    """An input file or folder that does not exist."""


class OutputError(LaviseError, OSError):
    """An output that cannot be written where it was asked for."""


class IsAFolderError(OutputError, IsADirectoryError):
    """A path that should name a file names a folder."""


class NotAFolderError(LaviseError, NotADirectoryError):
    """A path that should name a folder names a file."""


class UnknownWordError(LaviseError, KeyError):
    """A word that a word space does not know."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class MissingPackageError(LaviseError, ImportError):
    """An optional package that is not installed."""


class DistributedError(LaviseError, RuntimeError):
    """A distributed sweep that cannot finish: another rank died, stalled, or is not there."""
