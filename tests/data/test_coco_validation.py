"""CocoDetection refuses malformed COCO files, naming file, field and entry, and counts every box it drops."""

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deformvision.data import CocoDetection

W, H = 40, 30


def _image(image_id: Any = 1, **fields: Any) -> dict[str, Any]:
    return {"id": image_id, "file_name": "a.png", "width": W, "height": H, **fields}


def _ann(ann_id: Any, bbox: Any, **fields: Any) -> dict[str, Any]:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": bbox, **fields}


def _write(root: Path, **data: Any) -> Path:
    """``root/ann.json`` with one 40x30 image, one category and one valid box unless ``data`` replaces them."""
    Image.new("RGB", (W, H)).save(root / "a.png")
    content = {"images": [_image()], "annotations": [_ann(1, [1, 1, 5, 5])], "categories": [{"id": 1}], **data}
    path = root / "ann.json"
    path.write_text(json.dumps({k: v for k, v in content.items() if v is not None}))
    return path


def _load(root: Path, **data: Any) -> CocoDetection:
    return CocoDetection(root, _write(root, **data), transforms=lambda image, target: (image, target))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"annotations": None}, "ann.json is not a COCO annotation file: 'annotations' must be a list, it is missing"),
        ({"categories": {}}, "ann.json is not a COCO annotation file: 'categories' must be a list, it is a dict"),
        ({"images": None}, "'images' must be a list, it is missing"),
        ({"images": [{"id": 1, "file_name": "a.png"}]}, "image entry 0 in .*ann.json lacks 'width', 'height'"),
        ({"images": [_image(), _image("2")]}, "image entry 1 in .*ann.json: 'id' must be an integer, got '2'"),
        ({"images": [_image(file_name="")]}, r"image entry 0 in .*ann.json \(id 1\): 'file_name' must be a non-empty"),
        ({"images": [_image(width=0)]}, r"image entry 0 .*\(id 1\): 'width' must be a positive integer, got 0"),
        ({"images": [_image(height=30.5)]}, r"image entry 0 .*\(id 1\): 'height' must be a positive integer, got 30.5"),
        ({"categories": [{"id": True}]}, "category entry 0 in .*ann.json: 'id' must be an integer, got True"),
        ({"categories": [{"name": "x"}]}, "category entry 0 in .*ann.json: 'id' must be an integer, got None"),
        ({"annotations": [_ann("a1", [1, 1, 5, 5])]}, "annotation entry 0 in .*ann.json: 'id' must be an integer"),
    ],
)
def test_malformed_tables_name_file_field_and_entry(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _load(tmp_path, **data)


def test_duplicate_ids_are_refused_with_the_first_few_and_a_count(tmp_path: Path) -> None:
    images = [_image(i) for i in (9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3)]  # 9..3 twice: 7 repeated ids
    with pytest.raises(ValueError, match=r"ann.json has duplicate image ids: 3, 4, 5, 6, 7, \.\.\. \(7 id\(s\) used"):
        _load(tmp_path, images=images)
    with pytest.raises(ValueError, match=r"ann.json has duplicate category ids: 1 \(1 id\(s\) used more than once\)"):
        _load(tmp_path, categories=[{"id": 1, "name": "cat"}, {"id": 2}, {"id": 1, "name": "dog"}])
    annotations = [_ann(4, [1, 1, 5, 5]), _ann(2, [2, 2, 5, 5]), _ann(4, [3, 3, 5, 5])]
    with pytest.raises(ValueError, match=r"ann.json has duplicate annotation ids: 4 \(1 id\(s\)"):
        _load(tmp_path, annotations=annotations)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image_id": "1"}, "image_id must be an integer, got '1'"),
        ({"category_id": "1"}, "category_id must be an integer, got '1'"),
        ({"image_id": True}, "image_id must be an integer, got True"),
        ({"category_id": 5}, r"category_id 5 is not in the categories list \[1\]"),
        ({"bbox": [1, 1, 5, True]}, r"bbox must be a list of 4 finite numbers \[x, y, w, h\], got \[1, 1, 5, True\]"),
        ({"bbox": "1 1 5 5"}, r"bbox must be a list of 4 finite numbers \[x, y, w, h\], got '1 1 5 5'"),
        (
            {"bbox": [1, 1, 5, float("nan")]},
            r"bbox must be a list of 4 finite numbers \[x, y, w, h\], got \[1, 1, 5, nan\]",
        ),
        ({"iscrowd": "0"}, "iscrowd must be 0 or 1, got '0'"),
        ({"area": "25"}, "area must be a finite number >= 0, got '25'"),
        ({"area": -3}, "area must be a finite number >= 0, got -3"),
    ],
)
def test_invalid_annotation_fields_name_the_annotation(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    annotations = [_ann(1, [1, 1, 5, 5]), {**_ann(7, [2, 2, 5, 5]), **bad}]
    with pytest.raises(ValueError, match=f"annotation 7: {message} \\(in .*ann.json; skip_invalid=True drops it\\)"):
        _load(tmp_path, annotations=annotations)


@pytest.mark.parametrize("key", ["image_id", "category_id", "bbox"])
def test_missing_annotation_fields(tmp_path: Path, key: str) -> None:
    incomplete = {k: v for k, v in _ann(7, [2, 2, 5, 5]).items() if k != key}
    with pytest.raises(ValueError, match=f"annotation 7: lacks '{key}' \\(in .*ann.json"):
        _load(tmp_path, annotations=[_ann(1, [1, 1, 5, 5]), incomplete])


def test_dropped_and_clipped_boxes_are_counted_and_targets_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # x, y in [-30, 60) and w, h in [-5, 25): some boxes degenerate, some outside, some across the border
    xywh = np.concatenate([rng.uniform(-30, 60, (60, 2)), rng.uniform(-5, 25, (60, 2))], axis=1).round(1)
    annotations = [_ann(k, box.tolist()) for k, box in enumerate(xywh)]
    x0, y0 = np.clip(xywh[:, 0], 0, W), np.clip(xywh[:, 1], 0, H)
    x1, y1 = np.clip(xywh[:, 0] + xywh[:, 2], 0, W), np.clip(xywh[:, 1] + xywh[:, 3], 0, H)
    degenerate = (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
    outside = ~degenerate & ((x1 <= x0) | (y1 <= y0))
    kept = ~degenerate & ~outside
    crossing = kept & (
        (xywh[:, 0] < -1) | (xywh[:, 1] < -1) | (xywh[:, 0] + xywh[:, 2] > W + 1) | (xywh[:, 1] + xywh[:, 3] > H + 1)
    )
    assert degenerate.sum() and outside.sum() and crossing.sum() and kept.sum()  # the data covers every case
    with pytest.warns(UserWarning) as caught:
        ds = _load(tmp_path, annotations=annotations)
    file = tmp_path / "ann.json"
    assert [str(w.message) for w in caught] == [
        f"dropped {(~kept).sum()} of 60 boxes in {file}: {degenerate.sum()} with zero or negative width/height, "
        f"{outside.sum()} entirely outside their image",
        f"clipped {crossing.sum()} of 60 boxes in {file} to their image (they extended beyond it by more than 1 pixel)",
    ]
    _, target = ds[0]
    expected = np.stack([x0, y0, x1, y1], axis=1)[kept]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(target["area"], torch.tensor(xywh[kept, 2] * xywh[kept, 3], dtype=torch.float32))


def test_a_file_without_a_usable_box_is_refused(tmp_path: Path) -> None:
    annotations = [
        _ann(1, [1, 1, 0, 5]),
        _ann(2, [3, 3, 5, -1]),
        _ann(3, [50, 1, 5, 5]),
        _ann(4, [1, 1, 5, 5], iscrowd=1),
    ]
    expected = (
        r"no usable box in .*ann.json \(4 annotation\(s\): 0 invalid and skipped, 1 crowd \(iscrowd=1\), 2 with zero "
        r"or negative width/height, 1 entirely outside their image\); there is nothing to train or evaluate on"
    )
    with pytest.warns(UserWarning, match="dropped 3 of 3 boxes"), pytest.raises(ValueError, match=expected):
        _load(tmp_path, annotations=annotations)
    with pytest.raises(ValueError, match="ann.json has no annotations; there is nothing to train or evaluate on"):
        _load(tmp_path, annotations=[])
    skipped = [{"id": 1, "image_id": 1, "category_id": 1}]
    with (
        pytest.warns(UserWarning, match=re.escape("skipped 1 invalid annotation(s)")),
        pytest.raises(ValueError, match=r"no usable box .*\(1 annotation\(s\): 1 invalid and skipped"),
    ):
        CocoDetection(tmp_path, _write(tmp_path, annotations=skipped), skip_invalid=True)
