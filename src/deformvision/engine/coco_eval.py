"""COCO box evaluation with pycocotools: the 12 standard AP/AR numbers.

Detections are COCO results: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
(absolute pixels of the original image), as written by :func:`detections_to_coco` from the
post-processed model outputs, or a json file of such a list.
"""

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Names of COCOeval.stats, in order (what COCOeval.summarize prints line by line).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(
    image_ids: Iterable[int],
    results: Iterable[Mapping[str, torch.Tensor]],
    label_to_category_id: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """COCO result entries from post-processed detections.

    Args:
        image_ids: the COCO image id of each result.
        results: per image ``scores`` ``(k,)``, ``labels`` ``(k,)`` contiguous labels and ``boxes``
            ``(k, 4)`` absolute ``(x0, y0, x1, y1)`` in the original image (what
            :class:`~deformvision.models.deformable_detr.PostProcess` returns with the original sizes).
        label_to_category_id: contiguous label -> COCO category id (``None``: labels are category ids).
            Detections of labels it does not map (a head larger than the dataset's categories) are dropped.

    Returns:
        One dict per detection with ``bbox`` ``[x, y, w, h]``.
    """
    entries = []
    for image_id, result in zip(image_ids, results, strict=True):
        boxes = result["boxes"].detach().float().cpu()
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
        for box, score, label in zip(xywh, result["scores"].tolist(), result["labels"].tolist(), strict=True):
            category = label_to_category_id.get(label) if label_to_category_id is not None else label
            if category is None:
                continue
            entries.append({"image_id": int(image_id), "category_id": int(category), "bbox": box, "score": score})
    return entries


def _load_detections(ground_truth: COCO, detections: list[dict[str, Any]]) -> COCO:
    """``ground_truth.loadRes(detections)``, which pycocotools cannot do for an empty list."""
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return ground_truth.loadRes(copy.deepcopy(detections))  # loadRes adds keys to the dicts
    empty = COCO()
    empty.dataset = {"images": list(ground_truth.dataset["images"]), "annotations": [],
                     "categories": copy.deepcopy(ground_truth.dataset["categories"])}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate_coco(
    ground_truth: str | Path | COCO,
    detections: str | Path | list[dict[str, Any]],
    image_ids: Iterable[int] | None = None,
    verbose: bool = True,
) -> tuple[dict[str, float], str]:
    """Run ``COCOeval`` (``iouType="bbox"``) and return the 12 standard numbers and the summary text.

    Args:
        ground_truth: a COCO annotation file or a loaded :class:`COCO`.
        detections: COCO results (list or json file).
        image_ids: evaluate only these images (default: every image of the ground truth).
        verbose: print the 12-line summary (pycocotools' progress messages are never printed).

    Returns:
        ``({name: value for name in STAT_NAMES}, summary)``; ``-1`` where a number is undefined (no
        ground-truth object of that size), as pycocotools.
    """
    if not isinstance(ground_truth, COCO):
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(ground_truth))
    if not isinstance(detections, list):
        detections = json.loads(Path(detections).read_text())
    coco_eval = COCOeval(ground_truth, _load_detections(ground_truth, detections), iouType="bbox")
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(set(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    if verbose:
        print(summary.getvalue(), end="")
    return dict(zip(STAT_NAMES, (float(v) for v in coco_eval.stats), strict=True)), summary.getvalue()
