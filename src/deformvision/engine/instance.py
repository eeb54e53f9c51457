"""Object detection and instance segmentation with torchvision-style detectors (RetinaNet, Mask R-CNN, Cascade).

The model contract is torchvision's: in training ``model(images, targets)`` returns a dict of named
losses; in evaluation ``model(images)`` returns per image ``{"boxes" (N, 4) xyxy pixels, "labels"
(N,), "scores" (N,)[, "masks" (N, 1, H, W) probabilities]}`` in the input image's pixels. Images are a
list of ``(3, H, W)`` float tensors in ``[0, 1]`` (the model resizes and normalises them), targets
``{"boxes", "labels" (0 .. K - 1), "masks" (N, H, W) uint8}``, as
:func:`~deformvision.data.build_instance_transforms` makes them.
"""

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deformvision.engine.coco_eval import STAT_NAMES, detections_to_coco, evaluate_coco_iou_types
from deformvision.engine.distributed import broadcast_object, gather_objects, is_main_process

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


def collate_instances(samples: list[tuple[Tensor, dict[str, Tensor]]]) -> Batch:
    """A list of ``(image, target)`` samples as ``(images, targets)`` lists (images keep their sizes)."""
    images, targets = zip(*samples, strict=True)
    return list(images), list(targets)


class InstanceTask:
    """How a torchvision-style detector is trained and evaluated.

    Training: the sum of the model's losses (each one logged). Evaluation: the model's detections,
    converted to COCO results (boxes, and RLE masks when the model predicts masks), gathered on rank 0
    and scored with pycocotools: ``bbox_AP`` ... ``bbox_ARl`` and ``segm_AP`` ... ``segm_ARl``.

    Args:
        annotation_file: the evaluation set's COCO json.
        label_to_category_id: label -> COCO category id (``None``: labels are category ids).
        masks: whether the model predicts masks (then ``segm`` is scored too).
    """

    def __init__(
        self, annotation_file: str | Path, label_to_category_id: Mapping[int, int] | None = None, masks: bool = True
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.label_to_category_id = dict(label_to_category_id) if label_to_category_id is not None else None
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)

    def batch_size(self, batch: Batch) -> int:
        return len(batch[0])

    def train_loss(
        self, model: nn.Module, batch: Batch, device: torch.device, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The summed loss and every named loss of the model (``loss_classifier``, ``loss_mask``, ...)."""
        images, targets = batch
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device) for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in targets]
        losses = {name: value.float() for name, value in model(images, targets).items()}
        loss = sum(losses.values())
        return loss, {"loss": loss.detach(), **{name: value.detach() for name, value in losses.items()}}

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> list[dict[str, Any]]:
        """COCO results of this process's images."""
        was_training = model.training
        model.eval()
        entries: list[dict[str, Any]] = []
        for images, targets in loader:
            with autocast():
                outputs = model([image.to(device, non_blocking=True) for image in images])
            results = [
                {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()} for out in outputs
            ]
            image_ids = [int(t["image_id"]) for t in targets]
            entries += detections_to_coco(image_ids, results, self.label_to_category_id)
        model.train(was_training)
        return entries

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """``bbox_AP`` ... and ``segm_AP`` ... (fractions in [0, 1]) on every process."""
        gathered = gather_objects(self.predict(model, loader, device, autocast))
        metrics = None
        if is_main_process():
            detections = [entry for part in gathered for entry in part]
            results = evaluate_coco_iou_types(self.annotation_file, detections, self.iou_types)
            metrics = {
                f"{iou_type}_{name}": float(stats[name])
                for iou_type, (stats, _) in results.items()
                for name in STAT_NAMES
            }
        return broadcast_object(metrics)
