"""Differentiable primitives with no module state: the deformable sampling ops.

Box utilities (format conversion, area, IoU, generalized IoU, NMS) are torchvision's
(:mod:`torchvision.ops`).
"""

from deformvision.ops.deform_conv import deform_conv2d
from deformvision.ops.msda import ms_deform_attn

__all__ = [
    "deform_conv2d",
    "ms_deform_attn",
]
