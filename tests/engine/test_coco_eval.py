"""Our COCO helper gives the numbers of pycocotools run directly on the same json files."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deformvision.engine.coco_eval import STAT_NAMES, detections_to_coco, evaluate_coco

CATEGORY_IDS = (1, 3, 7)  # non-contiguous, as COCO's


def _synthetic(tmp_path, seed: int = 0):
    """A ground truth of 6 images (small, medium and large boxes, a crowd box) and noisy detections of it."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 640, "height": 480})
        for _ in range(rng.integers(1, 6)):
            side = float(rng.choice([20, 60, 200]))  # small / medium / large area ranges
            x, y = rng.uniform(0, 640 - side), rng.uniform(0, 480 - side)
            box = [x, y, side * rng.uniform(0.7, 1.3), side]
            category = int(rng.choice(CATEGORY_IDS))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.8:  # a detection near the object, sometimes with the wrong class
                noisy = [v + rng.normal(0, 0.08 * side) for v in box[:2]] + [v * rng.uniform(0.8, 1.2) for v in box[2:]]
                label = category if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
                detections.append(
                    {"image_id": image_id, "category_id": label, "bbox": noisy, "score": float(rng.uniform(0.3, 1.0))}
                )
        for _ in range(rng.integers(0, 4)):  # false positives
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [*rng.uniform(0, 400, 2).tolist(), 50.0, 40.0],
                    "score": float(rng.uniform(0, 0.6)),
                }
            )
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 300, 300],
            "area": 90000.0,
            "iscrowd": 1,
        }
    )
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "detections.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    dt_path.write_text(json.dumps(detections))
    return gt_path, dt_path


def _direct(gt_path, dt_path) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        coco_eval = COCOeval(gt, gt.loadRes(str(dt_path)), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_same_12_numbers_as_pycocotools(tmp_path, capsys, seed):
    gt_path, dt_path = _synthetic(tmp_path, seed)
    expected = _direct(gt_path, dt_path)
    assert 0.05 < expected[0] < 0.95  # a non-trivial case
    stats, summary = evaluate_coco(gt_path, dt_path)
    assert list(stats) == list(STAT_NAMES)
    assert np.array_equal(np.array(list(stats.values())), expected)
    printed = capsys.readouterr().out
    assert printed == summary and len(summary.strip().splitlines()) == 12
    assert summary.startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")
    # from the loaded list, too
    stats_from_list, _ = evaluate_coco(COCO(str(gt_path)), json.loads(dt_path.read_text()), verbose=False)
    assert stats_from_list == stats


def test_no_detections_gives_zero_ap(tmp_path):
    gt_path, _ = _synthetic(tmp_path)
    stats, _ = evaluate_coco(gt_path, [], verbose=False)
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_detections_to_coco_converts_boxes_and_labels():
    results = [
        {
            "scores": torch.tensor([0.9, 0.5]),
            "labels": torch.tensor([2, 0]),
            "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 8.0]]),
        }
    ]
    entries = detections_to_coco([42], results, dict(enumerate(CATEGORY_IDS)))
    assert entries == [
        {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 8.0], "score": 0.5},
    ]
    assert detections_to_coco([1], results)[0]["category_id"] == 2  # labels already category ids
