"""Registered Deformable DETR variants: the official configurations (``configs/r50_deformable_detr*.sh``).

Every factory takes ``num_classes`` (default 91, COCO's official head size) and any
:class:`~deformvision.models.deformable_detr.detector.DeformableDETR` argument as a keyword
(``with_box_refine``, ``two_stage``, ``num_queries``, ``d_model``, ...), which overrides the variant's
defaults. Official checkpoints load with ``create_model(name, checkpoint=path)`` through
:meth:`DeformableDETR.checkpoint_filter`.

| name | backbone maps (stride) | levels | box refine | two-stage | params |
|---|---|---|---|---|---|
| ``deformable_detr_r50_single_scale`` | C5 (32) | 1 | | | 34,066,593 |
| ``deformable_detr_r50_single_scale_dc5`` | C5 dilated (16) | 1 | | | 34,066,593 |
| ``deformable_detr_r50`` | C3-C5 (8, 16, 32) | 4 | | | 40,069,665 |
| ``deformable_detr_r50_box_refine`` | C3-C5 | 4 | yes | | 40,849,660 |
| ``deformable_detr_r50_two_stage`` | C3-C5 | 4 | yes | yes | 41,181,529 |
| ``deformable_detr_dat_tiny`` | DAT-T stages 1-3 (8, 16, 32) | 4 | | | 40,643,483 |
| ``deformable_detr_dat_digits`` | narrow DAT, for ~128-px images (the demo) | 4 | yes | yes | 2.6M |

The ResNet-50 backbones use frozen BatchNorm and freeze the stem and ``layer1`` (as the official code); the
parameter counts include the frozen ones (222,400 of them).
"""

from typing import Any

from deformvision.models._registry import register_model
from deformvision.models.dat import dat_tiny
from deformvision.models.deformable_detr.detector import DeformableDETR
from deformvision.models.resnet import resnet50


def _r50(out_indices: tuple[int, ...], dilation: bool, num_classes: int, defaults: dict, **kwargs) -> DeformableDETR:
    backbone = resnet50(features_only=True, out_indices=out_indices, dilation=dilation)
    return DeformableDETR(backbone, num_classes, **{**defaults, **kwargs})


@register_model
def deformable_detr_r50(num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Multi-scale Deformable DETR, ResNet-50: 40.1M parameters."""
    return _r50((1, 2, 3), False, num_classes, {}, **kwargs)


@register_model
def deformable_detr_r50_single_scale(num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Single-scale Deformable DETR (C5 only), ResNet-50: 34.1M parameters."""
    return _r50((3,), False, num_classes, {"num_feature_levels": 1}, **kwargs)


@register_model
def deformable_detr_r50_single_scale_dc5(num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Single-scale Deformable DETR on a dilated C5 (stride 16), ResNet-50: 34.1M parameters."""
    return _r50((3,), True, num_classes, {"num_feature_levels": 1}, **kwargs)


@register_model
def deformable_detr_r50_box_refine(num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Deformable DETR with iterative box refinement, ResNet-50: 40.8M parameters."""
    return _r50((1, 2, 3), False, num_classes, {"with_box_refine": True}, **kwargs)


@register_model
def deformable_detr_r50_two_stage(num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Two-stage Deformable DETR with box refinement, ResNet-50: 41.2M parameters."""
    return _r50((1, 2, 3), False, num_classes, {"with_box_refine": True, "two_stage": True}, **kwargs)


@register_model
def deformable_detr_dat_tiny(num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Multi-scale Deformable DETR on a DAT-T backbone (stages 1-3: 192/384/768 channels, strides 8/16/32)."""
    backbone = dat_tiny(features_only=True, out_indices=(1, 2, 3))
    return DeformableDETR(backbone, num_classes, **kwargs)


# The small DAT of deformable_detr_dat_digits: strides 8/16/32 from stages 1-3 (a stride-4 stem), window
# attention in stages 0-1, deformable attention in stages 2-3 (8x8 and 4x4 maps at 128 pixels).
DIGITS_BACKBONE: dict[str, Any] = {
    "img_size": 128, "dims": (32, 64, 128, 256), "depths": (1, 1, 2, 2), "heads": (1, 2, 4, 8),
    "groups": (-1, -1, 2, 4), "window_sizes": (8, 8, 8, 4), "stage_spec": (("L",), ("S",), ("L", "D"), ("L", "D")),
    "out_indices": (1, 2, 3), "drop_path_rate": 0.0,
}  # fmt: skip
DIGITS_DETR: dict[str, Any] = {
    "num_queries": 30, "d_model": 64, "nheads": 4, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 256,
    "dropout": 0.0, "with_box_refine": True, "two_stage": True,
}  # fmt: skip


@register_model
def deformable_detr_dat_digits(num_classes: int = 10, backbone_kwargs: dict | None = None, **kwargs) -> DeformableDETR:
    """Two-stage Deformable DETR with box refinement on a narrow DAT, for small images (2.6M parameters).

    ``backbone_kwargs`` update :data:`DIGITS_BACKBONE` (the ``dat_tiny`` arguments), ``kwargs``
    :data:`DIGITS_DETR` (the :class:`DeformableDETR` arguments).
    """
    backbone = dat_tiny(features_only=True, **{**DIGITS_BACKBONE, **(backbone_kwargs or {})})
    return DeformableDETR(backbone, num_classes, **{**DIGITS_DETR, **kwargs})
