"""Detection transforms on ``torchvision.transforms.v2``: Deformable DETR's recipe (DETR's ``datasets/transforms.py``).

A pipeline is called as ``t(image, target) -> (image, target)``. ``image`` is a PIL image (or a
``(3, H, W)`` tensor / ``tv_tensors.Image``); ``target`` is a dict, and the keys that move with the
image are:

- ``boxes``: ``(n, 4)`` absolute pixel ``(x0, y0, x1, y1)``, a ``tv_tensors.BoundingBoxes`` (a plain
  tensor is wrapped by :class:`ToTVTensors` on the image's canvas);
- ``masks``: ``(n, H, W)`` instance masks, a ``tv_tensors.Mask`` (a plain tensor is wrapped), moved by
  the v2 geometric transforms like the image;
- ``labels``, ``area``, ``iscrowd``: ``(n,)`` per-object fields, kept in step with ``boxes`` where
  :class:`RandomSizeCrop` drops objects. ``area`` stays the annotation's area in the original image's
  pixels (no transform rescales it; nothing downstream reads it).

:class:`NormalizeBoxes` ends every pipeline: the image becomes a plain float tensor, ``boxes`` plain
normalised ``(cx, cy, w, h)`` in ``[0, 1]`` of the final image and ``size`` its ``(h, w)`` (int64).
``orig_size``, ``image_id`` and other keys pass through; ``{}`` works for inference.

:func:`build_instance_transforms` is the pipeline for torchvision-style detectors (Mask R-CNN,
RetinaNet, ...), which resize and normalise inside the model: it ends with :class:`ToInstanceTarget`
instead (float image in ``[0, 1]``, absolute xyxy boxes, uint8 masks).

Random transforms draw from torch's global generator, as all of ``transforms.v2``; for reproducible
data, call the pipeline under :func:`deformvision.data._random.seeded` (the training data does so per
sample, see :class:`deformvision.engine.data.SeededTransform`).
"""

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD

Target = dict[str, torch.Tensor]
PER_OBJECT_KEYS = ("boxes", "masks", "labels", "area", "iscrowd")  # filtered together by RandomSizeCrop
COCO_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800: Deformable DETR's training sizes


def _image_and_target(inputs: tuple[Any, ...], transform: v2.Transform) -> tuple[Any, dict[str, Any]]:
    if len(inputs) != 2 or not isinstance(inputs[1], dict):
        kinds = ", ".join(type(x).__name__ for x in inputs)
        raise TypeError(f"{type(transform).__name__} takes (image, target dict), got ({kinds})")
    return inputs


class ToTVTensors(v2.Transform):
    """Wrap a target's plain ``boxes`` (absolute xyxy) and ``masks`` as ``tv_tensors`` of the image's canvas.

    Values that already are ``BoundingBoxes`` / ``Mask`` and the other keys are left as they are; the
    target dict is copied, never modified.
    """

    def forward(self, *inputs: Any) -> tuple[Any, dict[str, Any]]:
        image, target = _image_and_target(inputs, self)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None and not isinstance(boxes, tv_tensors.BoundingBoxes):
            boxes = torch.as_tensor(boxes, dtype=torch.float32)
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"target['boxes'] must be (n, 4) xyxy, got shape {tuple(boxes.shape)}")
            target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(F.get_size(image)))
        masks = target.get("masks")
        if masks is not None and not isinstance(masks, tv_tensors.Mask):
            target["masks"] = tv_tensors.Mask(masks)
        return image, target


class RandomSizeCrop(v2.Transform):
    """DETR's ``RandomSizeCrop``: a crop of random size and position, then objects left empty are dropped.

    The crop width is drawn uniformly from ``min_size..min(W, max_size)`` (both included), then the
    height likewise from ``H``; a side smaller than ``min_size`` is kept whole. The position is uniform
    among those that fit. Image, boxes and masks are cropped by ``torchvision``'s ``crop`` (boxes are
    shifted and clipped to the crop); then every object whose clipped box has zero width or height is
    removed from each of the target's :data:`PER_OBJECT_KEYS`: exactly the boxes that overlap the crop
    with positive area are kept.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(
                f"RandomSizeCrop needs 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}"
            )
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, int]:
        image = next(x for x in flat_inputs if isinstance(x, PIL.Image.Image | tv_tensors.Image))
        height, width = F.get_size(image)
        sides = []
        for side in (width, height):
            high = min(side, self.max_size)
            sides.append(int(torch.randint(min(self.min_size, high), high + 1, ())))
        crop_width, crop_height = sides
        top = int(torch.randint(0, height - crop_height + 1, ()))
        left = int(torch.randint(0, width - crop_width + 1, ()))
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, int]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    def forward(self, *inputs: Any) -> Any:
        """The crop (``transforms.v2``'s ``forward``), then the objects that became empty are dropped."""
        image, target = super().forward(*_image_and_target(inputs, self))
        boxes = target.get("boxes")
        if boxes is None:
            return image, target
        x0, y0, x1, y1 = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY).unbind(-1)
        keep = (x1 > x0) & (y1 > y0)
        if keep.all():
            return image, target
        target = dict(target)
        for key in PER_OBJECT_KEYS:
            if key in target:
                value = target[key]
                kept = value[keep]
                target[key] = tv_tensors.wrap(kept, like=value) if isinstance(value, tv_tensors.TVTensor) else kept
        return image, target

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}"


class NormalizeBoxes(v2.Transform):
    """The detector's target: ``boxes`` -> plain ``(cx, cy, w, h) / (W, H, W, H)``, ``size`` = ``(H, W)``.

    The last step of a pipeline (after ``ToImage``): ``W, H`` are the image's; the image itself is
    returned as a plain tensor. A plain ``boxes`` tensor is read as absolute xyxy.
    """

    def forward(self, *inputs: Any) -> tuple[Any, dict[str, Any]]:
        image, target = _image_and_target(inputs, self)
        height, width = F.get_size(image)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None:
            if isinstance(boxes, tv_tensors.BoundingBoxes):
                if tuple(boxes.canvas_size) != (height, width):
                    raise ValueError(
                        f"boxes are on a {tuple(boxes.canvas_size)} canvas but the image is {(height, width)} (h, w)"
                    )
                cxcywh = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
                cxcywh = cxcywh.as_subclass(torch.Tensor)
            else:
                cxcywh = box_convert(torch.as_tensor(boxes, dtype=torch.float32), "xyxy", "cxcywh")
            target["boxes"] = cxcywh / torch.tensor([width, height, width, height], dtype=cxcywh.dtype)
        target["size"] = torch.tensor([height, width])
        if isinstance(image, torch.Tensor):
            image = image.as_subclass(torch.Tensor)
        return image, target


def resize(size: int, max_size: int | None = None) -> v2.Resize:
    """DETR's resize: shorter side ``size`` (aspect kept), longer side capped at ``max_size`` (bilinear).

    ``v2.Resize(size, max_size=max_size)``; when ``size >= max_size`` the cap always wins, and the
    transform is ``v2.Resize(None, max_size=max_size)`` (longer side ``max_size``), which
    ``v2.Resize`` asks for then.
    """
    if max_size is not None and size >= max_size:
        return v2.Resize(None, max_size=max_size)
    return v2.Resize(size, max_size=max_size)


def random_resize(sizes: Sequence[int], max_size: int | None = None) -> v2.Transform:
    """:func:`resize` to a shorter side drawn uniformly from ``sizes`` (DETR's ``RandomResize``)."""
    if len(sizes) == 1:
        return resize(sizes[0], max_size)
    return v2.RandomChoice([resize(size, max_size) for size in sizes])


def _check_sizes(name: str, sizes: Sequence[int]) -> None:
    if len(sizes) == 0 or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ValueError(f"{name} must be a non-empty sequence of positive int sizes, got {tuple(sizes)!r}")


def to_tensors(mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> list[v2.Transform]:
    """The tail of every pipeline: PIL image -> float32 ``(3, H, W)`` in ``[0, 1]`` (``ToImage``,
    ``ToDtype``), ``Normalize(mean, std)`` when they are given, then :class:`NormalizeBoxes`."""
    tail: list[v2.Transform] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        tail.append(v2.Normalize(list(mean), list(std)))
    return [*tail, NormalizeBoxes()]


def build_detection_transforms(
    train: bool,
    *,
    scales: Sequence[int] = COCO_SCALES,
    max_size: int = 1333,
    crop: tuple[int, int] | None = (384, 600),
    crop_resize: Sequence[int] = (400, 500, 600),
    val_size: int = 800,
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The Deformable DETR COCO pipeline: ``(PIL image, target)`` -> ``((3, H, W) tensor, target)``.

    Train: :class:`ToTVTensors`, ``ClampBoundingBoxes``, ``RandomHorizontalFlip(hflip)``, then with
    probability 1/2 ``random_resize(scales, max_size)``, else ``random_resize(crop_resize)``,
    ``RandomSizeCrop(*crop)``, ``random_resize(scales, max_size)`` (``RandomChoice`` of the two); then
    ``ToImage``, ``ToDtype(float32, scale=True)``, ``Normalize(mean, std)``, :class:`NormalizeBoxes`.
    ``hflip=0`` leaves out the flip (for data where a mirror image is another class, such as digits)
    and ``crop=None`` the random-crop branch.
    Eval: :class:`ToTVTensors`, ``resize(val_size, max_size)`` (deterministic), then the same tail.

    The defaults are COCO's; for small images scale everything down, e.g. for 128-pixel canvases
    ``scales=range(96, 161, 16), max_size=267, crop=(80, 128), crop_resize=(96, 112, 128), val_size=128``
    (the same ratios to the image size as COCO's to its typical 640 x 480).

    Raises:
        ValueError: naming the argument, for a flip probability outside ``[0, 1]``, empty or
            non-positive sizes, or a crop range that is not ``0 < min <= max``.
    """
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
    _check_sizes("val_size", [val_size])
    if max_size is not None and max_size <= 0:
        raise ValueError(f"max_size must be positive, got {max_size}")
    tail = to_tensors(mean, std)
    if not train:
        return v2.Compose([ToTVTensors(), resize(val_size, max_size), *tail])
    _check_sizes("scales", scales)
    head: list[v2.Transform] = [ToTVTensors(), v2.ClampBoundingBoxes()]
    if hflip > 0:
        head.append(v2.RandomHorizontalFlip(hflip))
    scale = random_resize(tuple(scales), max_size)
    if crop is not None:
        _check_sizes("crop_resize", crop_resize)
        if len(crop) != 2:
            raise ValueError(f"crop must be (min_size, max_size) or None, got {crop!r}")
        resize_crop = v2.Compose([random_resize(tuple(crop_resize)), RandomSizeCrop(*crop), scale])
        scale = v2.RandomChoice([scale, resize_crop])
    return v2.Compose([*head, scale, *tail])


class ToInstanceTarget(v2.Transform):
    """The target of torchvision's detection models; the last step of :func:`build_instance_transforms`.

    After ``ToImage``/``ToDtype``: the image becomes a plain tensor; ``boxes`` plain float32 absolute
    ``(x0, y0, x1, y1)`` pixels of the image (a plain tensor is read as such); ``masks`` a plain uint8
    ``(n, H, W)`` tensor; ``size`` the image's ``(h, w)`` (int64). Objects whose box has zero width or
    height are removed from each of the target's :data:`PER_OBJECT_KEYS`. Other keys pass through.
    """

    def forward(self, *inputs: Any) -> tuple[Any, dict[str, Any]]:
        image, target = _image_and_target(inputs, self)
        height, width = F.get_size(image)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None:
            if isinstance(boxes, tv_tensors.BoundingBoxes):
                if tuple(boxes.canvas_size) != (height, width):
                    raise ValueError(
                        f"boxes are on a {tuple(boxes.canvas_size)} canvas but the image is {(height, width)} (h, w)"
                    )
                boxes = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
            boxes = torch.as_tensor(boxes).as_subclass(torch.Tensor).to(torch.float32)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            target["boxes"] = boxes
            if not keep.all():
                for key in PER_OBJECT_KEYS:
                    if key in target:
                        target[key] = target[key][keep]
        for key in PER_OBJECT_KEYS:
            if isinstance(target.get(key), torch.Tensor):
                target[key] = target[key].as_subclass(torch.Tensor)
        if "masks" in target:
            target["masks"] = target["masks"].to(torch.uint8)
        target["size"] = torch.tensor([height, width])
        if isinstance(image, torch.Tensor):
            image = image.as_subclass(torch.Tensor)
        return image, target


def build_instance_transforms(
    train: bool,
    hflip: float = 0.5,
    *,
    crop: tuple[int, int] | None = None,
    crop_prob: float = 0.5,
) -> v2.Compose:
    """Pipeline for torchvision-style instance models: ``(PIL image, target)`` -> ``((3, H, W) float, target)``.

    The model resizes and normalises internally, so there is no resize and no mean/std here.
    Train: :class:`ToTVTensors`, ``ClampBoundingBoxes``, ``RandomHorizontalFlip(hflip)`` (left out
    when ``hflip=0``), and with ``crop=(min_size, max_size)`` DETR's :class:`RandomSizeCrop` applied
    with probability ``crop_prob``; image, boxes and masks move together. Eval: :class:`ToTVTensors`
    only. Both end with ``ToImage``, ``ToDtype(float32, scale=True)`` (values in ``[0, 1]``) and
    :class:`ToInstanceTarget`: ``boxes`` plain float32 absolute xyxy, ``masks`` uint8, objects whose box
    became empty dropped.

    Raises:
        ValueError: naming the argument, for a probability outside ``[0, 1]`` or a crop that is not
            ``(min_size, max_size)`` with ``0 < min_size <= max_size``.
    """
    for name, value in (("hflip", hflip), ("crop_prob", crop_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), ToInstanceTarget()]
    if not train:
        return v2.Compose([ToTVTensors(), *tail])
    head: list[v2.Transform] = [ToTVTensors(), v2.ClampBoundingBoxes()]
    if hflip > 0:
        head.append(v2.RandomHorizontalFlip(hflip))
    if crop is not None:
        if len(crop) != 2:
            raise ValueError(f"crop must be (min_size, max_size) or None, got {crop!r}")
        if crop_prob > 0:
            head.append(v2.RandomApply([RandomSizeCrop(*crop)], p=crop_prob))
    return v2.Compose([*head, *tail])
