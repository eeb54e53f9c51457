"""Semantic segmentation metrics from an accumulated confusion matrix: mIoU, aAcc, mAcc (mmseg's definitions).

``confusion[t, p]`` counts the pixels of target class ``t`` predicted as class ``p`` over every image seen
(pixels whose target is ``ignore_index`` are left out). From it, per class ``c``:

- ``IoU[c] = TP / (TP + FP + FN)`` = ``confusion[c, c] / (row c sum + column c sum - confusion[c, c])``;
  NaN when the class is in neither the predictions nor the targets (union 0). A class that is
  predicted but absent from the targets has IoU 0.
- ``Acc[c] = TP / (TP + FN)`` = ``confusion[c, c] / row c sum``; NaN when the class is absent from the targets.

``mIoU`` and ``mAcc`` are the means over the classes whose value is not NaN (mmseg's ``nanmean``);
``aAcc`` is the fraction of all counted pixels predicted right. All values lie in ``[0, 1]`` (multiply by
100 for the percentages papers print); NaN when nothing defines them (no pixel counted).

Distributed evaluation: every process updates its own metric with its share of the images;
:meth:`SegmentationMetric.compute` sums the matrices of all processes with ``all_reduce`` when a
``torch.distributed`` process group is initialised (every process must call it), so each gets the
metrics of the whole set. Pixel counts are int64 (exact for any realistic dataset).
"""

import math

import torch
import torch.distributed as dist


class SegmentationMetric:
    """Accumulates a ``(num_classes, num_classes)`` confusion matrix; :meth:`compute` gives the metrics.

    Args:
        num_classes: ``K``; class indices are ``0 .. K - 1``.
        ignore_index: target value of pixels that are not counted (not a class index).

    Example:
        >>> metric = SegmentationMetric(3)
        >>> metric.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 1]]]))
        >>> metric.compute()["aAcc"]
        0.75
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index must not be a class index in [0, {num_classes}), got {ignore_index}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every pixel seen."""
        self.confusion = torch.zeros_like(self.confusion)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch.

        Args:
            pred: ``(B, H, W)`` predicted class indices, or ``(B, K, H, W)`` logits (their argmax over ``K``).
            target: ``(B, H, W)`` class indices, ``ignore_index`` for pixels not counted.

        Raises:
            ValueError: shapes differ, non-integer labels, or values outside ``[0, K)`` (other than
                ``ignore_index`` in the target); the message lists them.
        """
        if pred.ndim == 4:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"logits must have num_classes = {self.num_classes} channels, got {tuple(pred.shape)}")
            pred = pred.argmax(1)  # B, H, W
        if pred.shape != target.shape or target.ndim != 3:
            raise ValueError(
                f"pred and target must both be (B, H, W) (or pred (B, K, H, W) logits), "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        for name, labels in (("pred", pred), ("target", target)):
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
        pred, target = pred.long(), target.long()
        valid = target != self.ignore_index
        self._check_range("target", target[valid])
        self._check_range("pred", pred[valid])
        k = self.num_classes
        index = target[valid] * k + pred[valid]  # (N,) flat (target, pred) cell of every counted pixel
        counts = torch.bincount(index, minlength=k * k).reshape(k, k)  # K, K
        self.confusion = self.confusion.to(counts.device) + counts

    def _check_range(self, name: str, labels: torch.Tensor) -> None:
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            values = torch.unique(bad).tolist()
            shown = ", ".join(map(str, values[:10])) + (f", ... ({len(values)} distinct)" if len(values) > 10 else "")
            allowed = f"[0, {self.num_classes})" + (f" or ignore_index {self.ignore_index}" if name == "target" else "")
            raise ValueError(f"{name} must hold class indices in {allowed}; found {shown}")

    def reduced_confusion(self) -> torch.Tensor:
        """The confusion matrix summed over all processes (this process's own without a process group)."""
        confusion = self.confusion.clone()
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl" and confusion.device.type != "cuda":
                confusion = confusion.cuda()
            dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
        return confusion.cpu()

    def compute(self) -> dict[str, float | list[float]]:
        """``{"mIoU", "aAcc", "mAcc": float, "IoU", "Acc": per-class lists}`` over all processes (module doc)."""
        confusion = self.reduced_confusion().double()  # K, K
        tp = confusion.diagonal()
        target_count = confusion.sum(1)  # TP + FN
        pred_count = confusion.sum(0)  # TP + FP
        union = target_count + pred_count - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(target_count > 0, tp / target_count.clamp(min=1), torch.full_like(tp, math.nan))
        total = confusion.sum()
        return {
            "mIoU": _nanmean(iou),
            "aAcc": (tp.sum() / total).item() if total > 0 else math.nan,
            "mAcc": _nanmean(acc),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }


def _nanmean(values: torch.Tensor) -> float:
    """Mean of the non-NaN entries; NaN when there is none (without torch's warning)."""
    defined = values[~values.isnan()]
    return defined.mean().item() if defined.numel() else math.nan
