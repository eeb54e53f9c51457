"""Object detection dataset read from a COCO-format annotation file (boxes, optionally instance masks)."""

import math
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from deformvision.data._coco_json import is_int, read_coco_json
from deformvision.data._image import load_rgb
from deformvision.data.transforms_det import Target, to_tensors

_CROWD = "crowd (iscrowd=1)"
_DEGENERATE = "with zero or negative width/height"
_OUTSIDE = "entirely outside their image"


class _InvalidAnnotation(Exception):
    """An annotation that is wrong, with the reason; raised or skipped per ``skip_invalid``."""


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` format).

    Each run is a little-endian sequence of 5-bit groups stored as ``chr(48 + group)``, with bit
    ``0x20`` marking "more groups follow" and bit ``0x10`` of the last group the sign; from the
    fourth run on, the stored value is the difference to the run two places before. Raises
    :class:`_InvalidAnnotation` for a character outside ``'0'..'o'`` or a string that ends mid-run.
    """
    runs: list[int] = []
    value, shift = 0, 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise _InvalidAnnotation(f"compressed RLE counts hold the character {char!r} (outside '0'..'o')")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise _InvalidAnnotation("compressed RLE counts end in the middle of a run")
    return runs


def _check_segmentation(segmentation: Any, height: int, width: int) -> list[list[float]] | dict[str, Any]:
    """The annotation's ``segmentation``, checked for an image of ``height x width``: polygons (a list of
    ``[x0, y0, x1, y1, ...]`` with at least 3 points each) or an RLE ``{"size": [h, w], "counts": ...}``
    with ``counts`` a list of run lengths (uncompressed) or a string (compressed) covering exactly the
    image. Raises :class:`_InvalidAnnotation` saying what is wrong."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise _InvalidAnnotation("segmentation is an empty list of polygons")
        for k, polygon in enumerate(segmentation):
            is_numbers = isinstance(polygon, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in polygon
            )
            if not is_numbers or len(polygon) % 2 or len(polygon) < 6:
                shown = repr(polygon) if len(repr(polygon)) <= 80 else repr(polygon)[:77] + "..."
                raise _InvalidAnnotation(
                    f"segmentation polygon {k} must be a list of finite numbers [x0, y0, x1, y1, ...] with at "
                    f"least 3 points, got {shown}"
                )
        return segmentation
    if not isinstance(segmentation, dict):
        raise _InvalidAnnotation(f"segmentation must be a list of polygons or an RLE dict, got {segmentation!r}")
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size != [height, width]:
        raise _InvalidAnnotation(
            f"RLE segmentation 'size' {size!r} is not the image's [height, width] {[height, width]}"
        )
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = counts
    else:
        raise _InvalidAnnotation(
            f"RLE segmentation 'counts' must be a string or a list of ints, got {type(counts).__name__}"
        )
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise _InvalidAnnotation(
            f"RLE segmentation runs must be non-negative and sum to height*width={height * width}, "
            f"got sum {sum(runs)}{' with a negative run' if any(run < 0 for run in runs) else ''}"
        )
    return segmentation


def decode_segmentation(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """``(height, width)`` uint8 0/1 mask of a COCO segmentation (polygons, or compressed or uncompressed
    RLE), rasterised by pycocotools (a pixel is inside a polygon when its centre is)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format annotation file, as DETR-style ``(image, target)`` pairs.

    ``dataset[i]`` is ``transforms(image, target)`` for the ``i``-th image in increasing image id,
    where ``image`` is the RGB PIL image and ``target`` holds (``n`` objects):

    - ``boxes``: ``(n, 4)`` float32 absolute ``(x0, y0, x1, y1)`` clipped to the image, a
      ``tv_tensors.BoundingBoxes`` (format ``XYXY``, ``canvas_size`` the image's ``(h, w)``),
    - ``labels``: ``(n,)`` int64 (see ``contiguous_ids``),
    - ``area``: ``(n,)`` float32, the annotation's ``area`` (or box area when absent),
    - ``iscrowd``: ``(n,)`` int64 zeros,
    - ``image_id``: 0-d int64, ``orig_size`` and ``size``: ``(2,)`` int64 ``(h, w)``,
    - ``masks`` (only with ``masks=True``): ``(n, h, w)`` uint8 0/1 instance masks, a
      ``tv_tensors.Mask`` in step with ``boxes``, decoded by pycocotools from the annotations'
      ``segmentation`` (polygons, compressed or uncompressed RLE) when the image is read.

    The transforms (``torchvision.transforms.v2``, e.g.
    :func:`~deformvision.data.build_detection_transforms`) should end with
    :class:`~deformvision.data.transforms_det.NormalizeBoxes`, which makes the image a float
    ``(3, H, W)`` tensor and the boxes plain normalised ``(cx, cy, w, h)`` in ``[0, 1]`` of the
    transformed image, and ``size`` its ``(h, w)``. ``transforms=None`` gives the same without
    resizing or mean/std normalisation (pixel values in ``[0, 1]``).

    Like DETR, crowd annotations (``iscrowd=1``) are dropped and images without objects are kept.
    Nothing else is lost silently: boxes with zero or negative width or height and boxes lying
    entirely outside their image are dropped with one warning that counts them ("dropped 3 of 40
    boxes in FILE: 2 with zero or negative width/height, 1 entirely outside their image"); boxes
    crossing the image border are clipped to it, with one warning counting those that crossed it by
    more than a pixel.

    Args:
        image_root: folder that the images' ``file_name`` are relative to.
        annotation_file: the COCO json (``images``, ``annotations`` and ``categories`` lists).
        transforms: ``(PIL image, target) -> (tensor, target)``; see above.
        skip_invalid: drop invalid annotations (below) with one warning instead of raising.
        num_classes: if given, every label must be below it.
        contiguous_ids: labels ``0..K-1`` for the sorted category ids (else labels are category ids).
        masks: also return instance masks (each kept annotation then needs a valid ``segmentation``).

    Attributes:
        image_ids: image ids in index order.
        category_ids: the sorted category ids.
        category_names: category id -> name.
        id_to_label: category id -> label.
        label_to_category_id: label -> category id (to write predictions for COCO evaluation).

    Raises:
        FileNotFoundError: if the annotation file does not exist.
        ValueError: naming the file and the entry, if it is not JSON; lacks one of the lists
            ``images`` (non-empty), ``annotations``, ``categories``; has an image without an integer
            ``id``, a non-empty ``file_name`` or positive integer ``width``/``height``, a category or
            annotation whose ``id`` is not an integer; uses an image, category or annotation id twice
            (the first few repeated ids and their count are named); or has no usable box at all (every
            annotation crowd, invalid, degenerate or outside its image: nothing to train or evaluate
            on). Naming the annotation id (unless ``skip_invalid``), if an annotation lacks
            ``image_id``, ``category_id`` or ``bbox``, has a non-integer ``image_id``/``category_id``
            or one not in the lists, a ``bbox`` that is not a list of 4 finite numbers, an
            ``iscrowd`` other than 0/1, a negative or non-numeric ``area``, a label ``>= num_classes``,
            or (with ``masks``) a missing or malformed ``segmentation``: not a list of polygons of at
            least 3 points of finite numbers, or an RLE whose ``size`` is not the image's
            ``[height, width]`` or whose runs do not cover it exactly. Crowd, degenerate and outside
            annotations are dropped before their segmentation is looked at.

    Image files are read only when indexed, by the rules of :func:`~deformvision.data._image.load_rgb`
    (EXIF orientation applied, 16-bit and float images rescaled, transparency over black): a missing
    file raises ``FileNotFoundError``, a corrupt one or one whose upright size differs from the json's
    ``ValueError``, each naming the file.
    """

    def __init__(
        self,
        image_root: str | Path,
        annotation_file: str | Path,
        transforms: Callable[[Any, Target], tuple[Any, Target]] | None = None,
        skip_invalid: bool = False,
        num_classes: int | None = None,
        contiguous_ids: bool = True,
        masks: bool = False,
    ) -> None:
        self.masks = masks
        self.image_root = Path(image_root)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms if transforms is not None else v2.Compose(to_tensors())
        self.num_classes = num_classes
        data = read_coco_json(self.annotation_file)
        self._images: dict[int, dict[str, Any]] = {image["id"]: image for image in data["images"]}
        self.image_ids = sorted(self._images)
        self.category_names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        self.category_ids = sorted(self.category_names)
        labels = range(len(self.category_ids)) if contiguous_ids else self.category_ids
        self.id_to_label = dict(zip(self.category_ids, labels, strict=True))
        self.label_to_category_id = {label: cid for cid, label in self.id_to_label.items()}
        self._objects = self._parse_annotations(data["annotations"], skip_invalid)

    def _parse_annotations(
        self, annotations: list[dict[str, Any]], skip_invalid: bool
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Any]]]:
        """Image id -> ``(boxes (n, 4) xyxy, labels (n,), area (n,), segmentations)`` of its kept
        annotations (``segmentations`` is ``n`` checked segmentations with ``masks``, else empty)."""
        per_image: dict[int, list[tuple[list[float], int, float, Any]]] = {image_id: [] for image_id in self.image_ids}
        skipped: list[str] = []
        dropped: Counter[str] = Counter()  # drop reason -> count, crowd annotations included
        num_clipped = 0
        for i, ann in enumerate(annotations):
            try:
                parsed = self._parse_annotation(ann)
            except _InvalidAnnotation as err:
                ann_id = ann.get("id") if isinstance(ann, dict) else None
                reason = f"annotation {ann_id if ann_id is not None else f'#{i} (no id)'}: {err}"
                if not skip_invalid:
                    raise ValueError(f"{reason} (in {self.annotation_file}; skip_invalid=True drops it)") from None
                skipped.append(reason)
                continue
            if isinstance(parsed, str):
                dropped[parsed] += 1
                continue
            box, label, area, segmentation, clipped = parsed
            per_image[ann["image_id"]].append((box, label, area, segmentation))
            num_clipped += clipped
        self._report(len(annotations), skipped, dropped, num_clipped)
        return {
            image_id: (
                torch.tensor([box for box, *_ in objects], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([label for _, label, *_ in objects], dtype=torch.int64),
                torch.tensor([area for _, _, area, _ in objects], dtype=torch.float32),
                [segmentation for *_, segmentation in objects] if self.masks else [],
            )
            for image_id, objects in per_image.items()
        }

    def _report(self, total: int, skipped: list[str], dropped: Counter[str], num_clipped: int) -> None:
        """One warning per kind of loss (invalid, dropped, clipped boxes); refuse a file with no box left."""
        file = self.annotation_file
        boxes = total - len(skipped) - dropped[_CROWD]  # the non-crowd boxes of valid annotations
        kept = boxes - dropped[_DEGENERATE] - dropped[_OUTSIDE]
        if skipped:
            warnings.warn(f"skipped {len(skipped)} invalid annotation(s) of {file}, e.g. {skipped[0]}", stacklevel=4)
        if kept < boxes:
            reasons = [f"{dropped[r]} {r}" for r in (_DEGENERATE, _OUTSIDE) if dropped[r]]
            warnings.warn(f"dropped {boxes - kept} of {boxes} boxes in {file}: {', '.join(reasons)}", stacklevel=4)
        if num_clipped:
            warnings.warn(
                f"clipped {num_clipped} of {boxes} boxes in {file} to their image (they extended beyond it by more "
                f"than 1 pixel)",
                stacklevel=4,
            )
        if not total:
            raise ValueError(f"annotation file {file} has no annotations; there is nothing to train or evaluate on")
        if not kept:
            counts = f"{total} annotation(s): {len(skipped)} invalid and skipped, {dropped[_CROWD]} {_CROWD}, " + (
                ", ".join(f"{dropped[r]} {r}" for r in (_DEGENERATE, _OUTSIDE))
            )
            raise ValueError(f"no usable box in {file} ({counts}); there is nothing to train or evaluate on")

    def _parse_annotation(self, ann: Any) -> tuple[list[float], int, float, Any, bool] | str:
        """``(clipped xyxy box, label, area, segmentation or None, clipped by more than 1 px)``, or the reason
        it is dropped (``_CROWD``, ``_DEGENERATE``, ``_OUTSIDE``). Raises :class:`_InvalidAnnotation`."""
        if not isinstance(ann, dict):
            raise _InvalidAnnotation(f"expected an object, got {ann!r}")
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise _InvalidAnnotation(f"lacks '{key}'")
        for key in ("image_id", "category_id"):
            if not is_int(ann[key]):
                raise _InvalidAnnotation(f"{key} must be an integer, got {ann[key]!r}")
        image = self._images.get(ann["image_id"])
        if image is None:
            raise _InvalidAnnotation(f"image_id {ann['image_id']!r} is not in the images list")
        category_id = ann["category_id"]
        if category_id not in self.id_to_label:
            raise _InvalidAnnotation(f"category_id {category_id!r} is not in the categories list {self.category_ids}")
        label = self.id_to_label[category_id]
        if self.num_classes is not None and label >= self.num_classes:
            raise _InvalidAnnotation(f"label {label} (category_id {category_id}) is >= num_classes={self.num_classes}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise _InvalidAnnotation(f"bbox must be a list of 4 finite numbers [x, y, w, h], got {bbox!r}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise _InvalidAnnotation(f"iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and not (_is_finite_number(ann["area"]) and ann["area"] >= 0):
            raise _InvalidAnnotation(f"area must be a finite number >= 0, got {ann['area']!r}")
        x, y, w, h = bbox
        if ann.get("iscrowd", 0):
            return _CROWD
        if w <= 0 or h <= 0:
            return _DEGENERATE
        width, height = image["width"], image["height"]
        box = [max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            return _OUTSIDE
        segmentation = None
        if self.masks:
            if "segmentation" not in ann:
                raise _InvalidAnnotation("has no 'segmentation' (needed with masks=True)")
            segmentation = _check_segmentation(ann["segmentation"], height, width)
        clipped = x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1
        return box, label, float(ann.get("area", w * h)), segmentation, clipped

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.image_root / info["file_name"]
        img = load_rgb(path)
        if img.size != (info["width"], info["height"]):
            raise ValueError(
                f"image {path} (id {image_id}) is {img.width}x{img.height} (after its EXIF orientation) but "
                f"{self.annotation_file} says {info['width']}x{info['height']}"
            )
        boxes, labels, area, segmentations = self._objects[image_id]
        size = torch.tensor([img.height, img.width])
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(img.height, img.width)),
            "labels": labels.clone(),
            "area": area.clone(),
            "iscrowd": torch.zeros_like(labels),
            "image_id": torch.tensor(image_id),
            "orig_size": size,
            "size": size.clone(),
        }
        if self.masks:
            masks = np.zeros((len(segmentations), img.height, img.width), np.uint8)
            for k, segmentation in enumerate(segmentations):
                masks[k] = decode_segmentation(segmentation, img.height, img.width)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        return self.transforms(img, target)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_root={str(self.image_root)!r}, "
            f"annotation_file={str(self.annotation_file)!r}, images={len(self)}, categories={len(self.category_ids)})"
        )
