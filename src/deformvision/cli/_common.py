"""Helpers shared by the subcommands: argument types, config files or recipe names, and error messages."""

import argparse
import json
import sys
from pathlib import Path

from deformvision.recipes import list_recipes, recipe_path


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def _error(command: str, message: str) -> None:
    print(f"deformvision {command}: error: {message}", file=sys.stderr)


def config_file(config: str) -> Path:
    """The YAML file a ``CONFIG`` argument names: an existing file path, else a recipe name (or ``NAME.yaml``).

    Raises:
        FileNotFoundError: ``config`` is neither an existing file nor a recipe; the message lists the recipes.
    """
    path = Path(config)
    if path.is_file():
        return path
    if path.name == config and path.stem in list_recipes():  # a bare name, not a path into some directory
        return recipe_path(path.stem)
    raise FileNotFoundError(
        f"config file not found: {config} (nor is it a recipe name; recipes: {', '.join(list_recipes())})"
    )
