"""Differentiable deformable-sampling primitives (no module state)."""

from deformvision.ops.deform_conv import deform_conv2d

__all__ = ["deform_conv2d"]
