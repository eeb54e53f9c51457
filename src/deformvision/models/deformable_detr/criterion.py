"""Training losses of Deformable DETR: focal classification, L1 and GIoU box losses on matched pairs.

The model outputs a set of ``Q`` predictions per image; :class:`SetCriterion` matches them one-to-one
to the targets (:class:`~deformvision.models.deformable_detr.matcher.HungarianMatcher`) and computes
the losses on the matched pairs, for the final decoder layer, every intermediate decoder layer
(``aux_outputs``, suffix ``_{i}``) and the two-stage encoder proposals (``enc_outputs``, suffix
``_enc``, class-agnostic). The scalar to back-propagate is :func:`weighted_loss` of the returned dict.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from deformvision.models.deformable_detr.matcher import HungarianMatcher, checked_xyxy

Indices = list[tuple[Tensor, Tensor]]


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017), normalised as in Deformable DETR.

    Per element: ``alpha_t (1 - p_t)^gamma BCE(logit, target)`` with ``p_t = p`` for target 1 and
    ``1 - p`` for target 0, ``alpha_t = alpha`` for target 1 and ``1 - alpha`` for target 0 (no
    weighting if ``alpha < 0``).

    Args:
        logits: ``(B, Q, K)`` logits.
        targets: ``(B, Q, K)`` binary targets (float, same dtype as ``logits``).
        num_boxes: normaliser.
        alpha: positive/negative balance.
        gamma: focusing exponent.

    Returns:
        Scalar ``loss.mean(1).sum() / num_boxes``: the mean over the ``Q`` dimension, summed over
        images and classes. Multiply by ``Q`` for the sum over all elements divided by ``num_boxes``.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


def weight_dict(
    num_decoder_layers: int, two_stage: bool, ce: float = 2, bbox: float = 5, giou: float = 2
) -> dict[str, float]:
    """The loss weights of the official training script.

    ``loss_ce``, ``loss_bbox``, ``loss_giou`` for the final layer, the same three with suffix ``_{i}``
    for the intermediate decoder layers ``i = 0 .. num_decoder_layers - 2`` and, if ``two_stage``,
    with suffix ``_enc`` for the encoder proposals. (The official script adds the ``_enc`` weights
    in every variant; without ``enc_outputs`` they weight nothing, so the total is the same.)
    ``class_error`` and ``cardinality_error`` are for logging only and get no weight.
    """
    base = {"loss_ce": float(ce), "loss_bbox": float(bbox), "loss_giou": float(giou)}
    suffixes = [""] + [f"_{i}" for i in range(num_decoder_layers - 1)] + (["_enc"] if two_stage else [])
    return {name + suffix: value for suffix in suffixes for name, value in base.items()}


def weighted_loss(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum(losses[k] * weights[k])`` over the keys of ``losses`` that have a weight."""
    terms = [losses[k] * weights[k] for k in losses if k in weights]
    if not terms:
        raise ValueError(f"no loss in {sorted(losses)} has a weight in {sorted(weights)}")
    return sum(terms[1:], terms[0])


def _num_boxes(targets: list[dict[str, Tensor]], device: torch.device) -> float:
    """Number of target boxes averaged over processes (all-reduced if distributed), at least 1."""
    count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world_size = dist.get_world_size()
    return torch.clamp(count / world_size, min=1).item()


def _matched_query_index(indices: Indices) -> tuple[Tensor, Tensor]:
    """``(image index, query index)`` of every matched prediction, image by image."""
    image = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(indices)])
    query = torch.cat([query for query, _ in indices])
    return image, query


class SetCriterion(nn.Module):
    """Deformable DETR losses on the outputs of the detector.

    For each set of predictions (final layer, each ``aux_outputs[i]``, ``enc_outputs``) the matcher
    assigns predictions to targets, then:

    * ``"labels"``: ``loss_ce``, the sigmoid focal loss against one-hot targets (unmatched
      predictions: all zeros) summed over all predictions and classes and divided by ``num_boxes``
      (official: ``focal.mean(1).sum() / num_boxes * Q``). For the final layer also
      ``class_error``: 100 - top-1 accuracy (%) of the matched predictions (logging only; 100 when
      nothing is matched, as the official code).
    * ``"boxes"``: ``loss_bbox``, the L1 distance of the matched ``(cx, cy, w, h)`` boxes, and
      ``loss_giou``, the sum of ``1 - GIoU`` of the matched pairs, both divided by ``num_boxes``
      (zero without targets).
    * ``"cardinality"``: ``cardinality_error``, the mean over images of ``|#predictions whose
      argmax is not the last class - #targets|``, a leftover of DETR's "no object" class kept for
      identical logs (logging only, no gradient).

    ``num_boxes`` is the number of targets in the batch, summed over processes when
    ``torch.distributed`` is initialised and divided by the world size, at least 1.

    Args:
        num_classes: ``K``, the number of class logits (no "no object" class).
        matcher: the matcher (same one for every set of predictions).
        weight_dict: loss weights (see :func:`weight_dict`), kept for :meth:`total`.
        losses: which of ``"labels"``, ``"boxes"``, ``"cardinality"`` to compute.
        focal_alpha: ``alpha`` of the focal loss (``gamma`` is 2).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        losses: tuple[str, ...] | list[str] = ("labels", "boxes", "cardinality"),
        focal_alpha: float = 0.25,
    ) -> None:
        super().__init__()
        unknown = set(losses) - {"labels", "boxes", "cardinality"}
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; choose from 'labels', 'boxes', 'cardinality'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = tuple(losses)
        self.focal_alpha = focal_alpha

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, losses={self.losses}, focal_alpha={self.focal_alpha}"

    def loss_labels(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        indices: Indices,
        num_boxes: float,
        log: bool = True,
    ) -> dict[str, Tensor]:
        """``loss_ce`` (and ``class_error`` if ``log``) from ``outputs["pred_logits"]`` ``(B, Q, K)``."""
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"pred_logits has {logits.shape[-1]} classes, the criterion {self.num_classes}")
        image, query = _matched_query_index(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        matched_labels = matched_labels.to(logits.device)
        onehot = torch.zeros_like(logits)
        onehot[image, query, matched_labels] = 1
        num_queries = logits.shape[1]
        loss_ce = sigmoid_focal_loss(logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2) * num_queries
        losses = {"loss_ce": loss_ce}
        if log:
            with torch.no_grad():
                if matched_labels.numel() == 0:
                    accuracy = torch.zeros((), device=logits.device)
                else:
                    correct = logits[image, query].argmax(-1) == matched_labels
                    accuracy = correct.float().mean() * 100
                losses["class_error"] = 100 - accuracy
        return losses

    @torch.no_grad()
    def loss_cardinality(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], indices: Indices, num_boxes: float
    ) -> dict[str, Tensor]:
        """``cardinality_error`` (logging only)."""
        logits = outputs["pred_logits"]
        num_targets = torch.as_tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        num_predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(num_predicted.float(), num_targets)}

    def loss_boxes(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], indices: Indices, num_boxes: float
    ) -> dict[str, Tensor]:
        """``loss_bbox`` and ``loss_giou`` from ``outputs["pred_boxes"]`` ``(B, Q, 4)`` (cx, cy, w, h)."""
        boxes = outputs["pred_boxes"][_matched_query_index(indices)]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        target_boxes = target_boxes.to(boxes)
        loss_bbox = F.l1_loss(boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(checked_xyxy(boxes, "pred_boxes"), checked_xyxy(target_boxes, "target boxes"))
        )
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _losses(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], num_boxes: float, suffix: str
    ) -> dict[str, Tensor]:
        """Match ``outputs`` to ``targets`` and compute every requested loss, keys suffixed."""
        indices = self.matcher(outputs, targets)
        losses: dict[str, Tensor] = {}
        for name in self.losses:
            if name == "labels":
                losses.update(self.loss_labels(outputs, targets, indices, num_boxes, log=suffix == ""))
            elif name == "boxes":
                losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
            else:
                losses.update(self.loss_cardinality(outputs, targets, indices, num_boxes))
        return {key + suffix: value for key, value in losses.items()}

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute all losses.

        Args:
            outputs: dict with ``"pred_logits"`` ``(B, Q, K)`` and ``"pred_boxes"`` ``(B, Q, 4)``
                (normalised ``(cx, cy, w, h)``), optionally ``"aux_outputs"`` (a list of such dicts,
                one per intermediate decoder layer) and ``"enc_outputs"`` (such a dict for the
                two-stage proposals, ``Q`` = number of encoder tokens).
            targets: ``B`` dicts with ``"labels"`` ``(M_b,)`` int64 and ``"boxes"`` ``(M_b, 4)``
                normalised ``(cx, cy, w, h)``; ``M_b`` may be 0.

        Returns:
            Dict of scalar tensors: ``loss_ce``, ``class_error``, ``loss_bbox``, ``loss_giou``,
            ``cardinality_error`` (those requested), the same without ``class_error`` with suffix
            ``_{i}`` for ``aux_outputs[i]`` and ``_enc`` for ``enc_outputs`` (matched and scored with
            every target label set to 0).
        """
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        final = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        losses = self._losses(final, targets, num_boxes, suffix="")
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux_outputs, targets, num_boxes, suffix=f"_{i}"))
        if "enc_outputs" in outputs:
            binary_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update(self._losses(outputs["enc_outputs"], binary_targets, num_boxes, suffix="_enc"))
        return losses

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum of ``losses`` with this criterion's ``weight_dict`` (what to back-propagate)."""
        return weighted_loss(losses, self.weight_dict)
