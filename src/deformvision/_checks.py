"""Argument checks shared by every layer of the library (ops, layers, models).

Each error names the argument and the value: a value of the wrong type raises ``TypeError``, a value of the
right type outside its range raises ``ValueError``. This module imports only torch and the standard library,
so every layer may use it.
"""

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor


def check_tensor(name: str, value: object, optional: bool = False) -> None:
    """``value`` must be a ``torch.Tensor`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, Tensor):
        allowed = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__}")


def check_int(name: str, value: Any, low: int = 1) -> None:
    """``value`` must be an int (not a bool, not a float such as 2.0) of at least ``low``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")


def check_ints(name: str, values: Sequence[Any], low: int = 1) -> None:
    """Every item of ``values`` must be an int of at least ``low`` (``name[i]`` named in the error)."""
    for i, value in enumerate(values):
        check_int(f"{name}[{i}]", value, low)


def check_rate(name: str, value: Any) -> None:
    """``value`` must be a dropout or drop-path probability: a finite number in [0, 1)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_bool(name: str, value: Any) -> None:
    """``value`` must be True or False (not 0/1, not a string such as ``"false"``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
