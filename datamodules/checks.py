"""Argument checks shared by every layer (datamodules, the LASS engine, the callbacks, the models).

This module sits at the bottom of the house: it imports nothing of the project, so the datamodules, the
functional layer and everything above it may use it. Each check raises with the argument's name, the value and what
was expected: a :class:`TypeError` for a value of the wrong type, a :class:`ValueError` for one out of range. Bools
are never integers here (``True`` is not a batch size), and numpy integers are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

#: The seeds torch's generators accept (``torch.Generator.manual_seed`` raises outside this range).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def is_int(value: Any) -> bool:
    """A python or numpy integer, not a bool (nor a float that happens to be whole)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_real(value: Any) -> bool:
    """A finite python or numpy real number, not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and type(value).__name__ != "bool_"
        and math.isfinite(value)
    )


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a python int when it is a valid seed: a python or numpy integer (not a bool) in torch's range.

    Seeds are hashed into the named random streams of the project, so ``0``, ``0.0`` and ``tensor(0)`` must not
    be three different seeds: only integers are accepted.

    Example:
        >>> import numpy as np
        >>> check_seed(np.int64(7))
        7
        >>> check_seed(0.0)
        Traceback (most recent call last):
        ...
        TypeError: `seed` must be an int (a python or numpy integer, not a bool), got 0.0 (float)
    """
    if not is_int(value):
        raise TypeError(
            f"`{name}` must be an int (a python or numpy integer, not a bool), got {value!r} ({type(value).__name__})"
        )
    value = int(value)
    if not SEED_MIN <= value <= SEED_MAX:
        raise ValueError(f"`{name}` must be in [-2**63, 2**64 - 1] (torch's seed range), got {value}")
    return value


def check_int(value: Any, name: str, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as a python int (or None when ``allow_none``), at least ``minimum`` when given."""
    if value is None and allow_none:
        return None
    expected = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if allow_none else "")
    if not is_int(value):
        raise TypeError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")
    return int(value)


def check_real(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
) -> float:
    """``value`` as a float when it is a finite real number in the given range (bounds inclusive unless strict)."""
    low = "" if minimum is None else f"{'(' if strict_minimum else '['}{minimum}"
    high = "" if maximum is None else f"{maximum}{')' if strict_maximum else ']'}"
    if minimum is not None and maximum is not None:
        expected = f"a finite number in {low}, {high}"
    elif minimum is not None:
        expected = f"a finite number {'>' if strict_minimum else '>='} {minimum}"
    elif maximum is not None:
        expected = f"a finite number {'<' if strict_maximum else '<='} {maximum}"
    else:
        expected = "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__})")
    ok = math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if strict_maximum else value <= maximum
    if not ok:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` when it is a bool (python or numpy); ``"no"`` or ``1`` is not a switch."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"`{name}` must be a bool, got {value!r} ({type(value).__name__})")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices`` (a ``Literal`` argument)."""
    if isinstance(value, str) and value in choices:
        return value
    if not isinstance(value, str) and any(value is c for c in choices):
        return value
    raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def check_str(value: Any, name: str, allow_none: bool = False) -> str | None:
    """``value`` when it is a non-empty string (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"`{name}` must be a non-empty string{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_callable(value: Any, name: str, allow_none: bool = True) -> Any:
    """``value`` when it is callable (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"`{name}` must be callable{' or None' if allow_none else ''}, got {type(value).__name__}")
    return value
