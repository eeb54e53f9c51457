"""Built-in datasets that need no download, made from scikit-learn's bundled handwritten digits.

- :func:`build_digits_classification`: an ``ImageFolder`` tree of single digits;
- :func:`build_digits_detection`: COCO-format boxes of digits pasted on canvases;
- :func:`build_digits_instance`: the same canvases with per-object masks (COCO RLE segmentations);
- :func:`build_digits_semantic`: the same canvases with PNG label maps (``SegmentationFolder`` layout).

On a canvas, a pixel belongs to a digit where the digit's ink opacity is at least 0.25 (the rule that
makes the boxes tight); for the same ``seed``, ``canvas``, ``object_size`` and ``max_objects`` the three
canvas datasets hold the same images.

Source: ``sklearn.datasets.load_digits`` (UCI optical digits: 1797 grayscale 8x8 images, values
0..16, classes 0..9, about 180 per class). :func:`split_digits` splits them once per seed, 80/20 and
stratified by class; the training sets below use only the training digits, the validation sets only
the others.

Builds are deterministic (same seed and arguments: byte-identical files) and idempotent: a finished
build ends with ``deformvision_dataset.json`` (the arguments) in ``root``; calling again with the
same arguments returns at once, with other arguments raises ``ValueError`` (as does a ``root`` that
exists, is not empty and holds no finished build). Files are written to a hidden sibling folder and moved to ``root``
when complete, so an interrupted build leaves ``root`` untouched.
"""

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

MARKER = "deformvision_dataset.json"
_INK = 0.25  # ink opacity at which a rendered pixel counts as part of the digit (for tight boxes)
_PLACEMENT_TRIES = 20  # positions tried per digit before it is left out of a canvas
DIGITS_SEMANTIC_CLASSES = ("background", *(str(d) for d in range(10)))  # label k of build_digits_semantic


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float64 in [0, 1], labels (1797,) int64)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the built-in digits datasets need scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(np.int64)


def split_digits(labels: np.ndarray, seed: int, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``(train indices, val indices)``, each sorted; ``round(val_fraction * n_c)`` of
    each class's ``n_c`` samples, chosen at random with ``seed``, go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        num_val = round(val_fraction * len(indices))
        val.append(indices[:num_val])
        train.append(indices[num_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _build(root: Path, spec: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Return ``root`` if it holds a finished build of ``spec``; else ``write`` a new one into it."""
    root = Path(root)
    if _is_built(root, spec):
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not empty; remove it or choose another root for the built-in dataset")
    partial = root.with_name(f".{root.name}.partial-{os.getpid()}")  # per process: concurrent builds don't collide
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    (partial / MARKER).write_text(json.dumps(spec, indent=2) + "\n")
    try:
        if root.exists():
            root.rmdir()
        os.replace(partial, root)
    except OSError:
        if not _is_built(root, spec):  # another process finished first: fine if it built the same
            raise
        shutil.rmtree(partial)
    return root


def _is_built(root: Path, spec: dict[str, Any]) -> bool:
    marker = root / MARKER
    if not marker.is_file():
        return False
    built = json.loads(marker.read_text())
    if built != spec:
        raise ValueError(f"{root} holds a dataset built with {built}, not {spec}; remove it or choose another root")
    return True


def _render_ink(digit: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(8, 8)`` ink in ``[0, 1]`` -> ``(height, width)`` float32 ink, bilinear."""
    resized = Image.fromarray(digit.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized).clip(0.0, 1.0)


def _paint(pixels: np.ndarray, ink: np.ndarray, color: np.ndarray) -> None:
    """Blend ``color`` over ``(h, w, 3)`` float ``pixels`` in place with opacity ``ink`` ``(h, w)``."""
    pixels += ink[..., None] * (color - pixels)


def build_digits_classification(root: str | Path, img_size: int = 32, seed: int = 0) -> Path:
    """Write an :class:`~deformvision.data.ImageFolder` tree of the digits and return ``root``.

    Layout: ``root/{train,val}/<digit>/<source index:04d>.png`` (1438 train / 359 val images, classes
    ``"0".."9"``). Each image is the 8x8 digit upscaled bilinearly to ``img_size x img_size`` RGB, ink of
    a random light colour (each channel 170..255) over a random dark background (0..79).
    """
    spec = {"dataset": "digits_classification", "version": 1, "img_size": img_size, "seed": seed}

    def write(out: Path) -> None:
        images, labels = _load_digits()
        rng = np.random.default_rng([seed, 2])
        for split, indices in zip(("train", "val"), split_digits(labels, seed), strict=True):
            for digit in range(10):
                (out / split / str(digit)).mkdir(parents=True)
            for index in indices:
                pixels = np.empty((img_size, img_size, 3), np.float32)
                pixels[:] = rng.integers(0, 80, 3)
                _paint(pixels, _render_ink(images[index], img_size, img_size), rng.integers(170, 256, 3))
                path = out / split / str(labels[index]) / f"{index:04d}.png"
                Image.fromarray(pixels.round().astype(np.uint8)).save(path)

    return _build(Path(root), spec, write)


def _digit_patch(digit: np.ndarray, side: float) -> np.ndarray:
    """The digit's ink scaled so its longer side is about ``side`` pixels, cropped tight to ``ink >= 0.25``."""
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = side / max(crop.shape)
    ink = _render_ink(crop, max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    rows, cols = np.flatnonzero((ink >= _INK).any(1)), np.flatnonzero((ink >= _INK).any(0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _render_canvas(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    canvas: int,
    object_size: tuple[int, int],
    max_objects: int,
) -> tuple[np.ndarray, list[tuple[list[int], int, np.ndarray]]]:
    """One ``(canvas, canvas, 3)`` uint8 image and its objects ``([x, y, w, h], digit, ink (h, w))``.

    ``1..max_objects`` digits are drawn; each gets a longer side log-uniform in ``object_size`` and a
    position where its box keeps at least one pixel of gap to the boxes placed before (a digit with no
    such position in ``_PLACEMENT_TRIES`` tries is left out).
    """
    pixels = np.empty((canvas, canvas, 3), np.float32)
    pixels[:] = rng.integers(0, 80, 3)
    objects: list[tuple[list[int], int, np.ndarray]] = []
    for _ in range(rng.integers(1, max_objects + 1)):
        k = rng.integers(len(digits))
        ink = _digit_patch(digits[k], math.exp(rng.uniform(*np.log(object_size))))
        h, w = ink.shape
        for _ in range(_PLACEMENT_TRIES):
            x, y = int(rng.integers(0, canvas - w + 1)), int(rng.integers(0, canvas - h + 1))
            if all(x > bx + bw or bx > x + w or y > by + bh or by > y + h for (bx, by, bw, bh), *_ in objects):
                _paint(pixels[y : y + h, x : x + w], ink, rng.integers(170, 256, 3))
                objects.append(([x, y, w, h], int(labels[k]), ink))
                break
    return pixels.round().astype(np.uint8), objects


def build_digits_detection(
    root: str | Path,
    canvas: int = 128,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    *,
    object_size: tuple[int, int] = (8, 40),
    max_objects: int = 6,
) -> Path:
    """Write a COCO-format detection set of digits pasted on canvases and return ``root``.

    Layout: ``root/{train,val}/images/<image id:05d>.png`` and ``root/annotations/{train,val}.json``.
    Each ``canvas x canvas`` RGB image has a random dark background and ``1..max_objects`` digits of
    random light colours, longer side log-uniform in ``object_size`` pixels, boxes not touching.

    The json is standard COCO (loads with ``pycocotools``): image ids ``1..num_*``, annotation ids from
    1, categories ``{"id": d, "name": str(d)}`` for ``d = 0..9`` (so category id = digit = contiguous
    label), ``bbox`` ``[x, y, w, h]`` integer pixels tight around the ink (opacity >= 0.25), ``area = w * h``
    and ``iscrowd = 0``.
    """
    _check_object_size(object_size, canvas)
    spec = {
        "dataset": "digits_detection",
        "version": 1,
        "canvas": canvas,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "object_size": list(object_size),
        "max_objects": max_objects,
    }

    def write(out: Path) -> None:
        _write_coco(out, "detection", seed, canvas, (num_train, num_val), object_size, max_objects, masks=False)

    return _build(Path(root), spec, write)


def _check_object_size(object_size: tuple[int, int], canvas: int) -> None:
    if not 1 <= object_size[0] <= object_size[1] <= canvas:
        raise ValueError(f"object_size must be (min, max) with 1 <= min <= max <= canvas={canvas}, got {object_size}")


def _canvases(
    seed: int, canvas: int, counts: tuple[int, int], object_size: tuple[int, int], max_objects: int
) -> Iterator[tuple[str, Iterator[tuple[int, np.ndarray, list[tuple[list[int], int, np.ndarray]]]]]]:
    """Per split ``(name, canvases)``; ``canvases`` yields ``(image id, pixels, objects)`` for image ids
    ``1..count``, drawn from the split's generator ``default_rng([seed, split index])``."""
    images, labels = _load_digits()
    splits = zip(("train", "val"), split_digits(labels, seed), counts, strict=True)
    for split_code, (split, indices, count) in enumerate(splits):

        def draw(split_code: int = split_code, indices: np.ndarray = indices, count: int = count) -> Iterator:
            rng = np.random.default_rng([seed, split_code])
            for image_id in range(1, count + 1):
                pixels, objects = _render_canvas(
                    rng, images[indices], labels[indices], canvas, object_size, max_objects
                )
                yield image_id, pixels, objects

        yield split, draw()


def _object_mask(bbox: list[int], ink: np.ndarray, canvas: int) -> np.ndarray:
    """``(canvas, canvas)`` uint8: 1 where the object's ink opacity is at least ``_INK``."""
    x, y, w, h = bbox
    mask = np.zeros((canvas, canvas), np.uint8)
    mask[y : y + h, x : x + w] = ink >= _INK
    return mask


def _write_coco(
    out: Path,
    kind: str,
    seed: int,
    canvas: int,
    counts: tuple[int, int],
    object_size: tuple[int, int],
    max_objects: int,
    masks: bool,
) -> None:
    """The COCO-format canvas datasets (``out/{train,val}/images``, ``out/annotations/{train,val}.json``)."""
    (out / "annotations").mkdir(parents=True)
    categories = [{"id": d, "name": str(d), "supercategory": "digit"} for d in range(10)]
    for split, canvases in _canvases(seed, canvas, counts, object_size, max_objects):
        (out / split / "images").mkdir(parents=True)
        coco: dict[str, Any] = {
            "info": {"description": f"deformvision digits {kind} ({split})", "version": "1"},
            "images": [],
            "annotations": [],
            "categories": categories,
        }
        for image_id, pixels, objects in canvases:
            file_name = f"{image_id:05d}.png"
            Image.fromarray(pixels).save(out / split / "images" / file_name)
            coco["images"].append({"id": image_id, "file_name": file_name, "width": canvas, "height": canvas})
            for bbox, digit, ink in objects:
                annotation = {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": digit,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
                if masks:
                    mask = _object_mask(bbox, ink, canvas)
                    rle = mask_utils.encode(np.asfortranarray(mask))
                    annotation["segmentation"] = {"size": [canvas, canvas], "counts": rle["counts"].decode("ascii")}
                    annotation["area"] = int(mask.sum())
                coco["annotations"].append(annotation)
        (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def build_digits_instance(
    root: str | Path,
    canvas: int = 128,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    *,
    object_size: tuple[int, int] = (8, 40),
    max_objects: int = 6,
) -> Path:
    """Write a COCO-format instance segmentation set of digits on canvases and return ``root``.

    The images, boxes and layout of :func:`build_digits_detection` with the same arguments (read it
    with ``CocoDetection(..., masks=True)``), plus each object's mask: the pixels of its box where
    the digit's ink opacity is at least 0.25 (so the box is the mask's tight box), as a compressed
    COCO RLE ``segmentation`` (``{"size": [canvas, canvas], "counts": str}``); ``area`` is the mask's
    pixel count (COCO's convention for segmentations; the detection set's is the box's).
    """
    _check_object_size(object_size, canvas)
    spec = {
        "dataset": "digits_instance",
        "version": 1,
        "canvas": canvas,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "object_size": list(object_size),
        "max_objects": max_objects,
    }

    def write(out: Path) -> None:
        _write_coco(out, "instance", seed, canvas, (num_train, num_val), object_size, max_objects, masks=True)

    return _build(Path(root), spec, write)


def build_digits_semantic(
    root: str | Path,
    canvas: int = 128,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    *,
    object_size: tuple[int, int] = (8, 40),
    max_objects: int = 6,
) -> Path:
    """Write a semantic segmentation set of digits on canvases and return ``root``.

    Layout (:class:`~deformvision.data.SegmentationFolder`, ``reduce_zero_label=False``,
    ``num_classes=11``): ``root/{train,val}/images/<image id:05d>.png`` (the canvases of
    :func:`build_digits_detection` with the same arguments) and ``root/{train,val}/labels/<image
    id:05d>.png``, a mode-``L`` PNG label map with 11 classes (:data:`DIGITS_SEMANTIC_CLASSES`):
    0 = background (a real class, not ignored), ``d + 1`` where digit ``d``'s ink opacity is at least
    0.25. No pixel is 255 (ignore).
    """
    _check_object_size(object_size, canvas)
    spec = {
        "dataset": "digits_semantic",
        "version": 1,
        "canvas": canvas,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "object_size": list(object_size),
        "max_objects": max_objects,
    }

    def write(out: Path) -> None:
        for split, canvases in _canvases(seed, canvas, (num_train, num_val), object_size, max_objects):
            (out / split / "images").mkdir(parents=True)
            (out / split / "labels").mkdir(parents=True)
            for image_id, pixels, objects in canvases:
                label = np.zeros((canvas, canvas), np.uint8)
                for bbox, digit, ink in objects:  # boxes never touch, so objects never overlap
                    label[_object_mask(bbox, ink, canvas) == 1] = digit + 1
                Image.fromarray(pixels).save(out / split / "images" / f"{image_id:05d}.png")
                Image.fromarray(label).save(out / split / "labels" / f"{image_id:05d}.png")

    return _build(Path(root), spec, write)
