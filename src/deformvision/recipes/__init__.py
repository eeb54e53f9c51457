"""Training recipes: the YAML configs shipped inside the package (``deformvision train NAME``).

Each recipe is a file ``<name>.yaml`` of this package, read by :func:`deformvision.engine.load_config`;
its first line is a comment with its one-line description, and a ``base:`` key names another recipe
file of this directory that is merged first. The files are package data, so they are found the same
way from a source checkout, an editable install and an installed wheel.
"""

from importlib import resources
from pathlib import Path

__all__ = ["list_recipes", "recipe_description", "recipe_path"]

# An installed package (regular or editable) is a directory on disk: recipes are real files, so that
# `base:` keys resolve relative to them and any YAML reader can open them.
_RECIPE_DIR = Path(str(resources.files(__name__)))


def list_recipes() -> list[str]:
    """The names of the shipped recipes (file names without ``.yaml``), sorted."""
    return sorted(path.stem for path in _RECIPE_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The file of the recipe ``name`` (e.g. ``"dat_digits"``; a trailing ``.yaml`` is accepted).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: there is no recipe of that name; the message lists the available ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"recipe name must be a str, got {type(name).__name__}: {name!r}")
    stem = name.removesuffix(".yaml")
    if stem not in list_recipes():
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(list_recipes())}")
    return _RECIPE_DIR / f"{stem}.yaml"


def recipe_description(name: str) -> str:
    """The one-line description of the recipe ``name``: its first line if that is a comment, else ``""``.

    Raises:
        TypeError, ValueError: as :func:`recipe_path`.
    """
    with recipe_path(name).open(encoding="utf-8") as file:
        first = file.readline().strip()
    return first.removeprefix("#").strip() if first.startswith("#") else ""
