"""Bounding-box utilities for set-prediction detectors (DETR, Deformable DETR).

Box formats
-----------
* ``cxcywh``: ``(cx, cy, w, h)``, centre and size. Detector outputs and targets use it, normalised to
  ``[0, 1]`` by the (unpadded) image size.
* ``xyxy``: ``(x0, y0, x1, y1)``, top-left and bottom-right corners, ``x0 <= x1`` and ``y0 <= y1``.

All functions work in any floating dtype and are differentiable. The pairwise functions take ``(N, 4)``
and ``(M, 4)`` boxes in ``xyxy`` and return ``(N, M)`` matrices.
"""

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` boxes ``(cx, cy, w, h)`` -> ``(..., 4)`` boxes ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` boxes ``(x0, y0, x1, y1)`` -> ``(..., 4)`` boxes ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``(x1 - x0) * (y1 - y0)`` of ``(..., 4)`` ``xyxy`` boxes, shape ``(...)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with the denominator raised to the smallest normal number.

    The denominators here are areas (``>= 0``). The clamp only acts on an area that is exactly zero
    (e.g. two identical zero-area boxes), where the plain division would give ``0 / 0 = NaN``; every
    other value, and its gradient, is the same as with the plain division.
    """
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection over union of ``xyxy`` boxes.

    Args:
        boxes1: ``(N, 4)`` boxes ``(x0, y0, x1, y1)``.
        boxes2: ``(M, 4)`` boxes ``(x0, y0, x1, y1)``.

    Returns:
        ``(iou, union)``, both ``(N, M)``. Pairs whose union is empty (two zero-area boxes) get IoU 0.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    intersection = size[..., 0] * size[..., 1]
    union = area1[:, None] + area2[None, :] - intersection
    return _safe_divide(intersection, union), union


def _check_xyxy(boxes: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless every box of ``(N, 4)`` ``boxes`` has ``x1 >= x0`` and ``y1 >= y0``."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be (N, 4) xyxy boxes, got shape {tuple(boxes.shape)}")
    valid = boxes[:, 2:] >= boxes[:, :2]  # False for x1 < x0, y1 < y0 and NaN
    if not bool(valid.all()):
        bad = (~valid.all(dim=1)).nonzero()[:, 0]
        raise ValueError(
            f"{name} has {bad.numel()} degenerate box(es) (x1 < x0, y1 < y0 or NaN), e.g. index "
            f"{int(bad[0])}: {boxes[bad[0]].tolist()}; boxes must be (x0, y0, x1, y1) with x0 <= x1, y0 <= y1"
        )


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., CVPR 2019) of ``xyxy`` boxes.

    ``GIoU = IoU - (C - U) / C`` where ``U`` is the union and ``C`` the area of the smallest box
    enclosing both. It lies in ``(-1, 1]``: 1 for identical boxes, negative for disjoint ones.

    Args:
        boxes1: ``(N, 4)`` boxes ``(x0, y0, x1, y1)``.
        boxes2: ``(M, 4)`` boxes ``(x0, y0, x1, y1)``.

    Returns:
        ``(N, M)`` GIoU matrix. Zero-area boxes are allowed (a pair of identical points gives 0
        instead of NaN).

    Raises:
        ValueError: if a box has ``x1 < x0`` or ``y1 < y0`` (or NaN coordinates), which would give
            wrong values silently. This check reads the values (a device sync on GPU).
    """
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    enclosing = size[..., 0] * size[..., 1]
    return iou - _safe_divide(enclosing - union, enclosing)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x`` as Deformable DETR computes it: ``log(max(x, eps) / max(1 - x, eps))``.

    ``x`` is clamped to ``[0, 1]`` first, so the result is finite and bounded by ``|log(eps)|``
    (about 11.5 for the default ``eps``).
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
