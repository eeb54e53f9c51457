"""Sine positional encoding of padded feature maps and level masks, as in (Deformable) DETR.

Both follow the official Deformable DETR (fundamentalvision/Deformable-DETR@11169a6) exactly,
including its float32 arithmetic, so that its encodings are reproduced bit for bit.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-d sine/cosine encoding of the valid (unpadded) region of each image.

    Per image, rows and columns are numbered by cumulative sums of the valid cells (so padding does
    not shift positions); with ``normalize`` they are mapped to ``(y + offset) / (y_last + 1e-6) * scale``
    where ``y_last`` is the valid height (the valid width for x). Each axis gives ``num_pos_feats``
    channels ``sin(p / t_0), cos(p / t_1), sin(p / t_2), ...`` with ``t_i = temperature ** (2 * (i // 2)
    / num_pos_feats)``; the y channels come first.

    Everything is computed in float32 whatever the model's dtype (as the official code does) and the
    result is then cast to ``dtype``. The defaults are Deformable DETR's (``offset=-0.5`` centres the
    cells; DETR uses ``offset=0``). Where a whole row (column) is padding the x (y) channels are large
    float32 arguments of sin/cos, i.e. noise; such cells are masked everywhere downstream.

    Args:
        num_pos_feats: channels per axis (output has ``2 * num_pos_feats``), even.
        temperature: base of the frequency progression.
        normalize: normalise positions to ``[0, scale]`` by the valid size.
        scale: range of the normalised positions.
        offset: added to the 1-based cumulative position before normalising.

    Shape:
        - Input: ``mask`` ``(B, H, W)`` bool, True = padding
        - Output: ``(B, 2 * num_pos_feats, H, W)``
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = -0.5,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset

    def forward(self, mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Encode ``mask`` (B, H, W) bool; returns (B, 2 * num_pos_feats, H, W) in ``dtype`` (default float32)."""
        if mask.ndim != 3 or mask.dtype != torch.bool:
            raise ValueError(f"expected a bool mask of shape (B, H, W), got {mask.dtype} {tuple(mask.shape)}")
        valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)  # B, H, W: 1-based row among the valid ones
        x = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y = (y + self.offset) / (y[:, -1:, :] + eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + eps) * self.scale
        exponent = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (exponent // 2) / self.num_pos_feats)  # num_pos_feats
        pos_y = _sin_cos(y[..., None] / dim_t)
        pos_x = _sin_cos(x[..., None] / dim_t)
        pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # B, 2 * num_pos_feats, H, W
        return pos if dtype is None else pos.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}, "
            f"scale={self.scale}, offset={self.offset}"
        )


def _sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """``(..., F)`` -> ``(..., F)``: sin of the even channels, cos of the odd ones, pairs interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def mask_to_level(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of a padding mask ``(B, H, W)`` to ``(B, *size)`` (bool, True = padding).

    PyTorch 'nearest' (source index ``floor(dst * in_size / out_size)``) on the mask as float, as
    Deformable DETR resizes the image mask to every feature level.
    """
    return F.interpolate(mask[None].float(), size=tuple(size))[0].to(torch.bool)
