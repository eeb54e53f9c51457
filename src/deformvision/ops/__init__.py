"""Differentiable primitives with no module state: the deformable sampling ops, and a faster CPU
``linear`` and ``dropout``.

Box utilities (format conversion, area, IoU, generalized IoU, NMS) are torchvision's
(:mod:`torchvision.ops`).
"""

from deformvision.ops.deform_conv import deform_conv2d
from deformvision.ops.dropout import dropout
from deformvision.ops.linear import linear, linear_relu_dropout
from deformvision.ops.msda import ms_deform_attn

__all__ = [
    "deform_conv2d",
    "dropout",
    "linear",
    "linear_relu_dropout",
    "ms_deform_attn",
]
