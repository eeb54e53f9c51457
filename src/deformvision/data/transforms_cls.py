"""Classification transforms on PIL images and ``(C, H, W)`` tensors, and the DAT/Swin recipes.

Every transform is called as ``t(x, generator=None)``; random ones draw from ``generator`` (see
:mod:`deformvision.data._random` for seeding in DataLoader workers), the others ignore it. Sizes
given as one int mean a square; tuples are ``(height, width)``.

The training recipe of DAT and Swin (timm's ``create_transform`` with ``rand-m9-mstd0.5-inc1``,
``reprob=0.25``, bicubic) is :func:`build_classification_transforms`.
"""

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageEnhance, ImageOps

from deformvision.data import _random as rnd
from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD, pil_to_tensor

Img = Image.Image | torch.Tensor  # PIL image until ToTensor, then (C, H, W)
Transform = Callable[..., Img]
_BICUBIC = Image.Resampling.BICUBIC
_BILINEAR = Image.Resampling.BILINEAR
_MEAN_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Compose:
    """Apply ``transforms`` in order, passing the same ``generator`` to each."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Img, generator: torch.Generator | None = None) -> Img:
        for transform in self.transforms:
            x = transform(x, generator=generator)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.transforms))})"


class RandomResizedCrop:
    """Crop a random area and aspect ratio of a PIL image, resized to ``size`` (Inception-style).

    The crop covers a fraction of the image area drawn from ``scale`` and has an aspect ratio
    (width / height) drawn log-uniformly from ``ratio``; after 10 draws that do not fit, the largest
    centred crop with the aspect ratio clamped into ``ratio`` is used.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: Image.Resampling = _BICUBIC,
    ) -> None:
        self.size = _pair(size)
        self.scale = scale
        self.ratio = ratio
        self.interpolation = interpolation

    def crop_box(self, width: int, height: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """The crop ``(left, top, right, bottom)`` in pixels for a ``width x height`` image."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = width * height * rnd.uniform(*self.scale, generator)
            aspect = math.exp(rnd.uniform(*log_ratio, generator))
            w = round(math.sqrt(area * aspect))
            h = round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = rnd.randint(0, width - w, generator)
                top = rnd.randint(0, height - h, generator)
                return left, top, left + w, top + h
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (width, round(width / aspect)) if width / height <= aspect else (round(height * aspect), height)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        box = self.crop_box(*img.size, generator)
        return img.resize(self.size[::-1], self.interpolation, box=box)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror a PIL image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rnd.coin(self.p, generator) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def _affine(img: Image.Image, coeffs: tuple[float, ...], fill: tuple[int, ...]) -> Image.Image:
    # PIL maps each output pixel (x, y) to the input (a x + b y + c, d x + e y + f)
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=_BILINEAR, fillcolor=fill)


def _solarize_add(img: Image.Image, amount: int) -> Image.Image:
    lut = [min(255, v + amount) if v < 128 else v for v in range(256)]
    return img.point(lut * len(img.getbands()))


# name -> (op(img, level, fill), signed). ``level`` in [0, 1] is magnitude / 10; signed ops get a random sign.
_RAND_AUGMENT_OPS: dict[str, tuple[Callable[[Image.Image, float, tuple[int, ...]], Image.Image], bool]] = {
    "AutoContrast": (lambda img, level, fill: ImageOps.autocontrast(img), False),
    "Equalize": (lambda img, level, fill: ImageOps.equalize(img), False),
    "Invert": (lambda img, level, fill: ImageOps.invert(img), False),
    "Rotate": (lambda img, level, fill: img.rotate(30 * level, resample=_BILINEAR, fillcolor=fill), True),
    "Posterize": (lambda img, level, fill: ImageOps.posterize(img, 8 - round(4 * level)), False),
    "Solarize": (lambda img, level, fill: ImageOps.solarize(img, round(256 * (1 - level))), False),
    "SolarizeAdd": (lambda img, level, fill: _solarize_add(img, round(110 * level)), False),
    "Color": (lambda img, level, fill: ImageEnhance.Color(img).enhance(1 + 0.9 * level), True),
    "Contrast": (lambda img, level, fill: ImageEnhance.Contrast(img).enhance(1 + 0.9 * level), True),
    "Brightness": (lambda img, level, fill: ImageEnhance.Brightness(img).enhance(1 + 0.9 * level), True),
    "Sharpness": (lambda img, level, fill: ImageEnhance.Sharpness(img).enhance(1 + 0.9 * level), True),
    "ShearX": (lambda img, level, fill: _affine(img, (1, 0.3 * level, 0, 0, 1, 0), fill), True),
    "ShearY": (lambda img, level, fill: _affine(img, (1, 0, 0, 0.3 * level, 1, 0), fill), True),
    "TranslateX": (lambda img, level, fill: _affine(img, (1, 0, 0.45 * level * img.width, 0, 1, 0), fill), True),
    "TranslateY": (lambda img, level, fill: _affine(img, (1, 0, 0, 0, 1, 0.45 * level * img.height), fill), True),
}


class RandAugment:
    """RandAugment (Cubuk et al., 2020) on RGB PIL images, with timm's "increasing" op set.

    ``num_ops`` ops are drawn uniformly with replacement from the 15 below; each is applied with
    probability ``prob``, at a magnitude ``m ~ N(magnitude, magnitude_std^2)`` clipped to ``[0, 10]``
    (``level = m / 10``; signed ops are negated with probability 1/2). Stronger ``m`` always means a
    stronger distortion:

    ==============  ===========================================================
    AutoContrast    stretch each band to the full range (no magnitude)
    Equalize        histogram equalisation (no magnitude)
    Invert          ``255 - v`` (no magnitude)
    Rotate          rotate by ``±30 * level`` degrees about the centre
    Posterize       keep ``8 - round(4 * level)`` bits (8 .. 4)
    Solarize        invert values ``>= 256 * (1 - level)``
    SolarizeAdd     add ``110 * level`` to values below 128 (saturating)
    Color           saturation factor ``1 ± 0.9 * level``
    Contrast        contrast factor ``1 ± 0.9 * level``
    Brightness      brightness factor ``1 ± 0.9 * level``
    Sharpness       sharpness factor ``1 ± 0.9 * level``
    ShearX, ShearY  shear ``±0.3 * level``
    TranslateX, Y   shift by ``±0.45 * level`` of the width / height
    ==============  ===========================================================

    Geometric ops resample bilinearly and fill uncovered pixels with ``fill`` (ImageNet mean).
    ``DAT``/``Swin`` use ``num_ops=2, magnitude=9, magnitude_std=0.5, prob=0.5``.
    """

    ops = tuple(_RAND_AUGMENT_OPS)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9,
        magnitude_std: float = 0.5,
        prob: float = 0.5,
        fill: tuple[int, ...] = _MEAN_FILL,
    ) -> None:
        if not 0 <= magnitude <= 10:
            raise ValueError(f"magnitude must be in [0, 10], got {magnitude}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.prob = prob
        self.fill = fill

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        for _ in range(self.num_ops):
            op, signed = _RAND_AUGMENT_OPS[rnd.choice(self.ops, generator)]
            if not rnd.coin(self.prob, generator):
                continue
            magnitude = self.magnitude
            if self.magnitude_std > 0:
                magnitude = min(max(rnd.normal(magnitude, self.magnitude_std, generator), 0.0), 10.0)
            level = magnitude / 10
            if signed and rnd.coin(0.5, generator):
                level = -level
            img = op(img, level, self.fill)
        return img

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"magnitude_std={self.magnitude_std}, prob={self.prob})"
        )


class Resize:
    """Resize a PIL image: an int ``size`` sets the shorter side (aspect kept), ``(h, w)`` sets both."""

    def __init__(self, size: int | Sequence[int], interpolation: Image.Resampling = _BICUBIC) -> None:
        self.size = size if isinstance(size, int) else _pair(size)
        self.interpolation = interpolation

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        if isinstance(self.size, int):
            w, h = img.size
            if w <= h:
                new_w, new_h = self.size, int(self.size * h / w)
            else:
                new_w, new_h = int(self.size * w / h), self.size
        else:
            new_h, new_w = self.size
        return img.resize((new_w, new_h), self.interpolation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class CenterCrop:
    """Crop the centre ``size`` of a PIL image (a side larger than the image is padded with zeros)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        h, w = self.size
        left = round((img.width - w) / 2)
        top = round((img.height - h) / 2)
        return img.crop((left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class ToTensor:
    """PIL image -> float32 tensor ``(C, H, W)`` in ``[0, 1]``."""

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return pil_to_tensor(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize:
    """``(x - mean) / std`` per channel of a ``(C, H, W)`` (or ``(B, C, H, W)``) float tensor."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class RandomErasing:
    """Random erasing (Zhong et al., 2020), timm's ``mode='pixel'``, on a normalised ``(C, H, W)`` tensor.

    With probability ``p``, one rectangle covering a fraction of the area drawn from ``scale`` with
    aspect ratio (height / width) log-uniform in ``ratio`` is replaced by ``N(0, 1)`` noise, which is
    noise of the dataset's statistics on normalised inputs. A draw that does not fit is retried up to
    10 times, then nothing is erased.
    """

    def __init__(
        self, p: float = 0.25, scale: tuple[float, float] = (0.02, 1 / 3), ratio: tuple[float, float] = (0.3, 1 / 0.3)
    ) -> None:
        self.p = p
        self.scale = scale
        self.ratio = ratio

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not rnd.coin(self.p, generator):
            return x
        channels, height, width = x.shape
        for _ in range(10):
            area = height * width * rnd.uniform(*self.scale, generator)
            aspect = rnd.log_uniform(*self.ratio, generator)
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if h < height and w < width:
                top = rnd.randint(0, height - h, generator)
                left = rnd.randint(0, width - w, generator)
                x = x.clone()
                x[:, top : top + h, left : left + w] = torch.randn((channels, h, w), generator=generator, dtype=x.dtype)
                return x
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, scale={self.scale}, ratio={self.ratio})"


def build_classification_transforms(
    train: bool,
    img_size: int = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    rand_augment: tuple[int, float] | None = (2, 9),
    reprob: float = 0.25,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The DAT/Swin ImageNet pipeline: PIL image -> normalised ``(3, img_size, img_size)`` tensor.

    Train: ``RandomResizedCrop(img_size, scale, ratio)`` (bicubic), ``RandomHorizontalFlip(hflip)``,
    ``RandAugment(*rand_augment, magnitude_std=0.5, prob=0.5)`` (``None``: none), ``ToTensor``,
    ``Normalize(mean, std)``, ``RandomErasing(reprob)`` (skipped when 0).
    Eval: ``Resize(int(img_size / crop_pct))`` of the shorter side (bicubic), ``CenterCrop(img_size)``,
    ``ToTensor``, ``Normalize(mean, std)``.

    Mixup/CutMix work on batches; see :class:`~deformvision.data.Mixup`.
    """
    if not train:
        return Compose([Resize(int(img_size / crop_pct)), CenterCrop(img_size), ToTensor(), Normalize(mean, std)])
    transforms: list[Transform] = [RandomResizedCrop(img_size, scale, ratio)]
    if hflip > 0:
        transforms.append(RandomHorizontalFlip(hflip))
    if rand_augment is not None:
        transforms.append(RandAugment(*rand_augment))
    transforms += [ToTensor(), Normalize(mean, std)]
    if reprob > 0:
        transforms.append(RandomErasing(reprob))
    return Compose(transforms)
