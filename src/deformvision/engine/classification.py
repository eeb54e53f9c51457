"""Image classification: the training loss (Mixup/CutMix, label smoothing) and top-1/top-5 evaluation."""

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn

from deformvision.data._random import seed_from, seeded
from deformvision.engine.distributed import all_reduce_sum

Batch = tuple[Tensor, Tensor]


class ClassificationTask:
    """How a classifier is trained and evaluated.

    Training: with ``mixup`` each batch is mixed (``timm.data.Mixup``, with its own label smoothing)
    and the loss is timm's ``SoftTargetCrossEntropy``; else cross-entropy with ``label_smoothing``
    (torch's, the same as timm's ``LabelSmoothingCrossEntropy``), as Swin's ``main.py``.
    Evaluation: plain cross-entropy, top-1 and top-5 accuracy (%), summed over all processes.

    Args:
        num_classes: ``K``.
        mixup: batch mixing (``mode='batch'``: needs an even batch), or ``None``.
        label_smoothing: used without ``mixup``.
    """

    def __init__(self, num_classes: int, mixup: Mixup | None = None, label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.mixup = mixup
        self.label_smoothing = label_smoothing
        self.soft_target_loss = SoftTargetCrossEntropy()

    def batch_size(self, batch: Batch) -> int:
        return batch[0].shape[0]

    def train_loss(
        self, model: nn.Module, batch: Batch, device: torch.device, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to back-propagate and the values to log (here only ``loss``) for one batch.

        ``generator`` drives the batch's Mixup/CutMix draws: timm's ``Mixup`` draws from numpy's global
        state, which is seeded from ``generator`` for the call and restored after it.
        """
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if self.mixup is not None:
            with seeded(seed_from(generator)):
                images, targets = self.mixup(images, labels)  # mixes ``images`` in place
            loss = self.soft_target_loss(model(images).float(), targets)
        else:
            loss = F.cross_entropy(model(images).float(), labels, label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """``{"top1", "top5", "loss", "count"}`` over the loader's samples of every process.

        Accuracies in percent; top-5 counts a hit among the ``min(5, K)`` best classes.
        """
        was_training = model.training
        model.eval()
        k = min(5, self.num_classes)
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1 hits, top5 hits, count
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            logits = logits.float()
            top = logits.topk(k, dim=1).indices
            hits = top == labels[:, None]
            sums += torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum").double(),
                    hits[:, 0].sum().double(),
                    hits.any(1).sum().double(),
                    torch.tensor(len(labels), dtype=torch.float64, device=device),
                ]
            )
        model.train(was_training)
        loss, top1, top5, count = all_reduce_sum(sums).tolist()
        if count == 0:
            raise ValueError("the evaluation set is empty")
        return {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "loss": loss / count, "count": int(count)}
