"""Checkpoint conversion: official and Hugging Face files -> our safetensors (the ``convert`` command).

This package is the batch command only: read a file, apply the model's name map, check the strict fit and write
safetensors. The name maps live beside the models: each model's ``checkpoint_filter`` reads official and our
names (DAT's rule table in :mod:`deformvision.models._dat_official`), and Hugging Face Deformable DETR names are
mapped to the official ones by :mod:`deformvision.models.deformable_detr._hf_names`, whose functions are
re-exported here.
"""

from deformvision.convert.checkpoint import ConversionResult, convert_checkpoint, infer_model, save_safetensors
from deformvision.models.deformable_detr._hf_names import (
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
