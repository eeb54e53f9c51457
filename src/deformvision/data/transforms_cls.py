"""The DAT/Swin classification recipe, built by timm's ``create_transform``.

DAT trains with Swin's ``build_transform``: ``timm.data.create_transform`` with RandomResizedCrop
(bicubic), horizontal flip 0.5, RandAugment ``rand-m9-mstd0.5-inc1`` (which switches off timm's
colour jitter), random erasing 0.25 in ``pixel`` mode with one box; evaluation resizes the shorter
side to ``int(256 / 224 * img_size)`` (bicubic) and takes the centre ``img_size`` crop, which is
timm's ``crop_pct=0.875``. The transforms draw from Python's ``random``, numpy's and torch's global
state; see :func:`deformvision.data._random.seeded` for reproducible calls.
"""

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import RandAugment

from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD


def rand_augment_config(num_ops: int, magnitude: float) -> str:
    """timm's RandAugment string of DAT/Swin for ``num_ops`` ops at ``magnitude``:
    ``rand-m{magnitude}-n{num_ops}-mstd0.5-inc1`` (magnitude std 0.5, the "increasing" op set, each
    op applied with probability 0.5).

    Raises:
        ValueError: if ``num_ops`` is not a positive integer or ``magnitude`` not an integer in ``0..10``
            (timm parses it as an int).
    """
    if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 1:
        raise ValueError(f"rand_augment num_ops must be a positive int, got {num_ops!r}")
    if not (float(magnitude).is_integer() and 0 <= magnitude <= 10):
        raise ValueError(f"rand_augment magnitude must be an integer in 0..10 (timm's RandAugment), got {magnitude!r}")
    return f"rand-m{int(magnitude)}-n{num_ops}-mstd0.5-inc1"


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
) -> Callable[[Image.Image], torch.Tensor]:
    """The DAT/Swin ImageNet pipeline: PIL image -> normalised float32 ``(3, img_size, img_size)`` tensor.

    Train (``timm.data.create_transform(is_training=True)``): RandomResizedCrop to ``img_size`` with
    area ``scale`` and aspect ``ratio`` (bicubic), horizontal flip with probability ``hflip`` (0: none),
    RandAugment :func:`rand_augment_config` ``(*rand_augment)`` (``None``: none), to tensor,
    ``Normalize(mean, std)``, random erasing with probability ``reprob`` (``pixel`` mode, one box; 0:
    none). No colour jitter.
    Eval: resize the shorter side to ``floor(img_size / crop_pct)`` (bicubic), centre crop
    ``img_size``, to tensor, ``Normalize(mean, std)``.

    Mixup/CutMix work on batches: ``timm.data.Mixup`` (see :func:`deformvision.engine.build_task`).
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    common = {"interpolation": "bicubic", "mean": tuple(mean), "std": tuple(std)}
    if not train:
        return create_transform(img_size, is_training=False, crop_pct=crop_pct, **common)
    if not 0.0 <= hflip <= 1.0 or not 0.0 <= reprob <= 1.0:
        raise ValueError(f"hflip and reprob must be probabilities in [0, 1], got hflip={hflip}, reprob={reprob}")
    auto_augment = rand_augment_config(*rand_augment) if rand_augment is not None else None
    transform = create_transform(
        img_size,
        is_training=True,
        scale=tuple(scale),
        ratio=tuple(ratio),
        hflip=hflip,
        color_jitter=None,
        auto_augment=auto_augment,
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
        **common,
    )
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.aug_fn.__name__ == "posterize":
                    op.aug_fn = posterize
    return transform


def posterize(img: Image.Image, bits: int, **_: object) -> Image.Image:
    """Keep the ``bits`` high bits of every channel; 0 bits gives a black image.

    timm's RandAugment ``inc1`` draws 0 bits when the sampled magnitude reaches 10 (``m9``, std 0.5: about
    2% of its posterize calls). Pillow before 13 turned that into a black image, which is what the official
    DAT/Swin runs trained on; Pillow 13 raises ``ValueError`` instead, which would stop training at random.
    """
    if bits >= 8:
        return img
    if bits <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)
