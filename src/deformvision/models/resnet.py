"""ResNet-50 / ResNet-101 (He, Zhang, Ren, Sun; CVPR 2016), torchvision "v1.5" layout.

The bottleneck strides in its 3x3 conv (not in the first 1x1 conv as the paper's v1). Parameter and
buffer names are torchvision's (``conv1``, ``bn1``, ``layer{1-4}.{j}.conv{1,2,3}`` / ``bn{1,2,3}``,
``layer{s}.0.downsample.{0,1}``, ``fc``), so torchvision ImageNet checkpoints and the backbone of an
official Deformable DETR checkpoint (``backbone.0.body.*``) load through :meth:`ResNet.checkpoint_filter`.

As a detection backbone (``features_only=True``) the model defaults to what Deformable DETR uses:
:class:`FrozenBatchNorm2d` everywhere (fixed ImageNet statistics and affine, stored as buffers, so
they are not parameters) and the stem plus ``layer1`` frozen (``requires_grad=False``).
"""

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deformvision.models._features import FeatureInfo
from deformvision.models._registry import register_model

logger = logging.getLogger(__name__)

NormLayer = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    Computes ``x * scale + shift`` with ``scale = weight * rsqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale``, i.e. :class:`torch.nn.BatchNorm2d` in eval mode, in
    train mode too. Nothing is a parameter, so nothing is trained and nothing counts in
    ``parameters()``. There is no ``num_batches_tracked`` buffer (:meth:`ResNet.checkpoint_filter`
    drops the one of BatchNorm checkpoints).

    Shape:
        - Input: ``(B, C, H, W)``
        - Output: ``(B, C, H, W)``
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), each with a norm; residual; ReLU.

    Shape:
        - Input: ``(B, in_chs, H, W)``
        - Output: ``(B, 4 * planes, ceil(H / stride), ceil(W / stride))``
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.relu(x + shortcut)


def _make_layer(
    in_chs: int, planes: int, depth: int, stride: int, dilate: bool, norm_layer: NormLayer
) -> nn.Sequential:
    """A stage of ``depth`` bottlenecks; the first one changes width and resolution.

    With ``dilate`` the stage keeps its input resolution: the first block's 3x3 conv has stride 1
    and dilation 1, the following blocks dilation ``stride`` (torchvision's
    ``replace_stride_with_dilation`` for a stage entered with dilation 1).
    """
    out_chs = planes * Bottleneck.expansion
    first_stride, later_dilation = (1, stride) if dilate else (stride, 1)
    downsample = None
    if first_stride != 1 or in_chs != out_chs:
        downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, first_stride, bias=False), norm_layer(out_chs))
    blocks = [Bottleneck(in_chs, planes, first_stride, 1, downsample, norm_layer)]
    blocks += [Bottleneck(out_chs, planes, 1, later_dilation, norm_layer=norm_layer) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Bottleneck ResNet (v1.5), classifier or multi-scale backbone.

    Args:
        depths: bottlenecks per stage (``(3, 4, 6, 3)``: ResNet-50, ``(3, 4, 23, 3)``: ResNet-101).
        in_chans: input channels.
        num_classes: classes of the linear head ``fc`` (0: no head, ``forward`` returns pooled features).
        norm_layer: norm constructor taking the channel count; default :class:`FrozenBatchNorm2d`
            for ``features_only`` (the detection setting), :class:`torch.nn.BatchNorm2d` otherwise.
        frozen_stages: the stem and stages ``layer1`` .. ``layer{frozen_stages}`` get
            ``requires_grad=False`` and stay in eval mode (-1: nothing frozen, 0: the stem only);
            default 1 (stem + ``layer1``, as the official Deformable DETR) for ``features_only``,
            -1 otherwise.
        dilation: replace the stride of ``layer4`` by dilation (the "DC5" backbone: C5 at stride 16).
        features_only: build a backbone whose ``forward`` returns the NCHW maps of ``out_indices``
            instead of logits; stages after the last returned one are not built.
        out_indices: stages returned when ``features_only``: 0..3 = ``layer1`` .. ``layer4`` (strides
            4/8/16/32, channels 256/512/1024/2048); default C3-C5 as Deformable DETR.

    Attributes:
        feature_info: :class:`FeatureInfo` of every stage, or of the returned maps when ``features_only``.

    Example:
        >>> backbone = resnet50(features_only=True)
        >>> [tuple(f.shape) for f in backbone(torch.randn(1, 3, 64, 96))]
        [(1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        in_chans: int = 3,
        num_classes: int = 1000,
        norm_layer: NormLayer | None = None,
        frozen_stages: int | None = None,
        dilation: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (1, 2, 3),
    ) -> None:
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f"depths must have one entry per stage (4), got {list(depths)}")
        distinct_stages = len(set(out_indices)) == len(out_indices) > 0 and all(i in range(4) for i in out_indices)
        if features_only and not distinct_stages:
            raise ValueError(f"out_indices must be distinct stage indices in 0..3, got {list(out_indices)}")
        if norm_layer is None:
            norm_layer = FrozenBatchNorm2d if features_only else nn.BatchNorm2d
        if frozen_stages is None:
            frozen_stages = 1 if features_only else -1
        if frozen_stages not in range(-1, 5):
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        self.num_classes = num_classes
        self.num_features = 512 * Bottleneck.expansion
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.num_stages = max(self.out_indices) + 1 if features_only else 4

        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        feature_info, in_chs, stride = [], 64, 4
        for i in range(self.num_stages):
            planes, layer_stride = 64 * 2**i, 1 if i == 0 else 2
            dilate = dilation and i == 3
            self.add_module(f"layer{i + 1}", _make_layer(in_chs, planes, depths[i], layer_stride, dilate, norm_layer))
            in_chs = planes * Bottleneck.expansion
            stride *= 1 if dilate else layer_stride
            feature_info.append(FeatureInfo(in_chs, stride, i))
        self.feature_info = feature_info

        if features_only:
            self.feature_info = [feature_info[i] for i in self.out_indices]
        else:
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()  # puts the frozen modules in eval mode

    def _stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self._stages()[: self.frozen_stages]]

    def train(self, mode: bool = True) -> "ResNet":
        """Set train/eval mode; frozen stages always stay in eval mode (their BatchNorm statistics fixed)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    # ----------------------------------------------------------------------------------------------
    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem and stages; the output of every built stage, ``(B, C_i, H / s_i, W / s_i)``.

        Sizes round up at every stride-2 layer: the map of stride ``s`` is ``ceil(H / s)`` high.
        """
        if x.ndim != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(f"expected input of shape (B, {self.conv1.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B, 64, H/4, W/4
        outputs = []
        for stage in self._stages():
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layer4`` map: ``(B, 2048, H/32, W/32)`` (``H/16`` with ``dilation``)."""
        if self.features_only:
            raise RuntimeError("forward_features is for classifiers; a features_only model's forward returns maps")
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and ``fc``: ``(B, 2048, h, w)`` -> ``(B, num_classes)``.

        With ``pre_logits`` the pooled features ``(B, 2048)`` are returned.
        """
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes)``, or with ``features_only`` the maps of ``out_indices`` (NCHW, in that order)."""
        if self.features_only:
            outputs = self.forward_stages(x)
            return [outputs[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a new one for ``num_classes`` classes (0: no head)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------------------------------------
    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert a torchvision ResNet or an official Deformable DETR state dict to this model.

        - Deformable DETR (``backbone.0.body.*`` keys present): only the backbone is kept, prefix removed;
        - ``num_batches_tracked`` of BatchNorm checkpoints is dropped when this model has none
          (:class:`FrozenBatchNorm2d`); a BatchNorm model loading a checkpoint without it (frozen
          norms) keeps its own counters;
        - ``fc`` is dropped by a model without head (``features_only`` or ``num_classes=0``), and so
          are the stages a ``features_only`` model does not build; a head of another size, or one
          missing from the checkpoint, is replaced by the model's own (fresh) ``fc`` with a warning.
        """
        prefix = "backbone.0.body."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        own = self.state_dict()
        unbuilt = tuple(f"layer{i + 1}." for i in range(self.num_stages, 4))
        converted = {
            key: value
            for key, value in state_dict.items()
            if key in own or not (key.endswith(".num_batches_tracked") or key.startswith(("fc.", *unbuilt)))
        }
        for key, value in own.items():
            if key.endswith(".num_batches_tracked") and key not in converted:
                converted[key] = value
        for key in ("fc.weight", "fc.bias"):
            if key in own and (key not in converted or converted[key].shape != own[key].shape):
                shape = tuple(converted[key].shape) if key in converted else "missing"
                logger.warning("checkpoint head %s (%s) does not fit this model: keeping the model's own", key, shape)
                converted[key] = own[key]
        return converted


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


# ------------------------------------------------------------------------------------------------
# Registered variants (torchvision's resnet50 / resnet101; 1000-class heads by default).


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50: 25.6M parameters (23.5M without ``fc``), 4.1 GMACs at 224."""
    return ResNet(**{"depths": (3, 4, 6, 3), **kwargs})


@register_model
def resnet101(**kwargs) -> ResNet:
    """ResNet-101: 44.5M parameters (42.5M without ``fc``), 7.8 GMACs at 224."""
    return ResNet(**{"depths": (3, 4, 23, 3), **kwargs})
