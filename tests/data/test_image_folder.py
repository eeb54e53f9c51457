"""ImageFolder: class discovery, loading, corrupt files and empty folders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from deformvision.data import ImageFolder


def _save(path: Path, size: tuple[int, int] = (12, 10), mode: str = "RGB", value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _save(tmp_path / "dog" / "b.png")
    _save(tmp_path / "dog" / "nested" / "c.JPG")
    _save(tmp_path / "cat" / "a.png", mode="L")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_classes_samples_and_loading(tree: Path) -> None:
    ds = ImageFolder(tree, transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    assert ds.classes == ["cat", "dog"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1}
    assert [p.name for p, _ in ds.samples] == ["a.png", "b.png", "c.JPG"]
    assert ds.targets == [0, 1, 1] and len(ds) == 3
    image, label = ds[0]
    assert label == 0 and image.shape == (3, 10, 12)  # grayscale file decoded to RGB
    assert ImageFolder(tree)[1][0].mode == "RGB"


def test_corrupt_image_error_names_file(tree: Path) -> None:
    (tree / "cat" / "broken.png").write_bytes(b"definitely not a png")
    ds = ImageFolder(tree)
    index = [p.name for p, _ in ds.samples].index("broken.png")
    with pytest.raises(ValueError, match="broken.png"):
        ds[index]


def test_skip_corrupt_drops_and_warns(tree: Path) -> None:
    (tree / "cat" / "broken.png").write_bytes(b"definitely not a png")
    good = _save(tree / "dog" / "d.png")
    (tree / "dog" / "truncated.png").write_bytes(good.read_bytes()[:40])
    with pytest.warns(UserWarning, match="2 unreadable.*broken.png"):
        ds = ImageFolder(tree, skip_corrupt=True)
    assert [p.name for p, _ in ds.samples] == ["a.png", "b.png", "d.png", "c.JPG"]
    assert all(ds[i][0].size == (12, 10) for i in range(len(ds)))


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"no class folders in {tmp_path}"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"no image files in 1 of 1 class folder\(s\): .*empty_class"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")


def test_all_corrupt_with_skip_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable images"):
        ImageFolder(tmp_path, skip_corrupt=True)


def test_pixels_survive_loading(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "k").mkdir()
    Image.fromarray(pixels).save(tmp_path / "k" / "x.png")
    image, _ = ImageFolder(tmp_path, transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))[0]
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), pixels)


def test_every_empty_class_is_named(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "x.png")
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"no image files in 2 of 3 class folder\(s\): .*/a, .*/c \(a class needs"):
        ImageFolder(tmp_path)


def test_class_whose_images_are_all_corrupt_is_refused_with_skip_corrupt(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "good" / "x.png")
    (tmp_path / "bad" / "y.png").write_bytes(b"junk")
    with (
        pytest.warns(UserWarning, match="skipping 1 unreadable image"),
        pytest.raises(ValueError, match=r"no readable images in 1 of 2 class folder\(s\): .*/bad \("),
    ):
        ImageFolder(tmp_path, skip_corrupt=True)


def test_images_outside_class_folders_are_reported(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "k" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "stray.jpg")
    with pytest.warns(UserWarning, match=r"ignoring 1 image file\(s\) directly in .* outside every class .*stray.jpg"):
        ds = ImageFolder(tmp_path)
    assert [p.name for p, _ in ds.samples] == ["x.png"]
