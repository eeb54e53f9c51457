"""Detection transforms keep boxes consistent with the pixels they move."""

import numpy as np
import pytest
import torch
from PIL import Image

from deformvision.data import IMAGENET_MEAN, IMAGENET_STD, build_detection_transforms
from deformvision.data import transforms_det as T


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scene() -> tuple[Image.Image, dict[str, torch.Tensor]]:
    """A 100x60 (W x H) black image with one white box at xyxy (10, 20, 30, 50), plus a second box."""
    pixels = np.zeros((60, 100, 3), np.uint8)
    pixels[20:50, 10:30] = 255
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 50.0], [60.0, 5.0, 95.0, 15.0]]),
        "labels": torch.tensor([3, 7]),
        "area": torch.tensor([600.0, 350.0]),
        "iscrowd": torch.tensor([0, 0]),
        "size": torch.tensor([60, 100]),
    }
    return Image.fromarray(pixels), target


def _white_box(img) -> list[float]:
    """Pixel-edge xyxy bounds of the bright pixels of a PIL image or normalised tensor."""
    if isinstance(img, Image.Image):
        bright = np.asarray(img)[..., 0] > 127
    else:
        bright = (img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).numpy() > 0.5
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_hflip_mirrors_boxes() -> None:
    img, target = _scene()
    out, flipped = T.RandomHorizontalFlip(p=1.0)(img, target)
    torch.testing.assert_close(flipped["boxes"], torch.tensor([[70.0, 20.0, 90.0, 50.0], [5.0, 5.0, 40.0, 15.0]]))
    assert _white_box(out) == [70, 20, 90, 50]
    assert torch.equal(target["boxes"][0], torch.tensor([10.0, 20.0, 30.0, 50.0]))  # input untouched
    assert T.RandomHorizontalFlip(p=0.0)(img, target)[1] is target


def test_resize_scales_boxes_and_area() -> None:
    img, target = _scene()
    out, resized = T.resize(img, target, 30)
    assert out.size == (50, 30) and resized["size"].tolist() == [30, 50]
    torch.testing.assert_close(resized["boxes"], target["boxes"] / 2)
    torch.testing.assert_close(resized["area"], target["area"] / 4)
    assert _white_box(out) == [5, 10, 15, 25]
    assert T.resized_shape(60, 100, 800, max_size=1000) == (600, 1000)  # longer side capped
    assert T.resized_shape(100, 60, 30) == (50, 30)
    assert T.resized_shape(60, 100, 60) == (60, 100)


def test_crop_clips_and_drops_boxes() -> None:
    img, target = _scene()
    out, cropped = T.crop(img, target, top=25, left=0, height=35, width=50)
    assert out.size == (50, 35) and cropped["size"].tolist() == [35, 50]
    torch.testing.assert_close(cropped["boxes"], torch.tensor([[10.0, 0.0, 30.0, 25.0]]))  # clipped at the top
    assert cropped["labels"].tolist() == [3] and cropped["iscrowd"].tolist() == [0]  # the second box dropped
    torch.testing.assert_close(cropped["area"], torch.tensor([500.0]))
    assert _white_box(out) == [10, 0, 30, 25]


def test_random_size_crop_bounds() -> None:
    img, target = _scene()
    for seed in range(20):
        out, cropped = T.RandomSizeCrop(20, 40)(img, target, generator=_g(seed))
        assert 20 <= out.width <= 40 and 20 <= out.height <= 40
        boxes = cropped["boxes"]
        assert len(boxes) == len(cropped["labels"]) == len(cropped["area"])
        assert (
            (boxes[:, 2:] > boxes[:, :2]).all()
            and (boxes[:, 2] <= out.width).all()
            and (boxes[:, 3] <= out.height).all()
        )
    small = Image.new("RGB", (10, 8))
    assert T.RandomSizeCrop(20, 40)(small, {}, generator=_g(0))[0].size == (10, 8)  # smaller than min_size: whole


def test_normalize_gives_cxcywh_in_unit_range() -> None:
    img, target = _scene()
    x, out = T.Compose([T.ToTensor(), T.Normalize()])(img, target)
    assert x.shape == (3, 60, 100)
    torch.testing.assert_close(out["boxes"][0], torch.tensor([20 / 100, 35 / 60, 20 / 100, 30 / 60]))
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 1).all()
    torch.testing.assert_close(x[:, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))
    _, only_boxes = T.NormalizeBoxes()(T.ToTensor()(img, target)[0], target)
    torch.testing.assert_close(only_boxes["boxes"], out["boxes"])


def test_random_select() -> None:
    img, target = _scene()
    flip, keep = T.RandomHorizontalFlip(p=1.0), T.RandomHorizontalFlip(p=0.0)
    assert T.RandomSelect(flip, keep, p=1.0)(img, target)[1]["boxes"][0, 0] == 70
    assert T.RandomSelect(flip, keep, p=0.0)(img, target)[1]["boxes"][0, 0] == 10


@pytest.mark.parametrize("seed", range(12))
def test_train_recipe_keeps_box_on_its_pixels(seed: int) -> None:
    img, target = _scene()
    transforms = build_detection_transforms(
        True, scales=(48, 64, 80), max_size=140, crop=(24, 56), crop_resize=(50, 60, 70)
    )
    x, out = transforms(img, target, generator=_g(seed))
    height, width = x.shape[-2:]
    assert out["size"].tolist() == [height, width] and max(height, width) <= 140
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
    if 3 in out["labels"].tolist():
        cx, cy, w, h = out["boxes"][out["labels"].tolist().index(3)].tolist()
        expected = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        np.testing.assert_allclose(_white_box(x), expected, atol=1.5)  # resampling blurs edges by < 1.5 px
    again = transforms(img, target, generator=_g(seed))
    assert torch.equal(x, again[0]) and torch.equal(out["boxes"], again[1]["boxes"])


@pytest.mark.parametrize("seed", range(6))
def test_train_recipe_flip_probability_and_no_crop(seed: int) -> None:
    img, target = _scene()
    kwargs = dict(scales=(60,), max_size=100, crop=None)
    _, kept = build_detection_transforms(True, hflip=0.0, **kwargs)(img, target, generator=_g(seed))
    _, flipped = build_detection_transforms(True, hflip=1.0, **kwargs)(img, target, generator=_g(seed))
    torch.testing.assert_close(kept["boxes"][0], torch.tensor([0.2, 35 / 60, 0.2, 0.5]))  # cxcywh of (10, 20, 30, 50)
    torch.testing.assert_close(flipped["boxes"][0], torch.tensor([0.8, 35 / 60, 0.2, 0.5]))
    assert kept["size"].tolist() == [60, 100]  # resized to scale 60 only: never cropped


def test_train_recipe_rejects_bad_flip_probability() -> None:
    with pytest.raises(ValueError, match="hflip"):
        build_detection_transforms(True, hflip=1.5)


def test_eval_recipe_and_inference_target() -> None:
    img, target = _scene()
    x, out = build_detection_transforms(False, val_size=30, max_size=1333)(img, target)
    assert x.shape == (3, 30, 50) and out["size"].tolist() == [30, 50]
    x, out = build_detection_transforms(False)(img, {})
    assert x.shape == (3, 800, 1333) and list(out) == ["size"] and out["size"].tolist() == [800, 1333]
