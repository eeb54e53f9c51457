"""COCO detection and instance segmentation on DAT: RetinaNet, Mask R-CNN, Cascade Mask R-CNN.

The detectors are torchvision's (:class:`~torchvision.models.detection.RetinaNet`,
:class:`~torchvision.models.detection.MaskRCNN`) or built from torchvision's parts
(:class:`~deformvision.models.detection.cascade.CascadeMaskRCNN`), on a DAT + FPN backbone
(:class:`~deformvision.models.detection.backbone.DATFPN`), with 0-based labels; see
:mod:`deformvision.models.detection.models` for the registered variants and conventions.
"""

from deformvision.models.detection.backbone import DATFPN, dat_fpn
from deformvision.models.detection.cascade import CascadeMaskRCNN, CascadeRoIHeads
from deformvision.models.detection.models import DATCascadeMaskRCNN, DATMaskRCNN, DATRetinaNet

__all__ = [
    "DATFPN",
    "CascadeMaskRCNN",
    "CascadeRoIHeads",
    "DATCascadeMaskRCNN",
    "DATMaskRCNN",
    "DATRetinaNet",
    "dat_fpn",
]
