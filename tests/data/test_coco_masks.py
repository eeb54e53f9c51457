"""CocoDetection(masks=True): polygons and RLE decoded to the expected pixels, in step with the boxes."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from deformvision.data import CocoDetection, build_detection_transforms

H, W = 48, 64
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _triangle() -> np.ndarray:
    """Pixels whose centre lies in the triangle (10, 10), (42, 10), (10, 34) (no centre is on its edge)."""
    y, x = np.mgrid[0:H, 0:W] + 0.5
    return ((x >= 10) & (y >= 10) & ((x - 10) / 32 + (y - 10) / 24 <= 1)).astype(np.uint8)


def _random_mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    mask[5:30, 20:50] = rng.random((25, 30)) < 0.6
    return mask


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of ``mask`` in column-major order, starting with a run of zeros (COCO's RLE)."""
    flat = mask.T.reshape(-1)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _ann(ann_id: int, category_id: int, bbox: list[float], segmentation: Any, **extra: Any) -> dict[str, Any]:
    ann = {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": bbox, **extra}
    if segmentation is not None:
        ann["segmentation"] = segmentation
    return ann


def _write(root: Path, annotations: list[dict[str, Any]]) -> Path:
    Image.new("RGB", (W, H), (10, 20, 30)).save(root / "a.png")
    path = root / "ann.json"
    images = [{"id": 1, "file_name": "a.png", "width": W, "height": H}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def _valid() -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    rect = np.zeros((H, W), np.uint8)
    rect[5:15, 50:60] = 1  # two polygons with integer corners: pixels [x0, x1) x [y0, y1)
    rect[20:25, 50:55] = 1
    uncompressed, compressed = _random_mask(0), _random_mask(1)
    rle = mask_utils.encode(np.asfortranarray(compressed))
    annotations = [
        _ann(1, 1, [10, 10, 32, 24], [[10, 10, 42, 10, 10, 34]]),
        _ann(2, 2, [50, 5, 10, 20], [[50, 5, 60, 5, 60, 15, 50, 15], [50, 20, 55, 20, 55, 25, 50, 25]]),
        _ann(3, 2, _bbox(uncompressed), {"size": [H, W], "counts": _uncompressed_counts(uncompressed)}),
        _ann(4, 1, _bbox(compressed), {"size": [H, W], "counts": rle["counts"].decode("ascii")}),
        _ann(5, 1, [0, 0, 10, 10], {"size": [1, 1], "counts": "??"}, iscrowd=1),  # crowd: dropped unread
        _ann(6, 1, [0, 0, 0, 10], [[0, 0, 1]]),  # degenerate box: dropped unread
    ]
    return annotations, [_triangle(), rect, uncompressed, compressed]


DROPPED_DEGENERATE = "dropped 1 of 5 boxes in .*ann.json: 1 with zero or negative width/height"


def test_polygons_and_rle_decode_to_the_expected_pixels(tmp_path: Path) -> None:
    annotations, expected = _valid()
    with pytest.warns(UserWarning, match=DROPPED_DEGENERATE):
        ds = CocoDetection(tmp_path, _write(tmp_path, annotations), masks=True)
    image, target = ds[0]
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (4, H, W)
    assert target["labels"].tolist() == [0, 1, 1, 0] and len(target["boxes"]) == 4
    for k, mask in enumerate(expected):
        assert np.array_equal(masks[k].numpy(), mask), f"object {k}"
    assert image.shape == (3, H, W)
    with pytest.warns(UserWarning, match=DROPPED_DEGENERATE):
        assert "masks" not in CocoDetection(tmp_path, tmp_path / "ann.json")[0][1]  # masks=False: boxes only


def test_rle_round_trip(tmp_path: Path) -> None:
    mask = _random_mask(7)
    compressed = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
    annotations = [
        _ann(1, 1, _bbox(mask), {"size": [H, W], "counts": compressed}),
        _ann(2, 1, _bbox(mask), {"size": [H, W], "counts": _uncompressed_counts(mask)}),
    ]
    _, target = CocoDetection(tmp_path, _write(tmp_path, annotations), masks=True)[0]
    assert np.array_equal(target["masks"][0].numpy(), mask) and np.array_equal(target["masks"][1].numpy(), mask)


def test_masks_follow_the_detection_transforms(tmp_path: Path) -> None:
    annotations, expected = _valid()
    transforms = build_detection_transforms(False, val_size=24, max_size=1000)
    with pytest.warns(UserWarning, match=DROPPED_DEGENERATE):
        ds = CocoDetection(tmp_path, _write(tmp_path, annotations), masks=True, transforms=transforms)
    _, target = ds[0]
    assert target["masks"].shape == (4, 24, 32)
    assert np.array_equal(target["masks"][1].numpy(), expected[1][::2, ::2])  # nearest: every other pixel


def _compressed_of(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")


@pytest.mark.parametrize(
    "segmentation, message",
    [
        (None, "annotation 9: has no 'segmentation'"),
        ([], "annotation 9: segmentation is an empty list"),
        ([[1, 1, 5, 1, 5]], "annotation 9: segmentation polygon 0 must be .* at least 3 points"),
        ([[1, 1, 5, 1, 5, 5], [1, 1, 5, 1]], "annotation 9: segmentation polygon 1 must be"),
        ([[1, 1, 5, "x", 5, 5]], "annotation 9: segmentation polygon 0 must be a list of finite numbers"),
        ("abc", "annotation 9: segmentation must be a list of polygons or an RLE dict"),
        ({"size": [W, H], "counts": [H * W]}, r"annotation 9: RLE segmentation 'size' \[64, 48\] is not"),
        ({"size": [H, W], "counts": [5, 3]}, "annotation 9: RLE segmentation runs must .* sum to .*=3072, got sum 8"),
        ({"size": [H, W], "counts": [H * W + 2, -2]}, "annotation 9: .* with a negative run"),
        ({"size": [H, W], "counts": 3.0}, "annotation 9: RLE segmentation 'counts' must be a string or a list"),
        ({"size": [H, W], "counts": "a b"}, "annotation 9: compressed RLE counts hold the character ' '"),
        ({"size": [H, W], "counts": _compressed_of(_random_mask(0))[:-3]}, "annotation 9: .*(end|sum)"),
        ({"size": [H, W], "counts": "o"}, "annotation 9: compressed RLE counts end in the middle of a run"),
    ],
)
def test_malformed_segmentation_names_the_annotation(tmp_path: Path, segmentation: Any, message: str) -> None:
    path = _write(
        tmp_path, [_ann(1, 1, [10, 10, 32, 24], [[10, 10, 42, 10, 10, 34]]), _ann(9, 2, [1, 1, 5, 5], segmentation)]
    )
    with pytest.raises(ValueError, match=message):
        CocoDetection(tmp_path, path, masks=True)
    with pytest.warns(UserWarning, match="skipped 1 invalid annotation"):
        ds = CocoDetection(tmp_path, path, masks=True, skip_invalid=True)
    _, target = ds[0]
    assert target["masks"].shape == (1, H, W) and np.array_equal(target["masks"][0].numpy(), _triangle())
    CocoDetection(tmp_path, path)  # without masks the segmentation is not read


def test_image_without_objects_has_empty_masks(tmp_path: Path) -> None:
    path = _write(tmp_path, [])
    data = json.loads(path.read_text())  # image 2 holds the file's one object, image 1 none
    data["images"].append({"id": 2, "file_name": "a.png", "width": W, "height": H})
    data["annotations"] = [
        {
            "id": 1,
            "image_id": 2,
            "category_id": CATEGORIES[0]["id"],
            "bbox": [1, 1, 4, 4],
            "segmentation": [[1, 1, 5, 1, 5, 5]],
        }
    ]
    path.write_text(json.dumps(data))
    _, target = CocoDetection(tmp_path, path, masks=True)[0]
    assert target["masks"].shape == (0, H, W) and target["masks"].dtype == torch.uint8
