"""Differentiable primitives with no module state: deformable sampling ops and box utilities."""

from deformvision.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
)
from deformvision.ops.deform_conv import deform_conv2d
from deformvision.ops.ms_deform_attn import ms_deform_attn

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "inverse_sigmoid",
    "deform_conv2d",
    "ms_deform_attn",
]
