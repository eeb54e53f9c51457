"""Normalisation layers for NCHW feature maps."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor.

    Equivalent to moving channels last, applying :class:`torch.nn.LayerNorm` over ``C`` and moving
    them back, which is how DAT normalises its feature maps (its ``LayerNormProxy``).

    Shape:
        - Input: ``(B, C, H, W)``
        - Output: ``(B, C, H, W)``
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # B, H, W, C
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # B, C, H, W
