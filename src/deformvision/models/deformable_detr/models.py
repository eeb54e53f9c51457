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
| ``deformable_detr_dat_tiny`` | DAT-T stages 1-3 (8, 16, 32) | 4 | | | |

The ResNet-50 backbones use frozen BatchNorm and freeze the stem and ``layer1`` (as the official code); the
parameter counts include the frozen ones (222,400 of them).
"""

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
