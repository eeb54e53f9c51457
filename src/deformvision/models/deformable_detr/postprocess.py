"""Turn Deformable DETR outputs into scored detections in image coordinates."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


class PostProcess(nn.Module):
    """Top-``k`` detections per image from sigmoid class scores (the official COCO post-processing).

    Every (query, class) pair is a candidate detection with score ``sigmoid(logit)``; the ``k``
    best-scoring pairs over the flattened ``Q x K`` scores are kept, so one query may give several
    detections with different labels. For flat index ``i``: query ``i // K``, label ``i % K``.
    Boxes are converted from normalised ``(cx, cy, w, h)`` to absolute ``(x0, y0, x1, y1)`` by
    multiplying with ``(w, h, w, h)`` of the given image size. No score threshold, no NMS.

    Args:
        num_select: ``k`` (official: 100). If ``Q * K < k`` all ``Q * K`` pairs are returned (the
            official code raises instead).
    """

    def __init__(self, num_select: int = 100) -> None:
        super().__init__()
        if num_select < 1:
            raise ValueError(f"num_select must be >= 1, got {num_select}")
        self.num_select = num_select

    def extra_repr(self) -> str:
        return f"num_select={self.num_select}"

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], target_sizes: Tensor | Sequence[Sequence[int]]
    ) -> list[dict[str, Tensor]]:
        """Select the detections.

        Args:
            outputs: dict with ``"pred_logits"`` ``(B, Q, K)`` and ``"pred_boxes"`` ``(B, Q, 4)``
                (normalised ``(cx, cy, w, h)``); other keys are ignored.
            target_sizes: ``(B, 2)`` ``(height, width)`` per image: the size the boxes are scaled to
                (for COCO evaluation the original image size, before resizing).

        Returns:
            ``B`` dicts with ``"scores"`` ``(k,)`` in descending order, ``"labels"`` ``(k,)`` int64 in
            ``[0, K)`` and ``"boxes"`` ``(k, 4)`` absolute ``(x0, y0, x1, y1)``.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, num_queries, num_classes = logits.shape
        sizes = torch.as_tensor(target_sizes, device=boxes.device)
        if sizes.shape != (batch, 2):
            raise ValueError(
                f"target_sizes must be ({batch}, 2): one (height, width) row per image, got shape {tuple(sizes.shape)}"
            )

        scores, flat_index = logits.sigmoid().flatten(1).topk(min(self.num_select, num_queries * num_classes), dim=1)
        query = torch.div(flat_index, num_classes, rounding_mode="floor")
        labels = flat_index % num_classes
        xyxy = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy").gather(1, query[..., None].expand(-1, -1, 4))
        height, width = sizes.unbind(1)
        scale = torch.stack((width, height, width, height), dim=1).to(xyxy.dtype)
        xyxy = xyxy * scale[:, None, :]
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xyxy, strict=True)]
