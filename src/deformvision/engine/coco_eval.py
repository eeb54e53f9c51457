"""COCO box and mask evaluation with pycocotools: the 12 standard AP/AR numbers per IoU type.

Detections are COCO results: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
(absolute pixels of the original image), with ``"segmentation"`` (an RLE whose ``counts`` is a str)
for instance masks, as written by :func:`detections_to_coco` from the post-processed model outputs, or
a json file of such a list. :func:`evaluate_coco` scores one IoU type (``"bbox"`` or ``"segm"``),
:func:`evaluate_coco_iou_types` several on the same files.
"""

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Names of COCOeval.stats, in order (what COCOeval.summarize prints line by line).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def masks_to_rle(masks: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO RLEs of instance masks, for json: ``[{"size": [H, W], "counts": str}, ...]``.

    Args:
        masks: ``(k, H, W)`` or ``(k, 1, H, W)`` (torchvision's Mask R-CNN output), probabilities or
            0/1 values; a pixel is in the mask where its value is ``> threshold``.
        threshold: the binarisation threshold (0.5, as torchvision's and Detectron2's evaluation).
    """
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (k, H, W) or (k, 1, H, W), got shape {tuple(masks.shape)}")
    binary = (masks.detach().cpu() > threshold).numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


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
            :class:`~deformvision.models.deformable_detr.PostProcess` returns with the original sizes),
            optionally ``masks`` ``(k, H, W)`` or ``(k, 1, H, W)`` of the original image, binarised at
            0.5 (:func:`masks_to_rle`) into each entry's ``segmentation``.
        label_to_category_id: contiguous label -> COCO category id (``None``: labels are category ids).
            Detections of labels it does not map (a head larger than the dataset's categories) are dropped.

    Returns:
        One dict per detection with ``bbox`` ``[x, y, w, h]`` (and ``segmentation`` with masks).
    """
    entries = []
    for image_id, result in zip(image_ids, results, strict=True):
        boxes = result["boxes"].detach().float().cpu()
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
        rles = masks_to_rle(result["masks"]) if "masks" in result else [None] * len(xywh)
        rows = zip(xywh, result["scores"].tolist(), result["labels"].tolist(), rles, strict=True)
        for box, score, label, rle in rows:
            category = label_to_category_id.get(label) if label_to_category_id is not None else label
            if category is None:
                continue
            entry = {"image_id": int(image_id), "category_id": int(category), "bbox": box, "score": score}
            if rle is not None:
                entry["segmentation"] = rle
            entries.append(entry)
    return entries


def _load_detections(ground_truth: COCO, detections: list[dict[str, Any]]) -> COCO:
    """``ground_truth.loadRes(detections)``, which pycocotools cannot do for an empty list."""
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return ground_truth.loadRes(copy.deepcopy(detections))  # loadRes adds keys to the dicts
    empty = COCO()
    empty.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "annotations": [],
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _for_iou_type(ground_truth: COCO, detections: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """The detections to load for ``iou_type``, checked; for ``"segm"`` without ``bbox`` (else
    pycocotools' ``loadRes`` takes a detection's area from its box, as Detectron2 notes)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if iou_type == "bbox":
        return detections
    for ann in ground_truth.dataset.get("annotations", []):
        if "segmentation" not in ann:
            raise ValueError(
                f"iou_type='segm' needs segmentations, but ground-truth annotation {ann.get('id')} has none"
            )
    for i, detection in enumerate(detections):
        if "segmentation" not in detection:
            raise ValueError(f"iou_type='segm' needs segmentations, but detection {i} has none")
    return [{k: v for k, v in detection.items() if k != "bbox"} for detection in detections]


def _load_ground_truth(ground_truth: str | Path | COCO) -> COCO:
    if isinstance(ground_truth, COCO):
        return ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ground_truth))


def evaluate_coco(
    ground_truth: str | Path | COCO,
    detections: str | Path | list[dict[str, Any]],
    image_ids: Iterable[int] | None = None,
    verbose: bool = True,
    iou_type: str = "bbox",
) -> tuple[dict[str, float], str]:
    """Run ``COCOeval`` for ``iou_type`` and return the 12 standard numbers and the summary text.

    Args:
        ground_truth: a COCO annotation file or a loaded :class:`COCO` (with ``segmentation`` for
            ``"segm"``).
        detections: COCO results (list or json file).
        image_ids: evaluate only these images (default: every image of the ground truth).
        verbose: print the 12-line summary (pycocotools' progress messages are never printed).
        iou_type: ``"bbox"`` (boxes) or ``"segm"`` (masks: each detection's ``segmentation``; its
            ``bbox`` is left out so that the detection's area is its mask's).

    Returns:
        ``({name: value for name in STAT_NAMES}, summary)``; ``-1`` where a number is undefined (no
        ground-truth object of that size), as pycocotools.

    Raises:
        ValueError: for an unknown ``iou_type``, or for ``"segm"`` when a ground-truth annotation
            (named by id) or a detection (by index) has no ``segmentation``.
    """
    ground_truth = _load_ground_truth(ground_truth)
    if not isinstance(detections, list):
        detections = json.loads(Path(detections).read_text())
    detections = _for_iou_type(ground_truth, detections, iou_type)
    coco_eval = COCOeval(ground_truth, _load_detections(ground_truth, detections), iouType=iou_type)
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


def evaluate_coco_iou_types(
    ground_truth: str | Path | COCO,
    detections: str | Path | list[dict[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    image_ids: Iterable[int] | None = None,
    verbose: bool = True,
) -> dict[str, tuple[dict[str, float], str]]:
    """:func:`evaluate_coco` for each of ``iou_types`` on the same ground truth and detections (each
    read once): ``{iou_type: (stats, summary)}``. With ``verbose``, each summary is printed after a
    line ``IoU metric: <type>``.
    """
    ground_truth = _load_ground_truth(ground_truth)
    if not isinstance(detections, list):
        detections = json.loads(Path(detections).read_text())
    image_ids = None if image_ids is None else list(image_ids)
    results = {}
    for iou_type in iou_types:
        if verbose:
            print(f"IoU metric: {iou_type}")
        results[iou_type] = evaluate_coco(ground_truth, detections, image_ids, verbose, iou_type)
    return results
