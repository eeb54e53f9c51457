"""Model families and the registry (:func:`create_model`, :func:`list_models`)."""

from deformvision.models import (  # noqa: F401  (register their variants)
    dat,
    deformable_detr,
    detection,
    resnet,
    segmentation,
)
from deformvision.models._checkpoint import load_checkpoint, read_state_dict
from deformvision.models._pretrained import load_pretrained
from deformvision.models._registry import create_model, get_pretrained_cfg, list_models, register_model

__all__ = [
    "create_model",
    "get_pretrained_cfg",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "read_state_dict",
    "register_model",
]
