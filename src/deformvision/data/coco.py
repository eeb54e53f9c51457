"""Object detection dataset read from a COCO-format annotation file (boxes only)."""

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from deformvision.data._image import load_rgb
from deformvision.data.transforms_det import Target, to_tensors


class _InvalidAnnotation(Exception):
    """An annotation that is wrong, with the reason; raised or skipped per ``skip_invalid``."""


def _read_coco_json(path: Path) -> dict[str, Any]:
    """The parsed file, checked to hold a non-empty ``images`` list and a ``categories`` list."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse annotation file {path} as JSON: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(
            f"{path} is not a COCO annotation file (expected an object with 'images' and 'categories' lists)"
        )
    if not data["images"]:
        raise ValueError(f"annotation file {path} has no images")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"'annotations' in {path} must be a list")
    return data


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format annotation file, as DETR-style ``(image, target)`` pairs.

    ``dataset[i]`` is ``transforms(image, target)`` for the ``i``-th image in increasing image id,
    where ``image`` is the RGB PIL image and ``target`` holds (``n`` objects):

    - ``boxes``: ``(n, 4)`` float32 absolute ``(x0, y0, x1, y1)`` clipped to the image, a
      ``tv_tensors.BoundingBoxes`` (format ``XYXY``, ``canvas_size`` the image's ``(h, w)``),
    - ``labels``: ``(n,)`` int64 (see ``contiguous_ids``),
    - ``area``: ``(n,)`` float32, the annotation's ``area`` (or box area when absent),
    - ``iscrowd``: ``(n,)`` int64 zeros,
    - ``image_id``: 0-d int64, ``orig_size`` and ``size``: ``(2,)`` int64 ``(h, w)``.

    The transforms (``torchvision.transforms.v2``, e.g.
    :func:`~deformvision.data.build_detection_transforms`) should end with
    :class:`~deformvision.data.transforms_det.NormalizeBoxes`, which makes the image a float
    ``(3, H, W)`` tensor and the boxes plain normalised ``(cx, cy, w, h)`` in ``[0, 1]`` of the
    transformed image, and ``size`` its ``(h, w)``. ``transforms=None`` gives the same without
    resizing or mean/std normalisation (pixel values in ``[0, 1]``).

    Like DETR, crowd annotations (``iscrowd=1``) and degenerate boxes (width or height <= 0) are
    dropped, boxes crossing the image border are clipped to it (one warning if any crossed it by more
    than a pixel) and images without objects are kept.

    Args:
        image_root: folder that the images' ``file_name`` are relative to.
        annotation_file: the COCO json (``images``, ``categories``, optional ``annotations``).
        transforms: ``(PIL image, target) -> (tensor, target)``; see above.
        skip_invalid: drop invalid annotations (below) with one warning instead of raising.
        num_classes: if given, every label must be below it.
        contiguous_ids: labels ``0..K-1`` for the sorted category ids (else labels are category ids).

    Attributes:
        image_ids: image ids in index order.
        category_ids: the sorted category ids.
        category_names: category id -> name.
        id_to_label: category id -> label.
        label_to_category_id: label -> category id (to write predictions for COCO evaluation).

    Raises:
        FileNotFoundError: if the annotation file does not exist.
        ValueError: naming the file, if it is not JSON, not COCO-shaped or has no images; naming the
            annotation id (unless ``skip_invalid``), if an annotation refers to an unknown image or
            category, has a malformed ``bbox``, a box lying entirely outside its image, or a label
            ``>= num_classes``.

    Image files are read only when indexed: a missing file raises ``FileNotFoundError``, a corrupt one
    or one whose size differs from the json's ``ValueError``, each naming the file.
    """

    def __init__(
        self,
        image_root: str | Path,
        annotation_file: str | Path,
        transforms: Callable[[Any, Target], tuple[Any, Target]] | None = None,
        skip_invalid: bool = False,
        num_classes: int | None = None,
        contiguous_ids: bool = True,
    ) -> None:
        self.image_root = Path(image_root)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms if transforms is not None else v2.Compose(to_tensors())
        self.num_classes = num_classes
        data = _read_coco_json(self.annotation_file)

        self._images: dict[int, dict[str, Any]] = {}
        for i, image in enumerate(data["images"]):
            if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "width", "height")):
                raise ValueError(
                    f"image entry {i} in {self.annotation_file} lacks 'id', 'file_name', 'width' or 'height'"
                )
            self._images[image["id"]] = image
        self.image_ids = sorted(self._images)

        for i, category in enumerate(data["categories"]):
            if not isinstance(category, dict) or "id" not in category:
                raise ValueError(f"category entry {i} in {self.annotation_file} lacks 'id'")
        self.category_names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        self.category_ids = sorted(self.category_names)
        labels = range(len(self.category_ids)) if contiguous_ids else self.category_ids
        self.id_to_label = dict(zip(self.category_ids, labels, strict=True))
        self.label_to_category_id = {label: cid for cid, label in self.id_to_label.items()}
        self._objects = self._parse_annotations(data.get("annotations", []), skip_invalid)

    def _parse_annotations(
        self, annotations: list[dict[str, Any]], skip_invalid: bool
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Image id -> ``(boxes (n, 4) xyxy, labels (n,), area (n,))`` of its kept annotations."""
        per_image: dict[int, list[tuple[list[float], int, float]]] = {image_id: [] for image_id in self.image_ids}
        skipped: list[str] = []
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
            if parsed is not None:
                box, label, area, clipped = parsed
                per_image[ann["image_id"]].append((box, label, area))
                num_clipped += clipped
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} invalid annotation(s) of {self.annotation_file}, e.g. {skipped[0]}",
                stacklevel=3,
            )
        if num_clipped:
            warnings.warn(
                f"{num_clipped} box(es) of {self.annotation_file} extend beyond their image and were clipped",
                stacklevel=3,
            )
        return {
            image_id: (
                torch.tensor([box for box, _, _ in objects], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([label for _, label, _ in objects], dtype=torch.int64),
                torch.tensor([area for _, _, area in objects], dtype=torch.float32),
            )
            for image_id, objects in per_image.items()
        }

    def _parse_annotation(self, ann: Any) -> tuple[list[float], int, float, bool] | None:
        """``(clipped xyxy box, label, area, clipped by more than 1 px)``, or ``None`` for a crowd or
        degenerate box. Raises :class:`_InvalidAnnotation`."""
        if not isinstance(ann, dict):
            raise _InvalidAnnotation(f"expected an object, got {ann!r}")
        image = self._images.get(ann.get("image_id"))
        if image is None:
            raise _InvalidAnnotation(f"image_id {ann.get('image_id')!r} is not in the images list")
        category_id = ann.get("category_id")
        if category_id not in self.id_to_label:
            raise _InvalidAnnotation(f"category_id {category_id!r} is not in the categories list {self.category_ids}")
        label = self.id_to_label[category_id]
        if self.num_classes is not None and label >= self.num_classes:
            raise _InvalidAnnotation(f"label {label} (category_id {category_id}) is >= num_classes={self.num_classes}")
        bbox = ann.get("bbox")
        is_numbers = isinstance(bbox, list | tuple) and all(isinstance(v, int | float) for v in bbox)
        if not (is_numbers and len(bbox) == 4 and all(math.isfinite(v) for v in bbox)):
            raise _InvalidAnnotation(f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = bbox
        if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
            return None
        width, height = image["width"], image["height"]
        box = [max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise _InvalidAnnotation(
                f"bbox {bbox} lies entirely outside its image {image['file_name']} ({width}x{height})"
            )
        clipped = x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1
        return box, label, float(ann.get("area", w * h)), clipped

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.image_root / info["file_name"]
        img = load_rgb(path)
        if img.size != (info["width"], info["height"]):
            raise ValueError(
                f"image {path} (id {image_id}) is {img.width}x{img.height} but {self.annotation_file} "
                f"says {info['width']}x{info['height']}"
            )
        boxes, labels, area = self._objects[image_id]
        size = torch.tensor([img.height, img.width])
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(img.height, img.width)),
            "labels": labels.clone(), "area": area.clone(), "iscrowd": torch.zeros_like(labels),
            "image_id": torch.tensor(image_id), "orig_size": size, "size": size.clone(),
        }  # fmt: skip
        return self.transforms(img, target)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_root={str(self.image_root)!r}, "
            f"annotation_file={str(self.annotation_file)!r}, images={len(self)}, categories={len(self.category_ids)})"
        )
