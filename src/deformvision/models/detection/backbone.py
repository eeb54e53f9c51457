"""DAT + FPN: the multi-scale backbone of our torchvision detectors (RetinaNet, Mask R-CNN, Cascade).

:class:`DATFPN` runs a ``features_only`` :class:`~deformvision.models.dat.DAT` (each returned stage with
its own LayerNorm) and torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`, and returns an
``OrderedDict`` of 256-channel maps, as torchvision's detectors expect of a backbone with
``out_channels``:

- Mask R-CNN / Cascade (``levels="p2-p6"``): stages 0-3 -> ``"0"``..``"3"`` = P2-P5 (strides 4-32)
  and ``"pool"`` = P6, a stride-2 max-pool of P5 (:class:`~torchvision.ops.feature_pyramid_network.LastLevelMaxPool`,
  mmdet's FPN without extra convs). The RoI heads pool from ``"0"``..``"3"`` only; P6 feeds the RPN.
- RetinaNet (``levels="p3-p7"``): stages 1-3 -> ``"0"``..``"2"`` = P3-P5 (strides 8-32), ``"p6"`` =
  3x3 stride-2 conv on C5 (the DAT stage-3 output, ``dims[3]`` channels; mmdet's ``add_extra_convs="on_input"``)
  and ``"p7"`` = 3x3 stride-2 conv on P6
  (:class:`~torchvision.ops.feature_pyramid_network.LastLevelP6P7`). torchvision applies a ReLU before
  the P7 conv, mmdet does not (``relu_before_extra_convs=False``); the parameters are the same.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from deformvision.models.dat import DAT, dat_base, dat_small, dat_tiny

FPN_CHANNELS = 256
_DAT_BUILDERS: dict[str, Callable[..., DAT]] = {"tiny": dat_tiny, "small": dat_small, "base": dat_base}
_OUT_INDICES = {"p2-p6": (0, 1, 2, 3), "p3-p7": (1, 2, 3)}


class DATFPN(nn.Module):
    """A ``features_only`` DAT followed by an FPN with extra levels.

    Args:
        body: a :class:`DAT` built with ``features_only=True``; its ``feature_info`` gives the FPN's inputs.
        levels: ``"p2-p6"`` (max-pool P6; body returns stages 0-3) or ``"p3-p7"`` (P6 from C5, P7 from P6;
            body returns stages 1-3).
        out_channels: FPN channels.

    Shape:
        - Input: ``(B, 3, H, W)`` normalised images, ``H`` and ``W`` multiples of 32.
        - Output: ``OrderedDict`` of ``(B, out_channels, H / s, W / s)`` maps, strides ``s`` 4..64
          (``"0"``-``"3"``, ``"pool"``) or 8..128 (``"0"``-``"2"``, ``"p6"``, ``"p7"``).
    """

    def __init__(self, body: DAT, levels: Literal["p2-p6", "p3-p7"], out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        if levels not in _OUT_INDICES:
            raise ValueError(f"levels must be one of {list(_OUT_INDICES)}, got {levels!r}")
        if not body.features_only or body.out_indices != _OUT_INDICES[levels]:
            raise ValueError(
                f"levels={levels!r} needs a features_only DAT with out_indices={_OUT_INDICES[levels]}, "
                f"got features_only={body.features_only}, out_indices={body.out_indices}"
            )
        channels = body.feature_info.channels()
        extra = LastLevelMaxPool() if levels == "p2-p6" else LastLevelP6P7(channels[-1], out_channels)
        self.body = body
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.levels = levels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)  # list of (B, dims[i], H / 2^(i+2), W / 2^(i+2))
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each DAT block in the backward pass (see :meth:`DAT.set_grad_checkpointing`)."""
        self.body.set_grad_checkpointing(enable)


def dat_fpn(
    size: Literal["tiny", "small", "base"],
    levels: Literal["p2-p6", "p3-p7"],
    pretrained_backbone: bool = False,
    drop_path_rate: float | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    fpn_channels: int = FPN_CHANNELS,
) -> DATFPN:
    """Build :class:`DATFPN` on the registered ``dat_{size}``.

    Args:
        size: DAT variant.
        levels: see :class:`DATFPN`.
        pretrained_backbone: load DAT's ImageNet-1k weights (``dat_{size}.in1k``, downloaded once and
            cached; the classifier's final norm and head are dropped, the per-output norms stay fresh).
        drop_path_rate: stochastic depth of the DAT (default: the variant's ImageNet value).
        backbone_kwargs: further ``dat_{size}`` arguments overriding the variant's (e.g. narrow ``dims``
            for tests); ``features_only`` and ``out_indices`` are set here.
        fpn_channels: the FPN's width.
    """
    if size not in _DAT_BUILDERS:
        raise ValueError(f"size must be one of {list(_DAT_BUILDERS)}, got {size!r}")
    if levels not in _OUT_INDICES:
        raise ValueError(f"levels must be one of {list(_OUT_INDICES)}, got {levels!r}")
    kwargs = dict(backbone_kwargs or {})
    for key in ("features_only", "out_indices"):
        if key in kwargs:
            raise ValueError(f"backbone_kwargs may not set {key!r}: the detector sets it (levels={levels!r})")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    body = _DAT_BUILDERS[size](
        pretrained=pretrained_backbone, features_only=True, out_indices=_OUT_INDICES[levels], **kwargs
    )
    return DATFPN(body, levels, fpn_channels)
