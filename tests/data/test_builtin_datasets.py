"""Built-in digits datasets: deterministic, idempotent, plausible, readable by our datasets and pycocotools."""

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from deformvision.data import CocoDetection, ImageFolder, build_digits_classification, build_digits_detection
from deformvision.data.builtin import MARKER, _load_digits, split_digits

pytest.importorskip("sklearn")


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits_detection(tmp_path_factory.mktemp("digits") / "det", num_train=60, num_val=20)


def test_split_is_stratified_and_disjoint() -> None:
    _, labels = _load_digits()
    train, val = split_digits(labels, seed=0)
    assert len(train) == 1438 and len(val) == 359
    assert not set(train) & set(val) and len(set(train) | set(val)) == 1797
    assert all(34 <= (labels[val] == d).sum() <= 37 for d in range(10))
    assert not np.array_equal(val, split_digits(labels, seed=1)[1])


def test_classification_build(tmp_path: Path) -> None:
    root = build_digits_classification(tmp_path / "a", img_size=16)
    train, val = ImageFolder(root / "train"), ImageFolder(root / "val")
    assert train.classes == [str(d) for d in range(10)] and len(train) == 1438 and len(val) == 359
    assert train[0][0].size == (16, 16) and train[0][0].mode == "RGB"
    names = {p.name for p, _ in train.samples}
    assert not names & {p.name for p, _ in val.samples}  # files are named by source index
    assert _hashes(root) == _hashes(build_digits_classification(tmp_path / "b", img_size=16))
    mtime = (root / MARKER).stat().st_mtime_ns
    assert build_digits_classification(root, img_size=16) == root and (root / MARKER).stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="built with"):
        build_digits_classification(root, img_size=24)


def test_detection_deterministic_and_idempotent(detection: Path, tmp_path: Path) -> None:
    again = build_digits_detection(tmp_path / "det", num_train=60, num_val=20)
    assert _hashes(detection) == _hashes(again)
    assert build_digits_detection(detection, num_train=60, num_val=20) == detection
    other = build_digits_detection(tmp_path / "other", num_train=60, num_val=20, seed=1)
    assert (detection / "annotations" / "train.json").read_text() != (other / "annotations" / "train.json").read_text()
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        build_digits_detection(tmp_path / "occupied", num_train=2, num_val=2)


@pytest.mark.parametrize("split, count", [("train", 60), ("val", 20)])
def test_detection_statistics(detection: Path, split: str, count: int) -> None:
    coco = json.loads((detection / "annotations" / f"{split}.json").read_text())
    assert len(coco["images"]) == count and [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
    boxes = np.array([a["bbox"] for a in coco["annotations"]], dtype=float)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 128).all() and (boxes[:, 2:] >= 1).all()
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=count + 1)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6 and per_image.mean() > 2
    longer = boxes[:, 2:].max(1)
    assert longer.min() < 12 and longer.max() > 30 and (longer < 16).mean() > 0.2  # small objects present
    assert len({a["category_id"] for a in coco["annotations"]}) == 10 or split == "val"
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(boxes) + 1))


def test_boxes_are_tight_around_ink(detection: Path) -> None:
    ds = CocoDetection(detection / "train" / "images", detection / "annotations" / "train.json", num_classes=10)
    for index in range(5):
        image, target = ds[index]
        ink = (image - image[:, :1, :1]).abs().amax(0) > 0.02  # the background is one colour
        outside = ink.clone()
        for cx, cy, w, h in (target["boxes"] * 128).tolist():
            x0, y0, x1, y1 = round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)
            box = ink[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # every edge touches ink
            outside[y0:y1, x0:x1] = False
        assert not outside.any()  # no ink outside the boxes


def test_pycocotools_reads_and_scores_ground_truth(detection: Path) -> None:
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(detection / "annotations" / "val.json"))
        detections = [{**a, "score": 1.0} for a in gt.dataset["annotations"]]
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert len(gt.getImgIds()) == 20 and gt.getCatIds() == list(range(10))
    assert evaluator.stats[0] == pytest.approx(1.0)  # AP@[.5:.95] of the ground truth itself
