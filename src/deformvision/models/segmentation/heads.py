"""Decode heads of the semantic segmentation models: Semantic FPN's, UperNet's and the auxiliary FCN head.

The structures are those of mmseg v0.x (``FPNHead``, ``UPerHead``, ``FCNHead``), used by the Swin and
DAT(++) segmentation configs that the DAT paper's ADE20K numbers come from (see
``docs/dense_prediction_notes.md`` sections 5 and 7): every 3x3 / 1x1 conv is followed by BatchNorm and
ReLU (and so has no bias); every head ends with ``Dropout2d(0.1)`` and a 1x1 classifier with bias.

BatchNorm: the official configs use SyncBN. Under DDP convert the model with
``nn.SyncBatchNorm.convert_sync_batchnorm(model)`` before wrapping it; without it, each process
normalises over its own local batch (2 images per GPU in the UperNet recipe), and training with one
image per process fails in the pooling branch of UperNet (a 1x1 map: BatchNorm needs more than one
value per channel).

Initialisation (as mmcv's ``ConvModule`` and mmseg's decode heads): convs Kaiming-normal (fan-out,
ReLU), BatchNorm weight 1 bias 0, classifier weight ``N(0, 0.01)`` bias 0.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deformvision._checks import check_int, check_rate


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``(B, C, h, w)`` to ``(B, C, *size)`` (``align_corners=False``); no-op at that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """``Conv2d (no bias) -> BatchNorm2d -> ReLU``, padding ``kernel_size // 2`` (mmcv's ``ConvModule``).

    Shape:
        - Input: ``(B, in_channels, H, W)``
        - Output: ``(B, out_channels, H, W)``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


class _DecodeHead(nn.Module):
    """Base of the heads: ``Dropout2d`` and the 1x1 classifier (mmseg's ``cls_seg``)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        check_int("num_classes", num_classes)
        check_rate("dropout", dropout)
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, h, w)`` -> ``(B, num_classes, h, w)`` logits."""
        return self.classifier(self.dropout(x))


class FPNHead(_DecodeHead):
    """Semantic FPN's head (Kirillov et al., Panoptic FPN; mmseg ``FPNHead``).

    Level ``i`` (stride ``s_i``) goes through ``max(1, log2(s_i / s_0))`` blocks of
    ``conv3x3-BN-ReLU`` to ``channels``, each followed by a x2 bilinear upsampling when ``s_i > s_0``; the
    levels are then summed at the first level's resolution (a bilinear resize absorbs the off-by-one
    sizes of odd inputs), and classified.

    Args:
        in_channels: channels of each input level (the FPN's ``out_channels``, 256, four times).
        strides: stride of each level, increasing by powers of 2 (``(4, 8, 16, 32)``).
        channels: channels of the scale heads (128).
        num_classes: output classes.
        dropout: ``Dropout2d`` rate before the classifier.

    Shape:
        - Input: a list of ``(B, in_channels[i], H / strides[i], W / strides[i])`` maps.
        - Output: ``(B, num_classes, H / strides[0], W / strides[0])`` logits.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        channels: int = 128,
        num_classes: int = 150,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        if len(in_channels) != len(strides):
            raise ValueError(
                f"in_channels {list(in_channels)} and strides {list(strides)} must have one entry per level"
            )
        if any(s % strides[0] or not math.log2(s // strides[0]).is_integer() for s in strides):
            raise ValueError(f"strides must be the first stride times powers of 2, got {list(strides)}")
        self.scale_heads = nn.ModuleList()
        for in_ch, stride in zip(in_channels, strides, strict=True):
            num_blocks = max(1, int(math.log2(stride // strides[0])))
            layers: list[nn.Module] = []
            for k in range(num_blocks):
                layers.append(ConvBNReLU(in_ch if k == 0 else channels, channels, 3))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])  # B, channels, H/4, W/4
        for head, x in zip(self.scale_heads[1:], features[1:], strict=True):
            out = out + _resize(head(x), out.shape[-2:])
        return self.classify(out)


class PPM(nn.ModuleList):
    """Pyramid pooling (PSPNet): per scale ``s``, adaptive average pooling to ``s x s`` and ``conv1x1-BN-ReLU``.

    Shape:
        - Input: ``(B, in_channels, h, w)``
        - Output: a list of ``len(pool_scales)`` maps ``(B, channels, h, w)`` (pooled maps resized back
          bilinearly).
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1)) for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(branch(x), x.shape[-2:]) for branch in self]


class UPerHead(_DecodeHead):
    """UperNet's head (Xiao et al., ECCV 2018; mmseg ``UPerHead``): PPM on the last map, then an FPN.

    1. Last level: PPM (pool scales ``(1, 2, 3, 6)``), concatenated with its input, ``conv3x3-BN-ReLU``
       to ``channels`` (``bottleneck``).
    2. Other levels: lateral ``conv1x1-BN-ReLU`` to ``channels``; top-down, each coarser lateral is
       resized bilinearly and added to the finer one.
    3. ``conv3x3-BN-ReLU`` on every level but the last (``fpn_convs``), all levels resized bilinearly
       to the finest, concatenated, ``conv3x3-BN-ReLU`` to ``channels`` (``fpn_bottleneck``), classifier.

    Args:
        in_channels: channels of each backbone level (DAT's ``dims``).
        channels: width of the head (512).
        pool_scales: PPM output sides.
        num_classes: output classes.
        dropout: ``Dropout2d`` rate before the classifier.

    Shape:
        - Input: a list of ``(B, in_channels[i], H_i, W_i)`` maps, finest first.
        - Output: ``(B, num_classes, H_0, W_0)`` logits.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        num_classes: int = 150,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.ppm = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        last = features[-1]
        top = self.bottleneck(torch.cat([last, *self.ppm(last)], dim=1))  # B, channels, H_L, W_L
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1], strict=True)] + [top]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = torch.cat([_resize(x, size) for x in outs], dim=1)  # B, levels * channels, H_0, W_0
        return self.classify(self.fpn_bottleneck(fused))


class FCNHead(_DecodeHead):
    """Auxiliary FCN head (mmseg ``FCNHead`` with ``num_convs=1, concat_input=False``).

    ``num_convs`` blocks of ``conv3x3-BN-ReLU`` to ``channels``, dropout, 1x1 classifier.

    Shape:
        - Input: ``(B, in_channels, h, w)``
        - Output: ``(B, num_classes, h, w)`` logits.
    """

    def __init__(
        self, in_channels: int, channels: int = 256, num_convs: int = 1, num_classes: int = 150, dropout: float = 0.1
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        check_int("num_convs", num_convs)
        self.convs = nn.Sequential(
            *(ConvBNReLU(in_channels if k == 0 else channels, channels, 3) for k in range(num_convs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.convs(x))
