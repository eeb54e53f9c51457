"""Object detection (Deformable DETR): the set-prediction loss and COCO evaluation.

The detector contract: ``model(images (B, 3, H, W), mask (B, H, W) bool, True = padding)`` returns
``{"pred_logits" (B, Q, K), "pred_boxes" (B, Q, 4), "aux_outputs"?, "enc_outputs"?}`` with boxes
normalised ``(cx, cy, w, h)`` relative to each unpadded image; targets carry ``labels`` ``(n,)`` int64
and ``boxes`` ``(n, 4)`` in the same convention (:func:`~deformvision.data.collate_detection` batches).
"""

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deformvision.engine.coco_eval import detections_to_coco, evaluate_coco
from deformvision.engine.distributed import broadcast_object, gather_objects, is_main_process
from deformvision.models.deformable_detr import PostProcess, SetCriterion

Batch = tuple[Tensor, Tensor, list[dict[str, Tensor]]]
LOGGED_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")


def _to_float(outputs: Any) -> Any:
    """The output structure with every floating tensor in float32 (losses are computed in fp32)."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, Mapping):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list | tuple):
        return type(outputs)(_to_float(v) for v in outputs)
    return outputs


class DetectionTask:
    """How a Deformable DETR detector is trained and evaluated.

    Training: :class:`SetCriterion` on the model outputs (in fp32, outside autocast); the weighted sum
    of its ``weight_dict`` is back-propagated; the unweighted final-layer terms are logged. Evaluation:
    :class:`PostProcess` boxes in original image pixels, converted to COCO results, gathered on rank 0
    and scored with pycocotools against ``annotation_file``.

    Args:
        criterion: the losses (with their weights).
        postprocess: top-k detections per image.
        annotation_file: the evaluation set's COCO json.
        label_to_category_id: contiguous label -> category id (``None``: labels are category ids).
    """

    def __init__(
        self,
        criterion: SetCriterion,
        postprocess: PostProcess,
        annotation_file: str | Path,
        label_to_category_id: Mapping[int, int] | None = None,
    ) -> None:
        self.criterion = criterion
        self.postprocess = postprocess
        self.annotation_file = Path(annotation_file)
        self.label_to_category_id = dict(label_to_category_id) if label_to_category_id is not None else None

    def batch_size(self, batch: Batch) -> int:
        return batch[0].shape[0]

    def train_loss(
        self, model: nn.Module, batch: Batch, device: torch.device, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted loss and the logged terms (``loss``, ``loss_ce``, ... of the final layer)."""
        images, mask, targets = batch
        images = images.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True)
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device)} for t in targets]
        outputs = model(images, mask)
        with torch.autocast(device.type, enabled=False):
            losses = self.criterion(_to_float(outputs), targets)
            loss = self.criterion.total(losses)
        logs = {"loss": loss.detach(), **{k: losses[k].detach() for k in LOGGED_LOSSES if k in losses}}
        return loss, logs

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> list[dict[str, Any]]:
        """COCO results of this process's images."""
        was_training = model.training
        model.eval()
        entries: list[dict[str, Any]] = []
        for images, mask, targets in loader:
            with autocast():
                outputs = model(images.to(device, non_blocking=True), mask.to(device, non_blocking=True))
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            results = self.postprocess(_to_float(outputs), sizes)
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
        """The 12 COCO box numbers (``AP``, ``AP50``, ... ``ARl``, fractions in [0, 1]) on every process."""
        gathered = gather_objects(self.predict(model, loader, device, autocast))
        stats = None
        if is_main_process():
            detections = [entry for part in gathered for entry in part]
            stats, _ = evaluate_coco(self.annotation_file, detections, verbose=True)
        return broadcast_object(stats)
