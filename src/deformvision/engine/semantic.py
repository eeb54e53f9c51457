"""Semantic segmentation (Semantic FPN, UperNet): the model's losses and mIoU / aAcc / mAcc evaluation.

The model contract: in training ``model(images (B, 3, H, W), targets (B, H, W) int64, 255 = ignore)``
returns a dict of already-weighted losses (``loss_seg``, ``loss_aux``); in evaluation ``model(images)``
returns logits ``(B, K, H, W)`` at the input size. Evaluation follows mmseg's protocol: each image is
resized to fit the evaluation scale (by the transform) while its label map keeps the original size,
so batches hold one image and the logits are resized to the label map before the argmax.
"""

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformvision.engine.segmentation_eval import SegmentationMetric
from deformvision.models.segmentation import slide_inference, whole_inference

Batch = tuple[Tensor, Tensor]


class SemanticTask:
    """How a semantic segmentation model is trained and evaluated.

    Args:
        num_classes: ``K``.
        ignore_index: label of pixels that are neither trained on nor counted.
        inference: ``"whole"`` (the whole resized image at once) or ``"slide"`` (overlapping crops of
            ``crop_size`` every ``stride`` pixels, their logits averaged).
        crop_size, stride: the sliding windows (``(h, w)``).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        inference: str = "whole",
        crop_size: tuple[int, int] = (512, 512),
        stride: tuple[int, int] = (341, 341),
    ) -> None:
        if inference not in ("whole", "slide"):
            raise ValueError(f"inference must be 'whole' or 'slide', got {inference!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.inference = inference
        self.crop_size = tuple(crop_size)
        self.stride = tuple(stride)

    def batch_size(self, batch: Batch) -> int:
        return batch[0].shape[0]

    def train_loss(
        self, model: nn.Module, batch: Batch, device: torch.device, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The summed loss and each of the model's losses."""
        images, targets = batch
        losses = model(images.to(device, non_blocking=True), targets.to(device, non_blocking=True).long())
        losses = {name: value.float() for name, value in losses.items()}
        loss = sum(losses.values())
        return loss, {"loss": loss.detach(), **{name: value.detach() for name, value in losses.items()}}

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        """``(B, K, H, W)`` logits of ``images`` by the configured inference."""
        if self.inference == "slide":
            return slide_inference(model, images, crop_size=self.crop_size, stride=self.stride)
        return whole_inference(model, images)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """``mIoU``, ``aAcc``, ``mAcc`` (fractions in [0, 1]) over the images of every process."""
        was_training = model.training
        model.eval()
        metric = SegmentationMetric(self.num_classes, self.ignore_index)
        for images, targets in loader:
            with autocast():
                logits = self.logits(model, images.to(device, non_blocking=True)).float()
            if logits.shape[-2:] != targets.shape[-2:]:  # the label map keeps the original size
                logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
            metric.update(logits.argmax(1).cpu(), targets.long())
        model.train(was_training)
        results = metric.compute()
        return {name: float(results[name]) for name in ("mIoU", "aAcc", "mAcc")}
