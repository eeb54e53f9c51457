"""COCO detection and instance segmentation on DAT: RetinaNet, Mask R-CNN, Cascade Mask R-CNN.

The detectors are torchvision's (:class:`~torchvision.models.detection.RetinaNet`,
:class:`~torchvision.models.detection.MaskRCNN`) or built from torchvision's parts
(:class:`~deformvision.models.detection.cascade.CascadeMaskRCNN`), on a DAT + FPN backbone
(:class:`~deformvision.models.detection.backbone.DATFPN`), with 0-based labels; see
:mod:`deformvision.models.detection.models` for the registered variants and conventions.

FLOPs: ``deformvision flops mask_rcnn_dat_tiny --input-size 800 1280`` counts a real CPU forward pass
(the NMS of proposals and detections has no shape-only version for the meta device). A random model
gives 1000 proposals and no detections, so the mask head is not counted: 252 GMACs at 800x1280
(187 of them backbone + FPN), against the paper's 272G (mmdet's counter: mask head on 100 RoIs, about
68 GMACs more, and no attention matmuls, about 41 less). The detectors resize their input (short side
800, long side at most 1333), so the count is that of the resized image whatever ``--input-size`` says.

torch.compile: ``torch.compile(model)`` of a detector in eval mode runs and matches eager (tried on a
narrow Mask R-CNN, 2 images of ~100 px, torch 2.14 on the CPU: boxes within 2e-5), but is not useful:
the detectors' data-dependent parts (RPN top-k and NMS, the per-detection mask pasting with Python
``int`` of box coordinates, per-image loops) cause dozens of graph breaks and recompile for every new
number of detections and every new image size. The first call took 8 minutes, a repeated call 15 s
(eager: about 2 s), and a third input size was still recompiling after 5 minutes. Compile the backbone
instead (``model.backbone = torch.compile(model.backbone)``), where the compute is; not tested here.
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
