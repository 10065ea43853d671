"""Checks of plain argument values, raising the package's input errors with the argument's name,
what was expected and what was given. ``bool`` is never accepted as a number."""

from __future__ import annotations

import math
import numbers

from lavise_fast.errors import InputError, InputTypeError

__all__ = ["int_at_least", "positive_int", "number_in"]


def int_at_least(argument: str, value, low: int) -> int:
    """``value`` as an int, refused unless it is an integer (not a bool) and at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{argument} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise InputError(f"{argument} must be at least {low}, got {value}")
    return int(value)


def positive_int(argument: str, value) -> int:
    """``value`` as an int, refused unless it is an integer (not a bool) and at least 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def number_in(argument: str, value, low: float, high: float, *, low_open: bool = False,
              high_open: bool = False) -> float:
    """``value`` as a float, refused unless it is a finite real number (not a bool) in the interval
    from ``low`` to ``high`` (open at an end where asked)."""
    brackets = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{argument} must be a number in {brackets}, got {value!r}")
    inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not inside:
        raise InputError(f"{argument} must be a number in {brackets}, got {value!r}")
    return float(value)
