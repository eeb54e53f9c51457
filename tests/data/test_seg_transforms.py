"""Segmentation transforms (mmseg's ADE20K recipe on transforms.v2): labels stay labels, pads are 255."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from deformvision.data import IMAGENET_MEAN, IMAGENET_STD, build_segmentation_transforms
from deformvision.data import transforms_seg as T
from deformvision.data._random import seeded

VALUES = (0, 3, 7, 255)


def _sample(height: int, width: int, seed: int = 0) -> tuple[Image.Image, tv_tensors.Mask]:
    """A random image and a label map of 4x4-pixel blocks with values in VALUES."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(np.array(VALUES), (-(-height // 4), -(-width // 4)))
    label = np.kron(blocks, np.ones((4, 4), np.int64))[:height, :width]
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(image), tv_tensors.Mask(torch.from_numpy(label))


@pytest.mark.parametrize(
    "height, width, scale, expected",
    [
        (100, 300, (64, 32), (21, 64)),  # factor min(64/300, 32/100) = 0.2133: h int(21.83), w int(64.5)
        (512, 683, (2048, 512), (512, 683)),  # already fits: factor min(2048/683, 512/512) = 1
        (400, 300, (2048, 512), (683, 512)),  # portrait: short side 300 -> 512, factor 1.7067
        (100, 1000, (2048, 512), (205, 2048)),  # long side limits: factor 2.048
    ],
)
def test_fit_size_is_mmcv_rescale(height: int, width: int, scale: tuple[int, int], expected: tuple[int, int]) -> None:
    assert T.fit_size(height, width, scale) == expected


def test_resize_to_fit_draws_the_ratio_and_uses_nearest_for_labels() -> None:
    img, label = _sample(40, 60)
    sizes = set()
    for seed in range(20):
        with seeded(seed):
            image, target = T.ResizeToFit((60, 20), (0.5, 2.0))(T.v2.ToImage()(img), label)
        assert image.shape[1:] == target.shape
        # scale (60 r, 20 r): the short side limits, factor int(20 r) / 40, so h ~ 20 r and w ~ 30 r
        ratio = target.shape[0] / 20
        assert 0.5 - 0.05 <= ratio <= 2.0 + 0.05 and abs(target.shape[1] - 30 * ratio) <= 1
        assert set(target.unique().tolist()) <= set(VALUES)
        sizes.add(tuple(target.shape))
    assert len(sizes) > 5
    # an exact 2x reduction with nearest picks every other pixel
    image, target = T.ResizeToFit((30, 20))(T.v2.ToImage()(img), label)
    assert tuple(target.shape) == (20, 30) and torch.equal(target, label[::2, ::2])


@pytest.mark.parametrize("seed", range(8))
def test_train_pipeline_keeps_label_values(seed: int) -> None:
    img, label = _sample(50, 70, seed)
    transforms = build_segmentation_transforms(True, scale=(96, 32), crop_size=(32, 32))
    with seeded(seed):
        image, target = transforms(img, label)
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert type(target) is torch.Tensor and target.dtype == torch.int64 and target.shape == (32, 32)
    assert set(target.unique().tolist()) <= set(VALUES)


def test_padding_uses_zero_and_255() -> None:
    img, label = _sample(30, 40)
    transforms = build_segmentation_transforms(
        True,
        scale=(40, 30),
        ratio_range=(1.0, 1.0),
        crop_size=(64, 48),
        hflip=0.0,
        photometric=False,
        cat_max_ratio=1.0,
    )
    image, target = transforms(img, label)
    assert image.shape == (3, 64, 48) and target.shape == (64, 48)
    assert torch.equal(target[:30, :40], label) and (target[30:] == 255).all() and (target[:, 40:] == 255).all()
    assert (image[:, 30:] == 0).all() and (image[:, :, 40:] == 0).all()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    original = torch.from_numpy(np.array(img)).permute(2, 0, 1) / 255
    torch.testing.assert_close(image[:, :30, :40], (original - mean) / std)


def test_crop_passes() -> None:
    assert T.crop_passes(torch.tensor([1, 1, 2, 2]), 0.75)
    assert not T.crop_passes(torch.tensor([1, 1, 1, 2]), 0.75)  # exactly 0.75 fails (strict)
    assert not T.crop_passes(torch.tensor([1, 1, 255, 255, 255]), 0.75)  # one class once 255 is left out
    assert T.crop_passes(torch.tensor([1, 2, 255, 255, 255, 255, 255]), 0.75)  # 255 is not a class


def _stripes() -> tv_tensors.Mask:
    """A 32 x 200 label map: class 1 in columns 0..149, class 2 in 150..199 (255 in the top rows)."""
    label = torch.ones(32, 200, dtype=torch.int64)
    label[:, 150:] = 2
    label[:4] = 255
    return tv_tensors.Mask(label)


def _class2_share(left: int) -> float:
    """Share of class 2 among the non-ignored pixels of a 32x32 crop at column ``left`` (all rows)."""
    return max(0, min(left + 32, 200) - max(left, 150)) / 32


def test_cat_max_ratio_retries() -> None:
    label = _stripes()
    passing = [left for left in range(169) if 0.25 < _class2_share(left) < 0.75]
    assert 0.08 < len(passing) / 169 < 0.12  # one random crop passes about 1 time in 10
    image = torch.zeros(3, 32, 200)
    lefts = {}
    for ratio in (0.75, 1.0):
        lefts[ratio] = []
        for seed in range(60):
            with seeded(seed):
                _, target = T.CatMaxRandomCrop((32, 32), ratio)(tv_tensors.Image(image), label)
            share = (target == 2).sum().item() / (target != 255).sum().item()
            lefts[ratio].append(0.25 < share < 0.75)
    # with the check, 11 draws: P(pass) = 1 - 0.9^10 ~ 0.65; without, ~0.1
    assert 0.45 < np.mean(lefts[0.75]) < 0.85 and np.mean(lefts[1.0]) < 0.25


def test_cat_max_ratio_finds_the_only_good_crops() -> None:
    """Only the crops at columns 0..4 fail the check (too much class 1): with retries none is kept."""
    label = torch.ones(32, 64, dtype=torch.int64)
    label[:, ::2] = 2  # every crop of width >= 2 is half class 1, half class 2
    label[:, :8] = 1  # crops starting at columns 0..3 are mostly class 1
    for seed in range(40):
        with seeded(seed):
            _, target = T.CatMaxRandomCrop((32, 16), 0.6)(
                tv_tensors.Image(torch.zeros(3, 32, 64)), tv_tensors.Mask(label)
            )
        assert T.crop_passes(target, 0.6)


def test_photometric_distortion_keeps_grey_grey_and_hue_keeps_value() -> None:
    grey = tv_tensors.Image(torch.full((3, 8, 8), 0.4))
    colour = tv_tensors.Image(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)))
    hue_only = T.PhotoMetricDistortion(0, (1.0, 1.0), (1.0, 1.0), 18)
    changed = 0
    for seed in range(20):
        with seeded(seed):
            out, mask = T.PhotoMetricDistortion()(grey, tv_tensors.Mask(torch.ones(8, 8, dtype=torch.int64)))
        assert torch.equal(mask, torch.ones(8, 8, dtype=torch.int64)) and 0 <= out.min() and out.max() <= 1
        torch.testing.assert_close(out[0], out[1])
        torch.testing.assert_close(out[1], out[2])
        with seeded(seed):
            shifted = hue_only(colour)
        torch.testing.assert_close(shifted.amax(0), colour.amax(0))  # V is kept
        torch.testing.assert_close(shifted.amax(0) - shifted.amin(0), colour.amax(0) - colour.amin(0))  # and chroma
        changed += not torch.allclose(shifted, colour)
    assert changed > 5
    with pytest.raises(TypeError, match="needs a float image"):
        T.PhotoMetricDistortion()(tv_tensors.Image(torch.zeros(3, 2, 2, dtype=torch.uint8)))


def test_eval_pipeline_resizes_the_image_and_keeps_the_label() -> None:
    img, label = _sample(40, 100)
    image, target = build_segmentation_transforms(False, scale=(64, 32))(img, label)
    assert image.shape == (3, 26, 64) and torch.equal(target, label)  # factor min(64/100, 32/40) = 0.64
    image, target = build_segmentation_transforms(False, scale=(50, 20), resize_eval_target=True)(img, label)
    assert image.shape == (3, 20, 50) and torch.equal(target, label[::2, ::2])


def test_determinism_under_seeded() -> None:
    img, label = _sample(50, 70)
    transforms = build_segmentation_transforms(True, scale=(96, 32), crop_size=(32, 32))
    outputs = []
    for seed in (5, 5, 6):
        with seeded(seed):
            outputs.append(transforms(img, label))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert not torch.equal(outputs[0][0], outputs[2][0])


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="hflip must be a probability"):
        build_segmentation_transforms(True, hflip=2.0)
    with pytest.raises(ValueError, match="cat_max_ratio must be in"):
        build_segmentation_transforms(True, cat_max_ratio=0.0)
    with pytest.raises(ValueError, match="ratio_range must be"):
        build_segmentation_transforms(True, ratio_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="crop size must be"):
        build_segmentation_transforms(True, crop_size=(0, 5))
