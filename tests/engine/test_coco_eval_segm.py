"""COCO mask evaluation: our helper gives the numbers of pycocotools run directly on the same files."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deformvision.engine.coco_eval import (
    STAT_NAMES,
    detections_to_coco,
    evaluate_coco,
    evaluate_coco_iou_types,
    masks_to_rle,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' decode

CATEGORY_IDS = (2, 5)
H, W = 120, 160


def _polygon_mask(polygon: list[float]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], H, W)))


def _synthetic(tmp_path: Path, seed: int) -> tuple[Path, Path, list[dict]]:
    """Ground truth of 5 images with polygon objects (rectangles and triangles of three sizes, one crowd
    RLE), and model outputs (per image ``boxes``, ``scores``, ``labels``, soft ``masks``) near them.

    Returns the ground-truth file, a segm-only results file for pycocotools and our COCO entries.
    """
    rng = np.random.default_rng(seed)
    images, annotations, outputs = [], [], []
    for image_id in range(1, 6):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": W, "height": H})
        boxes, scores, labels, masks = [], [], [], []
        for _ in range(rng.integers(1, 5)):
            side = float(rng.choice([10, 40, 110]))  # small / medium / large areas
            x, y = rng.uniform(0, W - side), rng.uniform(0, H - side)
            if rng.random() < 0.5:
                polygon = [x, y, x + side, y, x + side, y + side * 0.8, x, y + side * 0.8]
            else:
                polygon = [x, y, x + side, y + side * 0.9, x, y + side * 0.9]
            mask = _polygon_mask(polygon)
            if mask.sum() == 0:
                continue
            category = int(rng.choice(CATEGORY_IDS))
            bbox = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask))).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": [polygon],
                    "area": float(mask.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.85:  # a detection: the mask shifted and eroded or dilated, soft values
                dy, dx = rng.integers(-2, 3, 2)
                soft = np.roll(mask.astype(np.float32), (dy, dx), (0, 1)) * rng.uniform(0.55, 1.0)
                soft += rng.uniform(0, 0.6, soft.shape) * (rng.random(soft.shape) < 0.02)  # speckle
                masks.append(torch.from_numpy(soft)[None])
                x0, y0, w, h = bbox
                boxes.append([x0 + dx, y0 + dy, x0 + dx + w, y0 + dy + h])
                label = CATEGORY_IDS.index(category) if rng.random() < 0.9 else int(rng.integers(2))
                labels.append(label)
                scores.append(float(rng.uniform(0.3, 1.0)))
        for _ in range(rng.integers(0, 3)):  # false positives
            fp = np.zeros((H, W), np.float32)
            x0, y0 = rng.integers(0, 100, 2)
            fp[y0 : y0 + 20, x0 : x0 + 30] = 0.9
            masks.append(torch.from_numpy(fp)[None])
            boxes.append([float(x0), float(y0), x0 + 30.0, y0 + 20.0])
            labels.append(int(rng.integers(2)))
            scores.append(float(rng.uniform(0, 0.5)))
        outputs.append(
            {
                "boxes": torch.tensor(boxes).reshape(-1, 4),
                "scores": torch.tensor(scores),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.stack(masks) if masks else torch.zeros(0, 1, H, W),
            }
        )
    crowd = np.zeros((H, W), np.uint8)
    crowd[:30, :30] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 1,
            "area": 900.0,
            "bbox": [0, 0, 30, 30],
            "segmentation": {"size": [H, W], "counts": crowd_rle["counts"].decode()},
        }
    )
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    entries = detections_to_coco(range(1, 6), outputs, dict(enumerate(CATEGORY_IDS)))
    # the results file pycocotools reads directly: masks only, RLE from pycocotools' own encoder
    direct = []
    for image_id, output in zip(range(1, 6), outputs, strict=True):
        binary = np.asfortranarray((output["masks"][:, 0] > 0.5).numpy().astype(np.uint8).transpose(1, 2, 0))
        for rle, score, label in zip(
            mask_utils.encode(binary), output["scores"].tolist(), output["labels"].tolist(), strict=True
        ):
            direct.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "score": score,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    dt_path = tmp_path / "segm.json"
    dt_path.write_text(json.dumps(direct))
    return gt_path, dt_path, entries


def _direct(gt_path: Path, results: Path | list, iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        loaded = gt.loadRes(str(results) if isinstance(results, Path) else results)
        coco_eval = COCOeval(gt, loaded, iouType=iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_segm_numbers_equal_pycocotools(tmp_path: Path, seed: int) -> None:
    gt_path, dt_path, entries = _synthetic(tmp_path, seed)
    expected = _direct(gt_path, dt_path, "segm")
    assert 0.05 < expected[0] < 0.95 and (expected[3:6] > 0).all()  # non-trivial, all three sizes present
    stats, summary = evaluate_coco(gt_path, entries, iou_type="segm", verbose=False)
    assert list(stats) == list(STAT_NAMES) and np.array_equal(np.array(list(stats.values())), expected)
    assert len(summary.strip().splitlines()) == 12
    # the entries as a json file, too (what the engine writes)
    (tmp_path / "entries.json").write_text(json.dumps(entries))
    assert evaluate_coco(gt_path, tmp_path / "entries.json", iou_type="segm", verbose=False)[0] == stats


def test_bbox_and_segm_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, dt_path, entries = _synthetic(tmp_path, 0)
    both = evaluate_coco_iou_types(gt_path, entries)
    assert list(both) == ["bbox", "segm"]
    boxes_only = [{k: v for k, v in e.items() if k != "segmentation"} for e in entries]
    assert np.array_equal(np.array(list(both["bbox"][0].values())), _direct(gt_path, boxes_only, "bbox"))
    assert np.array_equal(np.array(list(both["segm"][0].values())), _direct(gt_path, dt_path, "segm"))
    printed = capsys.readouterr().out
    assert printed == f"IoU metric: bbox\n{both['bbox'][1]}IoU metric: segm\n{both['segm'][1]}"
    assert evaluate_coco_iou_types(gt_path, [], ("segm",), verbose=False)["segm"][0]["AP"] == 0.0


def test_masks_to_rle_round_trip() -> None:
    soft = torch.rand(3, 1, 17, 23, generator=torch.Generator().manual_seed(0))
    soft[1] = 0.5  # exactly the threshold: outside
    rles = masks_to_rle(soft)
    assert all(isinstance(r["counts"], str) and r["size"] == [17, 23] for r in rles)
    for rle, mask in zip(rles, soft[:, 0], strict=True):
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded, (mask > 0.5).numpy().astype(np.uint8))
    assert masks_to_rle(torch.zeros(0, 5, 6)) == []
    with pytest.raises(ValueError, match="masks must be"):
        masks_to_rle(torch.zeros(5, 6))


def test_segm_errors(tmp_path: Path) -> None:
    gt_path, _, entries = _synthetic(tmp_path, 0)
    with pytest.raises(ValueError, match="iou_type must be one of"):
        evaluate_coco(gt_path, entries, iou_type="keypoints")
    boxes_only = [{k: v for k, v in e.items() if k != "segmentation"} for e in entries]
    with pytest.raises(ValueError, match="detection 0 has none"):
        evaluate_coco(gt_path, boxes_only, iou_type="segm")
    data = json.loads(gt_path.read_text())
    del data["annotations"][2]["segmentation"]
    gt_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="ground-truth annotation 3 has none"):
        evaluate_coco(gt_path, entries, iou_type="segm")
