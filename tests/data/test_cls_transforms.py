"""Classification transforms: shapes, ranges, semantics and determinism under a seed."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deformvision.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder, build_classification_transforms
from deformvision.data import transforms_cls as T
from deformvision.data.transforms_cls import _RAND_AUGMENT_OPS


def _image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a, b) -> bool:
    if isinstance(a, Image.Image):
        return a.size == b.size and a.tobytes() == b.tobytes()
    return torch.equal(a, b)


RANDOM_TRANSFORMS = [
    (T.RandomResizedCrop(16), _image()),
    (T.RandomHorizontalFlip(), _image()),
    (T.RandAugment(num_ops=4, prob=1.0), _image()),
    (T.RandomErasing(p=1.0), T.ToTensor()(_image())),
    (build_classification_transforms(True, 24), _image()),
]


@pytest.mark.parametrize("transform, x", RANDOM_TRANSFORMS, ids=lambda v: type(v).__name__)
def test_deterministic_under_seed(transform, x) -> None:
    assert _same(transform(x, generator=_g(3)), transform(x, generator=_g(3)))
    outputs = [transform(x, generator=_g(seed)) for seed in range(8)]
    assert not all(_same(outputs[0], out) for out in outputs[1:])
    torch.manual_seed(5)
    first = transform(x)
    torch.manual_seed(5)
    assert _same(first, transform(x))  # the default generator is torch's global one


def test_random_resized_crop_box_and_size() -> None:
    crop = T.RandomResizedCrop((12, 20), scale=(0.2, 0.9), ratio=(0.5, 2.0))
    for seed in range(50):
        left, top, right, bottom = crop.crop_box(40, 30, _g(seed))
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.2 - 0.05 <= w * h / 1200 <= 0.9 + 0.05  # up to rounding of the sides
        assert 0.5 - 0.1 <= w / h <= 2.0 + 0.2
    assert crop(_image(), generator=_g(0)).size == (20, 12)
    # no draw can cover 150% of the area: the fallback is the central crop of the clamped ratio
    assert T.RandomResizedCrop(8, scale=(1.5, 2.0), ratio=(1.0, 1.0)).crop_box(40, 30, _g(0)) == (5, 0, 35, 30)


def test_flip() -> None:
    img = _image()
    flipped = np.asarray(T.RandomHorizontalFlip(p=1.0)(img))
    np.testing.assert_array_equal(flipped, np.asarray(img)[:, ::-1])
    assert T.RandomHorizontalFlip(p=0.0)(img) is img


def test_rand_augment_ops_keep_size_and_mode() -> None:
    img = _image()
    for name, (op, signed) in _RAND_AUGMENT_OPS.items():
        for level in (0.0, 0.5, 1.0, -1.0) if signed else (0.0, 1.0):
            out = op(img, level, (124, 116, 104))
            assert out.size == img.size and out.mode == "RGB", name
    assert len(T.RandAugment.ops) == 15
    assert T.RandAugment(num_ops=3, prob=0.0)(img, generator=_g(0)) is img
    with pytest.raises(ValueError, match="magnitude"):
        T.RandAugment(magnitude=11)


def test_resize_center_crop_to_tensor_normalize() -> None:
    img = _image(40, 30)
    assert T.Resize(15)(img).size == (20, 15)  # shorter side
    assert T.Resize(15)(_image(30, 40)).size == (15, 20)
    assert T.Resize((7, 9))(img).size == (9, 7)
    cropped = T.CenterCrop((10, 20))(img)
    np.testing.assert_array_equal(np.asarray(cropped), np.asarray(img)[10:20, 10:30])
    x = T.ToTensor()(img)
    assert x.shape == (3, 30, 40) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    mean_image = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 4, 4)
    assert T.Normalize()(mean_image).abs().max() < 1e-6
    unit = torch.tensor(IMAGENET_MEAN).add(torch.tensor(IMAGENET_STD)).view(3, 1, 1).expand(3, 4, 4)
    torch.testing.assert_close(T.Normalize()(unit), torch.ones(3, 4, 4))


def test_random_erasing_erases_one_rectangle() -> None:
    x = torch.zeros(3, 20, 30)
    out = T.RandomErasing(p=1.0)(x, generator=_g(1))
    changed = (out != 0).any(0)
    rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
    assert changed.sum() == len(rows) * len(cols) > 0  # a filled rectangle
    assert 0.02 * 600 * 0.8 <= changed.sum() <= 600 / 3 * 1.2
    assert T.RandomErasing(p=0.0)(x) is x and x.abs().sum() == 0


def test_recipes() -> None:
    img = _image(50, 40)
    train = build_classification_transforms(True, 32)
    assert [type(t).__name__ for t in train.transforms] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "ToTensor", "Normalize", "RandomErasing",
    ]  # fmt: skip
    assert train(img, generator=_g(0)).shape == (3, 32, 32)
    evaluate = build_classification_transforms(False, 32)
    out = evaluate(img)
    assert out.shape == (3, 32, 32) and torch.equal(out, evaluate(img))
    expected = T.Normalize()(T.ToTensor()(T.CenterCrop(32)(img.resize((45, 36), Image.Resampling.BICUBIC))))
    assert int(32 / 0.875) == 36
    torch.testing.assert_close(out, expected)


def test_dataloader_workers_reproducible(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / str(i % 2)).mkdir(exist_ok=True)
        _image(20, 20, seed=i).save(tmp_path / str(i % 2) / f"{i}.png")
    ds = ImageFolder(tmp_path, transform=build_classification_transforms(True, 16))

    def run() -> torch.Tensor:
        loader = DataLoader(ds, batch_size=3, num_workers=2, generator=torch.Generator().manual_seed(7))
        return torch.cat([images for images, _ in loader])

    first = run()
    assert torch.equal(first, run())
    assert not math.isclose(first[0].sum().item(), first[1].sum().item())
