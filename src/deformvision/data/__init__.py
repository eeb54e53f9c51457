"""Datasets and augmentations on PyTorch and PIL (no torchvision).

- Classification: :class:`ImageFolder`, the transforms of :mod:`~deformvision.data.transforms_cls`
  with :func:`build_classification_transforms` (the DAT/Swin recipe), batch :class:`Mixup`/CutMix.
- Detection: :class:`CocoDetection`, the box-aware transforms of
  :mod:`~deformvision.data.transforms_det` with :func:`build_detection_transforms` (the Deformable
  DETR recipe), :func:`collate_detection`.
- Built-in digits datasets that need no download: :func:`build_digits_classification`,
  :func:`build_digits_detection`.

Transforms of the two tasks share names (``Compose``, ``ToTensor``, ...); import them from their
modules, e.g. ``from deformvision.data import transforms_det as T``.
"""

from deformvision.data import transforms_cls, transforms_det
from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS
from deformvision.data.builtin import build_digits_classification, build_digits_detection
from deformvision.data.coco import CocoDetection
from deformvision.data.collate import collate_detection
from deformvision.data.image_folder import ImageFolder
from deformvision.data.mixup import Mixup, smooth_one_hot
from deformvision.data.transforms_cls import build_classification_transforms
from deformvision.data.transforms_det import build_detection_transforms

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "CocoDetection",
    "ImageFolder",
    "Mixup",
    "build_classification_transforms",
    "build_detection_transforms",
    "build_digits_classification",
    "build_digits_detection",
    "collate_detection",
    "smooth_one_hot",
    "transforms_cls",
    "transforms_det",
]
