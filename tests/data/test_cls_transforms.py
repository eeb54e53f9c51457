"""The DAT/Swin classification recipe built with timm: its parameters, outputs and seeding."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms

from deformvision.data import IMAGENET_MEAN, IMAGENET_STD, build_classification_transforms
from deformvision.data._random import seeded
from deformvision.data.transforms_cls import rand_augment_config

_MEAN, _STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def _image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _normalised(img: Image.Image) -> torch.Tensor:
    """An independent ToTensor + Normalize: ``(pixels / 255 - mean) / std`` as ``(3, H, W)``."""
    return torch.from_numpy(((np.asarray(img) / 255 - _MEAN) / _STD).transpose(2, 0, 1)).float()


def test_train_recipe_is_dats() -> None:
    steps = build_classification_transforms(True, 224).transforms
    assert [type(t) for t in steps[:3]] == [
        RandomResizedCropAndInterpolation,
        transforms.RandomHorizontalFlip,
        RandAugment,
    ]
    crop, flip, rand_augment = steps[:3]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == transforms.InterpolationMode.BICUBIC and flip.p == 0.5
    # rand-m9-mstd0.5-inc1: 2 of the 15 "increasing" ops, each with probability 0.5, magnitude 9 +- 0.5
    assert rand_augment.num_layers == 2 and len(rand_augment.ops) == 15
    assert {"PosterizeIncreasing", "SolarizeIncreasing", "TranslateXRel"} <= {op.name for op in rand_augment.ops}
    assert all(op.prob == 0.5 and op.magnitude == 9 and op.magnitude_std == 0.5 for op in rand_augment.ops)
    assert all(op.hparams["img_mean"] == (124, 116, 104) for op in rand_augment.ops)  # fill: the ImageNet mean
    normalize, erasing = steps[-2:]
    assert isinstance(normalize, transforms.Normalize) and torch.allclose(normalize.mean, torch.tensor(IMAGENET_MEAN))
    assert isinstance(erasing, RandomErasing) and erasing.probability == 0.25 and erasing.mode == "pixel"
    assert erasing.min_count == erasing.max_count == 1
    assert not any(isinstance(t, transforms.ColorJitter) for t in steps)  # switched off by RandAugment, as in DAT


def test_digits_recipe_has_no_flip_rand_augment_or_erasing() -> None:
    train = build_classification_transforms(True, 32, scale=(0.6, 1.0), hflip=0.0, rand_augment=None, reprob=0.0)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["RandomResizedCropAndInterpolation", "MaybeToTensor", "Normalize"]


def test_a_whole_image_crop_is_a_bicubic_resize() -> None:
    img = _image(40, 30)
    train = build_classification_transforms(
        True, 16, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), hflip=0.0, rand_augment=None, reprob=0.0
    )
    with seeded(0):
        out = train(img)
    torch.testing.assert_close(out, _normalised(img.resize((16, 16), Image.Resampling.BICUBIC)))


def test_eval_recipe_resizes_the_shorter_side_and_crops_the_centre() -> None:
    img = _image(50, 40)
    out = build_classification_transforms(False, 32)(img)  # shorter side int(32 / 0.875) = 36: 45 x 36
    expected = img.resize((45, 36), Image.Resampling.BICUBIC).crop((6, 2, 38, 34))  # round((45 - 32) / 2) = 6
    torch.testing.assert_close(out, _normalised(expected))
    out = build_classification_transforms(False, 30, crop_pct=1.0)(_image(30, 45))
    torch.testing.assert_close(out, _normalised(_image(30, 45).crop((0, 8, 30, 38))))  # no resize at crop_pct 1


def test_training_output_is_seeded() -> None:
    img = _image()
    train = build_classification_transforms(True, 24, reprob=0.5)
    outputs = []
    for seed in (3, 3, 4, 5, 6):
        with seeded(seed):
            outputs.append(train(img))
    assert outputs[0].shape == (3, 24, 24) and outputs[0].dtype == torch.float32
    assert torch.equal(outputs[0], outputs[1])
    assert not any(torch.equal(outputs[0], out) for out in outputs[2:])


def test_random_erasing_fills_one_rectangle_with_noise() -> None:
    img = Image.new("RGB", (32, 32), (124, 116, 104))
    train = build_classification_transforms(
        True, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rand_augment=None, reprob=1.0
    )
    with seeded(1):
        out = train(img)
    changed = (out - _normalised(img)).abs().amax(0) > 1e-4
    rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
    assert changed.sum() == len(rows) * len(cols) > 0  # one filled rectangle
    assert 0.02 * 1024 * 0.8 <= changed.sum() <= 1024 / 3 * 1.2  # area in timm's (0.02, 1/3)
    assert out[:, changed].std() > 0.5  # per-pixel N(0, 1) noise ("pixel" mode)


def test_rand_augment_config_and_its_errors() -> None:
    assert rand_augment_config(2, 9.0) == "rand-m9-n2-mstd0.5-inc1"
    with pytest.raises(ValueError, match="magnitude must be an integer in 0..10.*9.5"):
        build_classification_transforms(True, 32, rand_augment=(2, 9.5))
    with pytest.raises(ValueError, match="num_ops"):
        rand_augment_config(0, 9)
    with pytest.raises(ValueError, match="crop_pct"):
        build_classification_transforms(False, 32, crop_pct=0.0)


def _posterize_op(train_transform):
    (rand_augment,) = [step for step in train_transform.transforms if isinstance(step, RandAugment)]
    (op,) = [op for op in rand_augment.ops if op.name == "PosterizeIncreasing"]
    return op


@pytest.mark.parametrize("magnitude", [10.0, 7.5, 5.0, 2.5, 0.0])
def test_posterize_at_every_magnitude_keeps_the_high_bits(magnitude: float) -> None:
    """The recipe's posterize at magnitude m keeps ``4 - int(m / 10 * 4)`` bits (timm's ``inc1`` rule); at m = 10
    that is 0 bits, a black image (Pillow 13's posterize refuses 0 bits and would stop training)."""
    op = _posterize_op(build_classification_transforms(True, 32))
    op.prob, op.magnitude, op.magnitude_std = 1.0, magnitude, 0.0
    img = _image()
    bits = 4 - int(magnitude / 10 * 4)
    mask = (0xFF << (8 - bits)) & 0xFF
    np.testing.assert_array_equal(np.asarray(op(img)), np.asarray(img) & mask)


def test_the_recipe_survives_the_largest_magnitudes() -> None:
    """Many draws of the full train pipeline at magnitude 10 (posterize to 0 bits included) raise nothing."""
    transform = build_classification_transforms(True, 32, rand_augment=(2, 10))
    with seeded(0):
        outputs = [transform(_image(seed=i)) for i in range(60)]
    assert all(out.shape == (3, 32, 32) and torch.isfinite(out).all() for out in outputs)
