"""Safe checkpoint reading and strict loading with clear errors.

Checkpoints are read without unpickling arbitrary objects: safetensors files directly, PyTorch
files with ``torch.load(weights_only=True)``. A model converts foreign formats (official
checkpoints, other resolutions) with its ``checkpoint_filter(state_dict) -> state_dict`` method.
"""

import logging
from os import PathLike
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the model's state dict, most specific first.
_NESTED_STATE_DICT_KEYS = ("model", "state_dict", "module")
# Weight files of a checkpoint directory (Hugging Face ``save_pretrained``), preferred first.
_DIRECTORY_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(path: str | PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or PyTorch file, on the CPU.

    A PyTorch file may hold the state dict itself or nest it under ``'model'`` / ``'state_dict'``
    (as official training scripts save); a ``module.`` prefix left by DistributedDataParallel is
    removed. A directory stands for the file in it that Hugging Face's ``save_pretrained`` writes
    (``model.safetensors``, else ``pytorch_model.bin``).

    Raises:
        FileNotFoundError: the file does not exist (or the directory has neither file).
        ValueError: the file is corrupt, not a checkpoint, or holds no tensors.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in _DIRECTORY_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"checkpoint directory {path} has no {' or '.join(_DIRECTORY_FILES)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read safetensors checkpoint {path}: {err}") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt zip, truncated file, pickled objects other than tensors
            raise ValueError(
                f"cannot read PyTorch checkpoint {path} (with weights_only=True): {type(err).__name__}: {err}"
            ) from err
        state_dict = _unwrap(obj, path)
    if not state_dict:
        raise ValueError(f"checkpoint {path} holds no tensors")
    return state_dict


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = next((k for k in _NESTED_STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            raise ValueError(f"checkpoint {path} has no state dict (top-level keys: {sorted(obj)[:10]})")
        obj = obj[nested]
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state dict")
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(model: nn.Module, path: str | PathLike) -> None:
    """Load a checkpoint file into ``model`` strictly (every key used, every shape equal).

    The model's ``checkpoint_filter`` (if it has one) first converts the file's state dict to the
    model's names and sizes.

    Raises:
        ValueError: keys are missing or unexpected, or shapes differ; the message names them.
    """
    state_dict = read_state_dict(path)
    if hasattr(model, "checkpoint_filter"):
        state_dict = model.checkpoint_filter(state_dict)
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict)


_FLOAT8 = {getattr(torch, name) for name in dir(torch) if name.startswith("float8_")}


def _same_kind(stored: torch.dtype, wanted: torch.dtype) -> bool:
    """Whether a tensor of dtype ``stored`` loads into one of ``wanted`` without changing its meaning.

    Floating point into floating point (any precision but float8, whose values need a scale), integers
    into integers, bool into bool, complex into complex; never across kinds (an integer tensor copied into
    a float parameter is almost always a wrong file).
    """
    if stored in _FLOAT8:
        return stored == wanted
    kinds = (lambda d: d.is_floating_point, lambda d: d.is_complex, lambda d: d == torch.bool)
    return all(kind(stored) == kind(wanted) for kind in kinds)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise a ValueError naming the keys of ``state_dict`` that do not fit ``model`` exactly.

    Keys must match, and so must shapes and the kind of dtype (see :func:`_same_kind`).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    wrong_kind = [
        f"{k}: checkpoint {state_dict[k].dtype} vs model {v.dtype}"
        for k, v in expected.items()
        if k in state_dict and not _same_kind(state_dict[k].dtype, v.dtype)
    ]
    problems = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatch", mismatched),
        ("dtype mismatch", wrong_kind),
    ):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
