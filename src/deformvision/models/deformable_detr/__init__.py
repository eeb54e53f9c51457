"""Deformable DETR (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
ICLR 2021)."""

from deformvision.models.deformable_detr import models  # noqa: F401  (register the variants)
from deformvision.models.deformable_detr.criterion import SetCriterion, weight_dict, weighted_loss
from deformvision.models.deformable_detr.detector import BoxMLP, DeformableDETR, pad_images
from deformvision.models.deformable_detr.matcher import HungarianMatcher
from deformvision.models.deformable_detr.postprocess import PostProcess
from deformvision.models.deformable_detr.transformer import DeformableTransformer, TransformerOutput

__all__ = [
    "BoxMLP",
    "DeformableDETR",
    "DeformableTransformer",
    "HungarianMatcher",
    "PostProcess",
    "SetCriterion",
    "TransformerOutput",
    "pad_images",
    "weight_dict",
    "weighted_loss",
]
