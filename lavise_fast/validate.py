"""Checks of plain argument values (ints and numbers in a range) for the public entry points.

A refused value raises the package's input errors with the argument's name, what was expected and
what was given. ``bool`` is never accepted as a number."""

from __future__ import annotations

import math
import numbers

from lavise_fast.errors import InputError, InputTypeError

__all__ = ["int_at_least", "positive_int", "number_in"]


def int_at_least(argument: str, value, low: int) -> int:
    """``value`` as an int, refused unless it is an integer (not a bool) and at least ``low``.

    Args:
        argument: the argument's name, for the error message.
        value: the value to check.
        low: the smallest value accepted.

    Raises:
        InputTypeError: ``value`` is not an integer (or is a bool).
        InputError: ``value`` is below ``low``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{argument} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise InputError(f"{argument} must be at least {low}, got {value}")
    return int(value)


def positive_int(argument: str, value) -> int:
    """``value`` as an int, refused unless it is an integer (not a bool) and at least 1.

    Args:
        argument: the argument's name, for the error message.
        value: the value to check.

    Raises:
        InputError: ``value`` is not an integer, is a bool, or is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def number_in(argument: str, value, low: float, high: float, *, low_open: bool = False,
              high_open: bool = False) -> float:
    """``value`` as a float, refused unless it is a finite real number (not a bool) in the interval
    from ``low`` to ``high`` (open at an end where asked).

    Args:
        argument: the argument's name, for the error message.
        value: the value to check.
        low: the low end of the interval.
        high: the high end of the interval.
        low_open: exclude ``low`` itself (``value > low``); default ``value >= low``.
        high_open: exclude ``high`` itself (``value < high``); default ``value <= high``.

    Raises:
        InputError: ``value`` is not a finite real number, is a bool, or is outside the interval.
    """
    brackets = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{argument} must be a number in {brackets}, got {value!r}")
    inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not inside:
        raise InputError(f"{argument} must be a number in {brackets}, got {value!r}")
    return float(value)
