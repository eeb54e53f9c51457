"""Convert an official or Hugging Face checkpoint to one of our safetensors files.

The conversion itself is the model's own ``checkpoint_filter`` (official Deformable DETR, Hugging Face
Deformable DETR, official DAT and our own names are all read there); this module picks the model, checks
that the converted state dict fits it exactly, and writes the file atomically.
"""

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from deformvision._atomic import atomic_write
from deformvision.models import create_model, read_state_dict
from deformvision.models._checkpoint import check_state_dict
from deformvision.models.deformable_detr._hf_names import (
    huggingface_model_config,
    huggingface_to_official,
    is_huggingface_state_dict,
)

_NUM_CLASSES_KEYS = ("class_embed.0.weight", "cls_head.weight", "head.weight")  # DETR, official DAT, our DAT


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_checkpoint` wrote.

    Attributes:
        model: the registered model name the weights are for.
        model_kwargs: its keyword arguments (``create_model(model, **model_kwargs, checkpoint=dst)``).
        num_tensors: tensors in the written file.
        num_parameters: parameter elements of the model.
    """

    model: str
    model_kwargs: dict[str, Any]
    num_tensors: int
    num_parameters: int


def convert_checkpoint(
    src: str | PathLike,
    dst: str | PathLike,
    model: str | None = None,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ConversionResult:
    """Convert the checkpoint ``src`` to our safetensors file ``dst``, verified by a strict load.

    Args:
        src: an official Deformable DETR or DAT ``.pth``, a Hugging Face ``DeformableDetrForObjectDetection``
            file, or a Hugging Face directory (``model.safetensors`` / ``pytorch_model.bin``, and ``config.json``,
            from which the model and its sizes are read), or one of our files.
        dst: the ``.safetensors`` file to write (replaced atomically if it exists).
        model: registered model name; default: told from ``config.json`` or from the checkpoint's keys (see
            :func:`infer_model`).
        num_classes: classes of the model; default: those of the checkpoint's class head. Another number
            gives the model fresh class heads (the rest of the weights are converted).
        model_kwargs: further model arguments (e.g. ``num_queries``), over those read from ``config.json``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``dst`` is not a ``.safetensors`` path, the model cannot be told or built with these
            arguments, or the converted weights do not fit it (the message names the keys).
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {dst}")
    state_dict = read_state_dict(src)
    if is_huggingface_state_dict(state_dict):
        state_dict = huggingface_to_official(state_dict)
    kwargs: dict[str, Any] = {}
    config_file = src / "config.json"
    if src.is_dir() and config_file.is_file():
        config_model, kwargs = huggingface_model_config(json.loads(config_file.read_text()))
        model = model or config_model
    model = model or infer_model(state_dict)
    if num_classes is None and "num_classes" not in kwargs:
        num_classes = head_num_classes(state_dict)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs.update(model_kwargs or {})

    try:
        net = create_model(model, **kwargs)
    except TypeError as err:  # an argument the model does not take
        raise ValueError(f"cannot build {model} with {kwargs}: {err}") from err
    converted = net.checkpoint_filter(state_dict) if hasattr(net, "checkpoint_filter") else state_dict
    check_state_dict(net, converted, source=str(src))
    net.load_state_dict(converted)
    tensors = net.state_dict()
    metadata = {"format": "deformvision", "model": model, "model_kwargs": json.dumps(kwargs), "source": src.name}
    save_safetensors(tensors, dst, metadata)
    return ConversionResult(model, kwargs, len(tensors), sum(p.numel() for p in net.parameters()))


def infer_model(state_dict: dict[str, Tensor]) -> str:
    """The registered model an official or Hugging Face checkpoint is for, told from its keys and shapes.

    Deformable DETR (ResNet-50): two-stage if it has ``transformer.enc_output``, box refinement if it has the
    decoder's head aliases, single-scale if it has one level (the dilated "DC5" backbone has the same weights:
    name ``deformable_detr_r50_single_scale_dc5`` explicitly), else multi-scale. DAT: tiny, small, base or
    base_384 from the stem width, the depth of stage 3 and the window size.

    Raises:
        ValueError: none of these (e.g. one of our own files, which do not say which variant they are).
    """
    if is_huggingface_state_dict(state_dict):
        state_dict = huggingface_to_official(state_dict)
    if "transformer.level_embed" in state_dict and any(k.startswith("backbone.0.body.") for k in state_dict):
        if "transformer.enc_output.weight" in state_dict:
            return "deformable_detr_r50_two_stage"
        if any(k.startswith("transformer.decoder.bbox_embed.") for k in state_dict):
            return "deformable_detr_r50_box_refine"
        if state_dict["transformer.level_embed"].shape[0] == 1:
            return "deformable_detr_r50_single_scale"
        return "deformable_detr_r50"
    if "patch_proj.0.weight" in state_dict:
        width = state_dict["patch_proj.0.weight"].shape[0]
        deep = any(k.startswith("stages.2.attns.6.") for k in state_dict)  # DAT-T has 6 blocks there, S/B 18
        table = state_dict.get("stages.0.attns.0.relative_position_bias_table")
        window_12 = table is not None and table.shape[0] == (2 * 12 - 1) ** 2
        names = {
            (96, False, False): "dat_tiny",
            (96, True, False): "dat_small",
            (128, True, False): "dat_base",
            (128, True, True): "dat_base_384",
        }
        if (width, deep, window_12) in names:
            return names[width, deep, window_12]
    raise ValueError("cannot tell the model from the checkpoint; name it (--model)")


def save_safetensors(state_dict: dict[str, Tensor], path: str | PathLike, metadata: dict[str, str]) -> None:
    """Write ``state_dict`` to the safetensors file ``path`` atomically (:func:`~deformvision._atomic.atomic_write`).

    Tensors are copied to contiguous CPU memory first (safetensors refuses tensors that share memory).
    """
    path = Path(path)
    tensors = {key: value.detach().cpu().clone().contiguous() for key, value in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def head_num_classes(state_dict: dict[str, Tensor]) -> int | None:
    """Rows of the class head of a checkpoint with official or our names, None without one."""
    key = next((k for k in _NUM_CLASSES_KEYS if k in state_dict), None)
    return state_dict[key].shape[0] if key else None
