"""Checkpoint conversion: official and Hugging Face files -> our safetensors (the ``convert`` command).

The name mappings live with the models (their ``checkpoint_filter``); Hugging Face Deformable DETR names are
mapped to the official ones in :mod:`deformvision.convert.huggingface`.
"""

from deformvision.convert.checkpoint import ConversionResult, convert_checkpoint, infer_model, save_safetensors
from deformvision.convert.huggingface import (
    huggingface_model_config,
    huggingface_to_official,
    is_huggingface_state_dict,
)

__all__ = [
    "ConversionResult",
    "convert_checkpoint",
    "huggingface_model_config",
    "huggingface_to_official",
    "infer_model",
    "is_huggingface_state_dict",
    "save_safetensors",
]
