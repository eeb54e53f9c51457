"""CocoDetection on a small dataset written here: targets, id mappings and every invalid case."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from deformvision.data import CocoDetection, build_detection_transforms

CATEGORIES = [{"id": 11, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]


def _ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _write(root: Path, annotations: list[dict[str, Any]], images: list[dict[str, Any]] | None = None) -> Path:
    """Images 1 (64x48) and 2 (32x32) under ``root/images``; the json at ``root/ann.json``."""
    (root / "images").mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), (10, 20, 30)).save(root / "images" / "a.png")
    Image.new("RGB", (32, 32), (40, 50, 60)).save(root / "images" / "b.png")
    if images is None:
        images = [
            {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        ]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


VALID = [
    _ann(1, 1, 3, [8, 8, 16, 24], area=300.0),
    _ann(2, 1, 11, [40, 30, 10, 10]),
    _ann(3, 1, 7, [0, 0, 20, 20], iscrowd=1),  # crowd: dropped
    _ann(4, 1, 7, [5, 5, 0, 10]),  # degenerate: dropped
    _ann(5, 2, 7, [-4, 20, 14, 20]),  # crosses the border: clipped to (0, 20, 10, 32)
]


def test_loads_targets(tmp_path: Path) -> None:
    with pytest.warns(UserWarning) as caught:
        ds = CocoDetection(tmp_path / "images", _write(tmp_path, VALID))
    file = tmp_path / "ann.json"
    assert [str(w.message) for w in caught] == [
        f"dropped 1 of 4 boxes in {file}: 1 with zero or negative width/height",
        f"clipped 1 of 4 boxes in {file} to their image (they extended beyond it by more than 1 pixel)",
    ]
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    assert ds.category_ids == [3, 7, 11]
    assert ds.id_to_label == {3: 0, 7: 1, 11: 2} and ds.label_to_category_id == {0: 3, 1: 7, 2: 11}
    assert ds.category_names[11] == "cat"
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and image.max() <= 1
    assert target["labels"].tolist() == [0, 2] and target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"][0], torch.tensor([16 / 64, 20 / 48, 16 / 64, 24 / 48]))
    torch.testing.assert_close(target["area"], torch.tensor([300.0, 100.0]))
    assert target["iscrowd"].tolist() == [0, 0] and target["image_id"].item() == 1
    assert target["orig_size"].tolist() == [48, 64] and target["size"].tolist() == [48, 64]
    _, target = ds[1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[5 / 32, 26 / 32, 10 / 32, 12 / 32]]))


def test_category_ids_as_labels_and_recipe(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        ds = CocoDetection(
            tmp_path / "images",
            _write(tmp_path, VALID),
            contiguous_ids=False,
            num_classes=12,
            transforms=build_detection_transforms(False, val_size=24, max_size=100),
        )
    image, target = ds[0]
    assert target["labels"].tolist() == [3, 11]
    assert image.shape == (3, 24, 32) and target["size"].tolist() == [24, 32]
    assert target["orig_size"].tolist() == [48, 64]
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_image_without_annotations(tmp_path: Path) -> None:
    _, target = CocoDetection(tmp_path / "images", _write(tmp_path, [_ann(1, 2, 3, [1, 1, 5, 5])]))[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


@pytest.mark.parametrize(
    "bad, message",
    [
        (_ann(9, 2, 5, [1, 1, 5, 5]), r"annotation 9: category_id 5 is not in the categories list \[3, 7, 11\]"),
        (_ann(9, 1, 11, [1, 1, 5, 5]), "annotation 9: label 2 .* >= num_classes=2"),
        (_ann(9, 8, 3, [1, 1, 5, 5]), "annotation 9: image_id 8 is not in the images list"),
        (
            _ann(9, 1, 3, [1, 1, 5]),
            r"annotation 9: bbox must be a list of 4 finite numbers \[x, y, w, h\], got \[1, 1, 5\]",
        ),
    ],
)
def test_invalid_annotation_raises_or_is_skipped(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    path = _write(tmp_path, [_ann(1, 1, 3, [8, 8, 16, 24]), bad])
    with pytest.raises(ValueError, match=message):
        CocoDetection(tmp_path / "images", path, num_classes=2)
    with pytest.warns(UserWarning, match=f"skipped 1 invalid annotation.*{message}"):
        ds = CocoDetection(tmp_path / "images", path, num_classes=2, skip_invalid=True)
    assert [len(ds[i][1]["labels"]) for i in range(2)] == [1, 0]


def test_bad_annotation_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse annotation file .*bad.json"):
        CocoDetection(tmp_path, bad_json)
    with pytest.raises(ValueError, match="ann.json has no images"):
        CocoDetection(tmp_path, _write(tmp_path, [], images=[]))
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[]")
    with pytest.raises(ValueError, match="list.json is not a COCO annotation file"):
        CocoDetection(tmp_path, not_coco)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(tmp_path, tmp_path / "missing.json")


def test_bad_image_files(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "corrupt.png", "width": 8, "height": 8},
        {"id": 3, "file_name": "gone.png", "width": 8, "height": 8},
        {"id": 4, "file_name": "b.png", "width": 30, "height": 32},
    ]
    ds = CocoDetection(tmp_path / "images", _write(tmp_path, [_ann(1, 1, 3, [8, 8, 16, 24])], images=images))
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG broken")
    assert ds[0][0].shape == (3, 48, 64)
    with pytest.raises(ValueError, match="cannot read image .*corrupt.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="gone.png"):
        ds[2]
    with pytest.raises(ValueError, match=r"b.png \(id 4\) is 32x32 \(after its EXIF orientation\) but .* says 30x32"):
        ds[3]
