"""Semantic segmentation: the DAT paper's ADE20K models (Semantic FPN, UperNet) and sliding-window inference."""

from deformvision.models.segmentation import models  # noqa: F401  (register the variants)
from deformvision.models.segmentation.heads import PPM, ConvBNReLU, FCNHead, FPNHead, UPerHead
from deformvision.models.segmentation.inference import slide_inference, sliding_windows, whole_inference
from deformvision.models.segmentation.models import dat_backbone, semantic_fpn, upernet
from deformvision.models.segmentation.segmentor import EncoderDecoder, FPNNeck

__all__ = [
    "PPM",
    "ConvBNReLU",
    "EncoderDecoder",
    "FCNHead",
    "FPNHead",
    "FPNNeck",
    "UPerHead",
    "dat_backbone",
    "semantic_fpn",
    "slide_inference",
    "sliding_windows",
    "upernet",
    "whole_inference",
]
