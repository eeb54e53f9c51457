"""SegmentationFolder and ADE20K read image / label-map pairs and say which file is wrong."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from deformvision.data import ADE20K, ADE20K_CLASSES, SegmentationFolder


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _label(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array([0, 1, 5, 149, 150, 255], np.uint8), (height, width))


def _pair(root: Path, stem: str, height: int = 12, width: int = 16, seed: int = 0, ext: str = ".png") -> np.ndarray:
    _save(root / "images" / f"{stem}{ext}", np.full((height, width, 3), 100, np.uint8))
    label = _label(height, width, seed)
    _save(root / "labels" / f"{stem}.png", label)
    return label


def test_pairs_by_stem_and_reads_labels(tmp_path: Path) -> None:
    a = _pair(tmp_path, "a", seed=1, ext=".jpg")
    b = _pair(tmp_path, "sub/b", height=8, width=10, seed=2)
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "labels")
    assert len(ds) == 2 and [p.name for p, _ in ds.samples] == ["a.jpg", "b.png"]
    image, target = ds[0]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32 and image.max() <= 1
    assert isinstance(target, tv_tensors.Mask) and target.dtype == torch.int64
    assert np.array_equal(target.numpy(), a.astype(np.int64))
    assert np.array_equal(ds[1][1].numpy(), b.astype(np.int64))


def test_reduce_zero_label(tmp_path: Path) -> None:
    label = _pair(tmp_path, "a")
    _, target = SegmentationFolder(tmp_path / "images", tmp_path / "labels", reduce_zero_label=True)[0]
    expected = {0: 255, 1: 0, 5: 4, 149: 148, 150: 149, 255: 255}
    assert np.array_equal(target.numpy(), np.vectorize(expected.get)(label))


def test_palette_label_maps_give_the_indices(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "a.png", np.zeros((4, 6, 3), np.uint8))
    label = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6)).convert("P")
    label.putdata(list(range(24)))
    label.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    (tmp_path / "labels").mkdir()
    label.save(tmp_path / "labels" / "a.png")
    with Image.open(tmp_path / "labels" / "a.png") as check:
        assert check.mode == "P"
    _, target = SegmentationFolder(tmp_path / "images", tmp_path / "labels")[0]
    assert target.tolist() == np.arange(24).reshape(4, 6).tolist()


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images folder not found: .*nowhere"):
        SegmentationFolder(tmp_path / "nowhere", tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match="no images found in .*images"):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels")
    _pair(tmp_path, "a")
    _save(tmp_path / "images" / "lonely.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "labels" / "orphan.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(
        ValueError,
        match=r"1 image\(s\) without a label map .*lonely.png.*1 label map\(s\) without an "
        r"image .*orphan.png",
    ):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels")
    _save(tmp_path / "images" / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="two files with the stem 'a': a.jpg and a.png"):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels")


@pytest.mark.parametrize(
    "label, message",
    [
        (np.zeros((12, 15), np.uint8), r"label map .*a.png is 15x12 but its image .*a.png is 16x12"),
        (np.zeros((12, 16, 3), np.uint8), "label map .*a.png has mode RGB; expected a single-channel"),
        (np.full((12, 16), 200, np.uint8), r"label map .*a.png has values \[199\] outside 0..149"),
    ],
)
def test_sample_errors_name_the_file(tmp_path: Path, label: np.ndarray, message: str) -> None:
    _pair(tmp_path, "a")
    _save(tmp_path / "labels" / "a.png", label)
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "labels", reduce_zero_label=True, num_classes=150)
    with pytest.raises(ValueError, match=message):
        ds[0]


def _ade_layout(root: Path) -> dict[str, np.ndarray]:
    labels = {}
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        base = root / "ADEChallengeData2016"
        _save(base / "images" / split / f"{stem}.jpg", np.full((20, 30, 3), 50, np.uint8))
        labels[split] = np.random.default_rng(len(split)).integers(0, 151, (20, 30)).astype(np.uint8)
        _save(base / "annotations" / split / f"{stem}.png", labels[split])
    return labels


def test_ade20k(tmp_path: Path) -> None:
    labels = _ade_layout(tmp_path)
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
    for root in (tmp_path, tmp_path / "ADEChallengeData2016"):
        for split in ("training", "validation"):
            ds = ADE20K(root, split)
            assert len(ds) == 1 and ds.samples[0][0].parent.name == split
            _, target = ds[0]
            raw = labels[split].astype(np.int64)
            assert np.array_equal(target.numpy(), np.where(raw == 0, 255, raw - 1))
    with pytest.raises(ValueError, match="split must be one of"):
        ADE20K(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="ADE20K training images not found"):
        ADE20K(tmp_path / "ADEChallengeData2016" / "images", "training")


def test_sixteen_bit_and_one_bit_label_maps_keep_their_values(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "a.png", np.zeros((3, 4, 3), np.uint8))
    _save(tmp_path / "images" / "b.png", np.zeros((3, 4, 3), np.uint8))
    wide = np.array([[0, 1, 300, 1000], [255, 65535, 7, 2], [256, 4, 5, 6]], np.uint16)
    _save(tmp_path / "labels" / "a.png", wide)
    bits = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], bool)
    _save(tmp_path / "labels" / "b.png", bits)
    with Image.open(tmp_path / "labels" / "a.png") as a, Image.open(tmp_path / "labels" / "b.png") as b:
        assert (a.mode, b.mode) == ("I;16", "1")
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "labels")
    assert ds[0][1].tolist() == wide.astype(np.int64).tolist()
    assert ds[1][1].tolist() == bits.astype(np.int64).tolist()
    with pytest.raises(ValueError, match=r"label map .*a.png has values \[256, 300, 1000, 65535\] outside 0..99"):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels", num_classes=100)[0]


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_label_maps_with_alpha_are_refused(tmp_path: Path, mode: str) -> None:
    _pair(tmp_path, "a")
    Image.new(mode, (16, 12)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(ValueError, match=f"label map .*a.png has mode {mode}; expected a single-channel PNG"):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels")[0]


def test_image_orientation_is_applied_before_the_size_check(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 16 wide, shown 12 wide and 16 tall
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 12)).save(tmp_path / "images" / "a.png", exif=exif.tobytes())
    _save(tmp_path / "labels" / "a.png", np.zeros((12, 16), np.uint8))
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(ValueError, match=r"label map .*a.png is 16x12 but its image .*a.png is 12x16"):
        ds[0]
    _save(tmp_path / "labels" / "a.png", np.zeros((16, 12), np.uint8))
    image, target = ds[0]
    assert image.shape == (3, 16, 12) and target.shape == (16, 12)
