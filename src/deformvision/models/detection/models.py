"""The DAT paper's COCO detectors on torchvision's detection framework, and their registered variants.

| name (``_{tiny,small,base}``) | detector | backbone levels | params T / S / B (80 classes) |
|---|---|---|---|
| ``retinanet_dat`` | torchvision ``RetinaNet`` | DAT stages 1-3, FPN P3-P7 | 38.5M / 59.9M / 98.5M |
| ``mask_rcnn_dat`` | torchvision ``MaskRCNN`` | DAT stages 0-3, FPN P2-P6 | 47.8M / 69.2M / 107.3M |
| ``cascade_mask_rcnn_dat`` | ``CascadeMaskRCNN`` (ours) | DAT stages 0-3, FPN P2-P6 | 85.7M / 107.1M / 145.1M |

Heads follow mmdet v2 as used by the Swin and DAT detection repos (see ``docs/dense_prediction_notes.md``):

- RetinaNet: 4 conv 256 per branch, 9 anchors per location (octave base 4, 3 scales per octave,
  ratios 0.5/1/2, strides 8-128), focal loss and L1; test score 0.05, NMS 0.5, 100 per image.
- Mask R-CNN: RPN (3 anchors, 1000 proposals per image in training and test), RoIAlign 7x7 / 14x14
  (adaptive sampling, ``sampling_ratio=0`` as mmdet) on P2-P5, torchvision's ``TwoMLPHead`` (1024)
  and 4-conv mask head. torchvision's box loss is smooth L1 (beta 1/9) where mmdet's is L1.
- Cascade: see :mod:`~deformvision.models.detection.cascade`.

Labels: ``num_classes`` counts object classes (no background) and labels are ``0..num_classes - 1``
in the targets and in the outputs. The R-CNNs shift them by one into torchvision's convention
(background 0) inside. The images are lists of ``(3, H, W)`` floats in ``[0, 1]``; the models normalise
them with ImageNet's mean and std and resize them (``min_size`` 800, ``max_size`` 1333 by default).

Defaults: 80 classes; ``drop_path_rate`` 0.2 / 0.3 / 0.5 for T / S / B, DAT's ImageNet values: the v1
paper's detection values are not published (DAT++'s configs use 0.0-0.8 by schedule, Swin's 0.2-0.3).
``pretrained_backbone=True`` loads DAT's ImageNet-1k weights; no COCO weights are published
(``pretrained=True`` raises, ``pretrained_cfg_overlay={"file": path}`` loads one's own).

torch.compile: see the note in :mod:`deformvision.models.detection`.
"""

import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from deformvision._checks import check_int
from deformvision.models._registry import build_model, register_model, unknown_arguments
from deformvision.models.detection.backbone import DATFPN, FPN_CHANNELS, dat_fpn
from deformvision.models.detection.cascade import CascadeMaskRCNN

DROP_PATH_RATES: dict[str, float] = {"tiny": 0.2, "small": 0.3, "base": 0.5}
_MEAN, _STD = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
_ROI_LEVELS = ["0", "1", "2", "3"]  # P2-P5; P6 ("pool") feeds the RPN only


# What torchvision's detectors pass on through their **kwargs: the image transform's arguments (it drops others).
_TRANSFORM_KWARGS = ("size_divisible", "fixed_size")


def _check_torchvision_kwargs(detector: str, bases: tuple[type, ...], kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments that none of torchvision's ``bases`` (nor its image transform) takes."""
    valid = {name for base in bases for name in inspect.signature(base.__init__).parameters} - {"self", "kwargs"}
    unknown = sorted(set(kwargs) - valid - set(_TRANSFORM_KWARGS))
    if unknown:
        valid_names = ", ".join(sorted(valid | set(_TRANSFORM_KWARGS)))
        raise TypeError(f"{detector} got {unknown_arguments(unknown)}; valid: {valid_names}")


class ZeroBasedLabels:
    """Mixin for torchvision detectors: 0-based labels in targets and outputs, checked.

    The class sets ``label_offset`` (1 for the R-CNNs, whose internal class 0 is background; 0 for
    RetinaNet, whose focal loss has no background class) and the instance ``num_classes``.
    """

    label_offset: int = 1
    num_classes: int

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses (training) or detections (eval); see the module docstring.

        Args:
            images: ``(3, H_i, W_i)`` float images in ``[0, 1]`` (a ``(B, 3, H, W)`` tensor also works).
            targets: per image ``boxes (N, 4)`` xyxy pixels, ``labels (N,)`` int64 in
                ``0..num_classes - 1``, and for the R-CNNs ``masks (N, H_i, W_i)`` uint8.

        Returns:
            Training: a dict of scalar losses. Eval: per image ``boxes (D, 4)`` in input pixels,
            ``labels (D,)`` 0-based, ``scores (D,)`` and, for the R-CNNs, ``masks (D, 1, H_i, W_i)`` probabilities.
        """
        if targets is not None:
            targets = [self._shift_target(i, target) for i, target in enumerate(targets)]
        outputs = super().forward(images, targets)
        if isinstance(outputs, list) and self.label_offset:
            for detection in outputs:
                detection["labels"] = detection["labels"] - self.label_offset
        return outputs

    def _shift_target(self, index: int, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = target.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            got = (
                f"{labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else labels
            )
            raise ValueError(f"targets[{index}]['labels'] must be an int64 tensor of shape (N,), got {got}")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"targets[{index}]['labels'] must be in 0..{self.num_classes - 1} (num_classes={self.num_classes} "
                f"object classes, no background), got {sorted(set(bad.tolist()))}"
            )
        return {**target, "labels": labels + self.label_offset}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the DAT blocks in the backward pass (less training memory, about one more forward)."""
        self.backbone.set_grad_checkpointing(enable)


class DATRetinaNet(ZeroBasedLabels, RetinaNet):
    """torchvision's RetinaNet with mmdet's anchors and test settings; ``num_classes`` object classes.

    Args:
        backbone: a P3-P7 :class:`DATFPN`.
        num_classes: object classes (labels ``0..num_classes - 1``).
        min_size, max_size: image resizing; **kwargs: further ``RetinaNet`` arguments.
    """

    label_offset = 0

    def __init__(
        self,
        backbone: DATFPN,
        num_classes: int = 80,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        **kwargs: Any,
    ) -> None:
        check_int("num_classes", num_classes)
        _check_torchvision_kwargs("DATRetinaNet", (RetinaNet,), kwargs)
        # per level (stride s): sizes 4 s 2^(i/3), i = 0, 1, 2; ratios h/w 0.5, 1, 2 -> 9 anchors per location
        sizes = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in (8, 16, 32, 64, 128))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        kwargs = {"detections_per_img": 100, "topk_candidates": 1000, **kwargs}
        super().__init__(backbone, num_classes, min_size, max_size, _MEAN, _STD, anchor_generator=anchors, **kwargs)
        self.num_classes = num_classes


class DATMaskRCNN(ZeroBasedLabels, MaskRCNN):
    """torchvision's Mask R-CNN with mmdet's RoIAlign and proposal counts; ``num_classes`` object classes.

    Args:
        backbone: a P2-P6 :class:`DATFPN`.
        num_classes: object classes (labels ``0..num_classes - 1``; torchvision's heads get one more).
        min_size, max_size: image resizing.
        anchor_sizes: one anchor size per FPN level P2-P6 (default torchvision's 32-512, for COCO-sized
            images; small images want small anchors), with ratios 0.5 / 1 / 2.
        representation_size, mask_channels: widths of the box head's two fully-connected layers
            (default 1024) and of the mask head's convolutions (default 256); smaller heads for small data.
        **kwargs: further ``MaskRCNN`` arguments.
    """

    def __init__(
        self,
        backbone: DATFPN,
        num_classes: int = 80,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        anchor_sizes: tuple[int, ...] | None = None,
        representation_size: int | None = None,
        mask_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_int("num_classes", num_classes)
        _check_torchvision_kwargs("DATMaskRCNN", (MaskRCNN, FasterRCNN), kwargs)
        kwargs = {
            "rpn_post_nms_top_n_train": 1000,
            "box_roi_pool": MultiScaleRoIAlign(_ROI_LEVELS, output_size=7, sampling_ratio=0),
            "mask_roi_pool": MultiScaleRoIAlign(_ROI_LEVELS, output_size=14, sampling_ratio=0),
            **kwargs,
        }
        if anchor_sizes is not None:
            if len(anchor_sizes) != 5:
                raise ValueError(f"anchor_sizes needs one size per level P2-P6 (5), got {list(anchor_sizes)}")
            kwargs["rpn_anchor_generator"] = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        heads_classes = num_classes + 1
        channels = backbone.out_channels
        if representation_size is not None:  # torchvision's heads at another width (its defaults: 1024)
            kwargs["box_head"] = TwoMLPHead(channels * 7 * 7, representation_size)
            kwargs["box_predictor"] = FastRCNNPredictor(representation_size, heads_classes)
        if mask_channels is not None:  # (its defaults: 256)
            kwargs["mask_head"] = MaskRCNNHeads(channels, (mask_channels,) * 4, 1)
            kwargs["mask_predictor"] = MaskRCNNPredictor(mask_channels, mask_channels, heads_classes)
        own_heads = representation_size is not None or mask_channels is not None
        if own_heads and (representation_size is None or mask_channels is None):
            raise ValueError("give both representation_size and mask_channels (or neither)")
        super().__init__(backbone, None if own_heads else heads_classes, min_size, max_size, _MEAN, _STD, **kwargs)
        self.num_classes = num_classes


class DATCascadeMaskRCNN(ZeroBasedLabels, CascadeMaskRCNN):
    """:class:`CascadeMaskRCNN` with ``num_classes`` object classes (labels ``0..num_classes - 1``)."""

    def __init__(self, backbone: DATFPN, num_classes: int = 80, **kwargs: Any) -> None:
        check_int("num_classes", num_classes)
        super().__init__(backbone, num_classes + 1, **kwargs)
        self.num_classes = num_classes


# ------------------------------------------------------------------------------------------------
# Registered variants. No published COCO weights: the cfgs carry the input size and normalisation.


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 80,
        "input_size": (3, 800, 1333),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "license": "apache-2.0",
        "paper_ids": "arXiv:2201.00520",
        "paper_name": "Vision Transformer with Deformable Attention",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        f"{arch}_dat_{size}": _cfg()
        for arch in ("retinanet", "mask_rcnn", "cascade_mask_rcnn")
        for size in DROP_PATH_RATES
    }
)


def _create(
    detector: Callable[..., nn.Module],
    variant: str,
    levels: Literal["p2-p6", "p3-p7"],
    pretrained: bool = False,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    drop_path_rate: float | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    fpn_channels: int = FPN_CHANNELS,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered detector (the factories' shared body).

    Args:
        detector: the detector class; variant: its registered name (``"{arch}_dat_{size}"``).
        levels: the FPN levels of :class:`DATFPN`.
        pretrained: load published COCO weights (none are published: raises unless the cfg names a file).
        num_classes: object classes (labels ``0..num_classes - 1``).
        pretrained_backbone: load DAT's ImageNet-1k weights into the backbone.
        drop_path_rate: DAT stochastic depth (default :data:`DROP_PATH_RATES` of the size).
        backbone_kwargs: further ``dat_{size}`` arguments (e.g. narrow ``dims`` for tests).
        fpn_channels: the FPN's width (the paper's: 256).
        **kwargs: detector arguments (``min_size``, ``max_size``, ...) and the registry's
            ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``.
    """
    size = variant.rsplit("_", 1)[1]

    def build(**detector_kwargs: Any) -> nn.Module:
        rate = DROP_PATH_RATES[size] if drop_path_rate is None else drop_path_rate
        backbone = dat_fpn(size, levels, pretrained_backbone and not pretrained, rate, backbone_kwargs, fpn_channels)
        return detector(backbone, **detector_kwargs)

    return build_model(build, variant, pretrained, num_classes=num_classes, **kwargs)


@register_model
def retinanet_dat_tiny(pretrained: bool = False, **kwargs: Any) -> DATRetinaNet:
    """RetinaNet on DAT-T: 38.5M parameters (arguments: see :func:`_create`)."""
    return _create(DATRetinaNet, "retinanet_dat_tiny", "p3-p7", pretrained, **kwargs)


@register_model
def retinanet_dat_small(pretrained: bool = False, **kwargs: Any) -> DATRetinaNet:
    """RetinaNet on DAT-S: 59.9M parameters (arguments: see :func:`_create`)."""
    return _create(DATRetinaNet, "retinanet_dat_small", "p3-p7", pretrained, **kwargs)


@register_model
def retinanet_dat_base(pretrained: bool = False, **kwargs: Any) -> DATRetinaNet:
    """RetinaNet on DAT-B: 98.5M parameters (arguments: see :func:`_create`)."""
    return _create(DATRetinaNet, "retinanet_dat_base", "p3-p7", pretrained, **kwargs)


@register_model
def mask_rcnn_dat_tiny(pretrained: bool = False, **kwargs: Any) -> DATMaskRCNN:
    """Mask R-CNN on DAT-T: 47.8M parameters (arguments: see :func:`_create`)."""
    return _create(DATMaskRCNN, "mask_rcnn_dat_tiny", "p2-p6", pretrained, **kwargs)


@register_model
def mask_rcnn_dat_small(pretrained: bool = False, **kwargs: Any) -> DATMaskRCNN:
    """Mask R-CNN on DAT-S: 69.2M parameters (arguments: see :func:`_create`)."""
    return _create(DATMaskRCNN, "mask_rcnn_dat_small", "p2-p6", pretrained, **kwargs)


@register_model
def mask_rcnn_dat_base(pretrained: bool = False, **kwargs: Any) -> DATMaskRCNN:
    """Mask R-CNN on DAT-B: 107.3M parameters (arguments: see :func:`_create`)."""
    return _create(DATMaskRCNN, "mask_rcnn_dat_base", "p2-p6", pretrained, **kwargs)


@register_model
def cascade_mask_rcnn_dat_tiny(pretrained: bool = False, **kwargs: Any) -> DATCascadeMaskRCNN:
    """Cascade Mask R-CNN on DAT-T: 85.7M parameters (arguments: see :func:`_create`)."""
    return _create(DATCascadeMaskRCNN, "cascade_mask_rcnn_dat_tiny", "p2-p6", pretrained, **kwargs)


@register_model
def cascade_mask_rcnn_dat_small(pretrained: bool = False, **kwargs: Any) -> DATCascadeMaskRCNN:
    """Cascade Mask R-CNN on DAT-S: 107.1M parameters (arguments: see :func:`_create`)."""
    return _create(DATCascadeMaskRCNN, "cascade_mask_rcnn_dat_small", "p2-p6", pretrained, **kwargs)


@register_model
def cascade_mask_rcnn_dat_base(pretrained: bool = False, **kwargs: Any) -> DATCascadeMaskRCNN:
    """Cascade Mask R-CNN on DAT-B: 145.1M parameters (arguments: see :func:`_create`)."""
    return _create(DATCascadeMaskRCNN, "cascade_mask_rcnn_dat_base", "p2-p6", pretrained, **kwargs)
