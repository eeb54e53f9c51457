"""Argument checks shared by the ops and the layers built on them; every error names the argument and its value."""

from torch import Tensor


def check_tensor(name: str, value: object, optional: bool = False) -> None:
    """Raise a TypeError unless ``value`` is a ``torch.Tensor`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, Tensor):
        allowed = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__}")


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise a ValueError unless ``value`` is an int (not a bool, not a float such as 2.0) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise a TypeError unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
