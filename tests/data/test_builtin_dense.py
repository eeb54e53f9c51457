"""Built-in digits instance and semantic sets: masks on the ink, inside their boxes; label maps right."""

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deformvision.data import CocoDetection, SegmentationFolder
from deformvision.data.builtin import (
    DIGITS_SEMANTIC_CLASSES,
    build_digits_detection,
    build_digits_instance,
    build_digits_semantic,
)

pytest.importorskip("sklearn")
ARGS = {"num_train": 24, "num_val": 8, "seed": 2}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("digits_dense")
    return {
        "detection": build_digits_detection(base / "det", **ARGS),
        "instance": build_digits_instance(base / "inst", **ARGS),
        "semantic": build_digits_semantic(base / "sem", **ARGS),
    }


def _ink_distance(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per pixel, the largest channel difference to the background colour."""
    return np.abs(pixels.astype(int) - background.astype(int)).max(-1)


def _background(pixels: np.ndarray, boxes: list[list[int]]) -> np.ndarray:
    """The colour of a pixel outside every box (the background is one colour)."""
    outside = np.ones(pixels.shape[:2], bool)
    for x, y, w, h in boxes:
        outside[y : y + h, x : x + w] = False
    return pixels[tuple(np.argwhere(outside)[0])]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_instance_set_is_the_detection_set_plus_masks(roots: dict[str, Path]) -> None:
    for split in ("train", "val"):
        det = json.loads((roots["detection"] / "annotations" / f"{split}.json").read_text())
        inst = json.loads((roots["instance"] / "annotations" / f"{split}.json").read_text())
        assert inst["images"] == det["images"] and inst["categories"] == det["categories"]
        assert [(a["id"], a["image_id"], a["category_id"], a["bbox"]) for a in inst["annotations"]] == [
            (a["id"], a["image_id"], a["category_id"], a["bbox"]) for a in det["annotations"]
        ]
        assert all(isinstance(a["segmentation"]["counts"], str) for a in inst["annotations"])
        images = roots["instance"] / split / "images"
        assert _hashes(images) == _hashes(roots["detection"] / split / "images")


def test_masks_lie_in_their_boxes_and_cover_the_ink(roots: dict[str, Path]) -> None:
    root = roots["instance"]
    coco = json.loads((root / "annotations" / "train.json").read_text())
    ds = CocoDetection(root / "train" / "images", root / "annotations" / "train.json", masks=True, num_classes=10)
    for index in range(8):
        image_id = ds.image_ids[index]
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        _, target = ds[index]
        masks = target["masks"].numpy()
        assert masks.shape == (len(anns), 128, 128) and [m.sum() for m in masks] == [a["area"] for a in anns]
        for mask, ann in zip(masks, anns, strict=True):
            x, y, w, h = ann["bbox"]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]] == [x, y, w, h]  # tight box
        pixels = np.array(Image.open(root / "train" / "images" / f"{image_id:05d}.png"))
        distance = _ink_distance(pixels, _background(pixels, [a["bbox"] for a in anns]))
        union = masks.any(0)
        # ink colour differs from the background by 91..255 per channel: opacity > 0.25 shows as > 65
        assert union[distance > 65].all()
        assert (distance[union] >= 22).all()  # opacity >= 0.25 of a difference >= 91


def test_ground_truth_masks_score_ap_one(roots: dict[str, Path]) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(roots["instance"] / "annotations" / "val.json"))
        detections = [{k: v for k, v in a.items() if k != "bbox"} | {"score": 1.0} for a in gt.dataset["annotations"]]
        evaluator = COCOeval(gt, gt.loadRes(detections), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_semantic_label_maps(roots: dict[str, Path]) -> None:
    assert DIGITS_SEMANTIC_CLASSES == ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    root = roots["semantic"]
    coco = json.loads((roots["instance"] / "annotations" / "val.json").read_text())
    instance = CocoDetection(
        roots["instance"] / "val" / "images", roots["instance"] / "annotations" / "val.json", masks=True
    )
    ds = SegmentationFolder(root / "val" / "images", root / "val" / "labels", num_classes=11)
    assert len(ds) == 8 and [p.name for p, _ in ds.samples] == [f"{i:05d}.png" for i in range(1, 9)]
    seen = set()
    for index in range(len(ds)):
        _, label = ds[index]
        label = label.numpy()
        seen |= set(np.unique(label).tolist())
        _, target = instance[index]
        expected = np.zeros((128, 128), np.int64)
        for mask, digit in zip(target["masks"].numpy(), target["labels"].tolist(), strict=True):
            expected[mask == 1] = digit + 1
        assert np.array_equal(label, expected)
        pixels = np.array(Image.open(ds.samples[index][0]))
        anns = [a for a in coco["annotations"] if a["image_id"] == index + 1]
        distance = _ink_distance(pixels, _background(pixels, [a["bbox"] for a in anns]))
        assert (label[distance == 0] == 0).all() and (label[distance > 65] > 0).all()
        for ann in anns:  # inside each box, only background and that box's digit
            x, y, w, h = ann["bbox"]
            assert set(np.unique(label[y : y + h, x : x + w]).tolist()) == {0, ann["category_id"] + 1}
    assert 0 in seen and 255 not in seen and len(seen) > 5


def test_deterministic_and_marked(roots: dict[str, Path], tmp_path: Path) -> None:
    assert _hashes(build_digits_semantic(tmp_path / "sem", **ARGS)) == _hashes(roots["semantic"])
    assert build_digits_instance(roots["instance"], **ARGS) == roots["instance"]
    with pytest.raises(ValueError, match="built with"):
        build_digits_instance(roots["instance"], num_train=5, num_val=2)
    with pytest.raises(ValueError, match="object_size must be"):
        build_digits_semantic(tmp_path / "bad", object_size=(10, 200))
