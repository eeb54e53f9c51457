"""Datasets and their augmentations (timm for classification, ``torchvision.transforms.v2`` for detection).

- Classification: :class:`ImageFolder` and :func:`build_classification_transforms` (the DAT/Swin
  recipe, timm's ``create_transform``); batch Mixup/CutMix is timm's ``Mixup``.
- Detection: :class:`CocoDetection`, the Deformable DETR recipe on ``transforms.v2`` with
  ``tv_tensors.BoundingBoxes`` (:func:`build_detection_transforms`, :mod:`~deformvision.data.transforms_det`),
  :func:`collate_detection`; ``CocoDetection(masks=True)`` adds instance masks, and
  :func:`build_instance_transforms` is the pipeline for torchvision-style detectors (Mask R-CNN, ...).
- Semantic segmentation: :class:`SegmentationFolder`, :class:`ADE20K` and mmseg's ADE20K recipe on
  ``transforms.v2`` (:func:`build_segmentation_transforms`, :mod:`~deformvision.data.transforms_seg`).
- Built-in digits datasets that need no download: :func:`build_digits_classification`,
  :func:`build_digits_detection`, :func:`build_digits_instance` (masks),
  :func:`build_digits_semantic` (label maps).

Random transforms draw from the global RNGs; :func:`deformvision.data._random.seeded` makes a call
reproducible (the training data seeds every sample, see :class:`deformvision.engine.data.SeededTransform`).
"""

from deformvision.data import transforms_cls, transforms_det, transforms_seg
from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS
from deformvision.data.builtin import (
    DIGITS_SEMANTIC_CLASSES,
    build_digits_classification,
    build_digits_detection,
    build_digits_instance,
    build_digits_semantic,
)
from deformvision.data.coco import CocoDetection
from deformvision.data.collate import collate_detection
from deformvision.data.image_folder import ImageFolder
from deformvision.data.segmentation import ADE20K, ADE20K_CLASSES, SegmentationFolder
from deformvision.data.transforms_cls import build_classification_transforms
from deformvision.data.transforms_det import build_detection_transforms, build_instance_transforms
from deformvision.data.transforms_seg import build_segmentation_transforms

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "DIGITS_SEMANTIC_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "CocoDetection",
    "ImageFolder",
    "SegmentationFolder",
    "build_classification_transforms",
    "build_detection_transforms",
    "build_instance_transforms",
    "build_segmentation_transforms",
    "build_digits_classification",
    "build_digits_detection",
    "build_digits_instance",
    "build_digits_semantic",
    "collate_detection",
    "transforms_cls",
    "transforms_det",
    "transforms_seg",
]
