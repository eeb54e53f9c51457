"""A tiny name -> factory registry of model variants (``dv.list_models``, ``dv.create_model``)."""

import fnmatch
from collections.abc import Callable
from os import PathLike

from torch import nn

from deformvision.models._checkpoint import load_checkpoint

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name (decorator)."""
    name = factory.__name__
    if name in _MODEL_FACTORIES:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_FACTORIES[name] = factory
    return factory


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (e.g. ``"dat_*"``)."""
    return sorted(name for name in _MODEL_FACTORIES if fnmatch.fnmatch(name, pattern))


def create_model(name: str, *, checkpoint: str | PathLike | None = None, **kwargs) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: a name from :func:`list_models`.
        checkpoint: path to one of our safetensors files or an official checkpoint of the model
            family (``.pth``, a plain state dict or ``{'model': ...}``); converted by the model's
            ``checkpoint_filter`` (position tables resized to the model's size, etc.).
        **kwargs: model arguments such as ``num_classes``, ``img_size``, ``drop_path_rate``,
            ``features_only``, ``out_indices``.

    Returns:
        The model, in train mode as built by ``nn.Module``.
    """
    if name not in _MODEL_FACTORIES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _MODEL_FACTORIES[name](**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
