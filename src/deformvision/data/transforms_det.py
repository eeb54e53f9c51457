"""Detection transforms that move the boxes with the image (the semantics of DETR's ``datasets/transforms.py``).

A transform is called as ``t(img, target, generator=None) -> (img, target)``. ``img`` is a PIL image
until :class:`ToTensor`, then a float ``(3, H, W)`` tensor. ``target`` is a dict; the keys read here:

- ``boxes``: ``(n, 4)`` float32, absolute pixel ``(x0, y0, x1, y1)`` of the current image until
  :class:`Normalize` / :class:`NormalizeBoxes`, which turn them into ``(cx, cy, w, h)`` divided by
  the image's width and height (so in ``[0, 1]``);
- ``labels``, ``area``, ``iscrowd``: ``(n,)`` per-object fields, kept in step with ``boxes``;
- ``size``: ``(2,)`` int64 ``(h, w)`` of the current image, updated by every geometric transform.

Missing keys are left missing (``{}`` works for inference). Random transforms draw from
``generator`` (see :mod:`deformvision.data._random`).
"""

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from deformvision.data import _random as rnd
from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD, pil_to_tensor
from deformvision.ops.boxes import box_xyxy_to_cxcywh

Target = dict[str, torch.Tensor]
Img = Image.Image | torch.Tensor  # PIL image until ToTensor, then (3, H, W)
DetTransform = Callable[..., tuple[Img, Target]]
PER_OBJECT_KEYS = ("boxes", "labels", "area", "iscrowd")
COCO_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800: Deformable DETR's training sizes


def hflip(img: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    """Mirror left-right: box ``(x0, y0, x1, y1)`` becomes ``(W - x1, y0, W - x0, y1)``."""
    target = dict(target)
    if "boxes" in target:
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        target["boxes"] = torch.stack((img.width - x1, y0, img.width - x0, y1), dim=-1)
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), target


def resized_shape(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``size`` (aspect kept, longer side truncated to int).

    With ``max_size``, ``size`` is first lowered to ``round(max_size * short / long)`` when the
    longer side would exceed ``max_size``.
    """
    short, long = min(height, width), max(height, width)
    if max_size is not None and long / short * size > max_size:
        size = round(max_size * short / long)
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(img: Image.Image, target: Target, size: int, max_size: int | None = None) -> tuple[Image.Image, Target]:
    """Resize (bilinear) to :func:`resized_shape`; boxes scale by ``(sx, sy)``, areas by ``sx * sy``."""
    new_h, new_w = resized_shape(img.height, img.width, size, max_size)
    scale_x, scale_y = new_w / img.width, new_h / img.height
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    if "area" in target:
        target["area"] = target["area"] * (scale_x * scale_y)
    target["size"] = torch.tensor([new_h, new_w])
    return img.resize((new_w, new_h), Image.Resampling.BILINEAR), target


def crop(img: Image.Image, target: Target, top: int, left: int, height: int, width: int) -> tuple[Image.Image, Target]:
    """Crop ``height x width`` at ``(top, left)``; boxes are shifted and clipped to the crop.

    Boxes left with zero width or height are dropped with their per-object fields; ``area`` becomes
    the clipped box area.
    """
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=boxes.dtype))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target["boxes"] = boxes
        target["area"] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for key in PER_OBJECT_KEYS:
            if key in target:
                target[key] = target[key][keep]
    target["size"] = torch.tensor([height, width])
    return img.crop((left, top, left + width, top + height)), target


class Compose:
    """Apply ``transforms`` in order, passing the same ``generator`` to each."""

    def __init__(self, transforms: Sequence[DetTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Img, target: Target, generator: torch.Generator | None = None) -> tuple[Img, Target]:
        for transform in self.transforms:
            img, target = transform(img, target, generator=generator)
        return img, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.transforms))})"


class RandomHorizontalFlip:
    """:func:`hflip` with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, img: Image.Image, target: Target, generator: torch.Generator | None = None
    ) -> tuple[Image.Image, Target]:
        return hflip(img, target) if rnd.coin(self.p, generator) else (img, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomResize:
    """:func:`resize` with the shorter side drawn uniformly from ``sizes``, the longer capped at ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        self.sizes = tuple(sizes)
        self.max_size = max_size

    def __call__(
        self, img: Image.Image, target: Target, generator: torch.Generator | None = None
    ) -> tuple[Image.Image, Target]:
        return resize(img, target, rnd.choice(self.sizes, generator), self.max_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """:func:`crop` of a random size and position.

    Width and height are drawn uniformly from ``min_size..min(image side, max_size)`` (a side smaller
    than ``min_size`` is kept whole), then the position uniformly among those that fit.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(
        self, img: Image.Image, target: Target, generator: torch.Generator | None = None
    ) -> tuple[Image.Image, Target]:
        sides = []
        for side in (img.width, img.height):
            high = min(side, self.max_size)
            sides.append(rnd.randint(min(self.min_size, high), high, generator))
        width, height = sides
        top = rnd.randint(0, img.height - height, generator)
        left = rnd.randint(0, img.width - width, generator)
        return crop(img, target, top, left, height, width)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class RandomSelect:
    """Apply ``first`` with probability ``p``, else ``second``."""

    def __init__(self, first: DetTransform, second: DetTransform, p: float = 0.5) -> None:
        self.first = first
        self.second = second
        self.p = p

    def __call__(self, img: Img, target: Target, generator: torch.Generator | None = None) -> tuple[Img, Target]:
        chosen = self.first if rnd.coin(self.p, generator) else self.second
        return chosen(img, target, generator=generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.first!r}, {self.second!r}, p={self.p})"


class ToTensor:
    """PIL image -> float32 ``(3, H, W)`` tensor in ``[0, 1]``; the target is unchanged."""

    def __call__(
        self, img: Image.Image, target: Target, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Target]:
        return pil_to_tensor(img), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NormalizeBoxes:
    """Boxes of a ``(3, H, W)`` tensor image: absolute ``xyxy`` -> ``(cx, cy, w, h) / (W, H, W, H)``."""

    def __call__(
        self, img: torch.Tensor, target: Target, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Target]:
        target = dict(target)
        if "boxes" in target:
            height, width = img.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=target["boxes"].dtype)
            target["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / scale
        return img, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize(NormalizeBoxes):
    """``(img - mean) / std`` per channel of a ``(3, H, W)`` tensor, then :class:`NormalizeBoxes`."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(
        self, img: torch.Tensor, target: Target, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Target]:
        mean = torch.tensor(self.mean, dtype=img.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype).view(-1, 1, 1)
        return super().__call__((img - mean) / std, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


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
) -> Compose:
    """The Deformable DETR COCO pipeline: ``(PIL image, target)`` -> ``((3, H, W) tensor, target)``.

    Train: ``RandomHorizontalFlip(hflip)``, then with probability 1/2 ``RandomResize(scales, max_size)``,
    else ``RandomResize(crop_resize)``, ``RandomSizeCrop(*crop)``, ``RandomResize(scales, max_size)``;
    then ``ToTensor``, ``Normalize(mean, std)``. ``hflip=0`` leaves out the flip (for data where a mirror
    image is another class, such as digits) and ``crop=None`` the random-crop branch.
    Eval: ``RandomResize([val_size], max_size)`` (deterministic), ``ToTensor``, ``Normalize``.

    The defaults are COCO's; for small images scale everything down, e.g. for 128-pixel canvases
    ``scales=range(96, 161, 16), max_size=267, crop=(80, 128), crop_resize=(96, 112, 128), val_size=128``
    (the same ratios to the image size as COCO's to its typical 640 x 480).
    """
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
    finish = [ToTensor(), Normalize(mean, std)]
    if not train:
        return Compose([RandomResize([val_size], max_size), *finish])
    flip = [RandomHorizontalFlip(hflip)] if hflip > 0 else []
    resize = RandomResize(scales, max_size)
    if crop is not None:
        resize_crop = Compose([RandomResize(crop_resize), RandomSizeCrop(*crop), RandomResize(scales, max_size)])
        resize = RandomSelect(resize, resize_crop)
    return Compose([*flip, resize, *finish])
