"""Reading a COCO annotation file and checking its tables (images, categories, annotation ids) as a whole.

Each error names the file, the field and the offending entry (its index in the list, or the repeated ids).
The annotations themselves are checked one by one in :mod:`deformvision.data.coco`.
"""

import json
from collections import Counter
from pathlib import Path
from typing import Any

_SHOWN = 5  # repeated ids shown in an error


def is_int(value: Any) -> bool:
    """Whether ``value`` is a JSON integer (``true``/``false`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def read_coco_json(path: Path) -> dict[str, Any]:
    """The parsed file, checked to hold the lists ``images`` (non-empty), ``annotations`` and ``categories``,
    image entries with an integer ``id``, a non-empty string ``file_name`` and positive integer
    ``width``/``height``, category entries with an integer ``id``, and no image, category or annotation
    id twice.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path`` and the problem, otherwise.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse annotation file {path} as JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a COCO annotation file (expected an object, got a {type(data).__name__})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise ValueError(f"{path} is not a COCO annotation file: '{key}' must be a list, it is {found}")
    if not data["images"]:
        raise ValueError(f"annotation file {path} has no images")
    for i, image in enumerate(data["images"]):
        _check_image(image, i, path)
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not is_int(category.get("id")):
            got = category.get("id") if isinstance(category, dict) else category
            raise ValueError(f"category entry {i} in {path}: 'id' must be an integer, got {got!r}")
    _check_unique([image["id"] for image in data["images"]], "image", path)
    _check_unique([category["id"] for category in data["categories"]], "category", path)
    ann_ids = []
    for i, ann in enumerate(data["annotations"]):
        if isinstance(ann, dict) and "id" in ann:
            if not is_int(ann["id"]):
                raise ValueError(f"annotation entry {i} in {path}: 'id' must be an integer, got {ann['id']!r}")
            ann_ids.append(ann["id"])
    _check_unique(ann_ids, "annotation", path)
    return data


def _check_image(image: Any, index: int, path: Path) -> None:
    where = f"image entry {index} in {path}"
    if not isinstance(image, dict):
        raise ValueError(f"{where} must be an object, got {image!r}")
    missing = [key for key in ("id", "file_name", "width", "height") if key not in image]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(repr(key) for key in missing)}")
    if not is_int(image["id"]):
        raise ValueError(f"{where}: 'id' must be an integer, got {image['id']!r}")
    where += f" (id {image['id']})"
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        raise ValueError(f"{where}: 'file_name' must be a non-empty string, got {image['file_name']!r}")
    for key in ("width", "height"):
        if not is_int(image[key]) or image[key] <= 0:
            raise ValueError(f"{where}: '{key}' must be a positive integer, got {image[key]!r}")


def _check_unique(ids: list[Any], what: str, path: Path) -> None:
    repeated = sorted((i for i, n in Counter(ids).items() if n > 1), key=str)
    if repeated:
        shown = ", ".join(repr(i) for i in repeated[:_SHOWN]) + (", ..." if len(repeated) > _SHOWN else "")
        raise ValueError(
            f"{path} has duplicate {what} ids: {shown} ({len(repeated)} id(s) used more than once); "
            f"each {what} needs its own id"
        )
