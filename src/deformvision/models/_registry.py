"""The registry of model variants (``dv.list_models``, ``dv.create_model``) and their pretrained cfgs.

A model family registers one factory per variant with :func:`register_model` and declares the
variants' pretrained cfgs in a module-level ``default_cfgs`` (timm's
:func:`~timm.models.generate_default_cfgs`), defined above the factories. The families that are
image classifiers (DAT) also register the same factories with :func:`timm.models.register_model`,
so ``timm.create_model("dat_tiny")`` and ``dv.create_model("dat_tiny")`` call one function and agree.
Detectors stay in our registry only.

Each factory builds its model through :func:`build_model`, which resolves the pretrained cfg
(``"name.tag"``, a dict, or the variant's default), attaches it as ``model.pretrained_cfg`` and
loads the weights when ``pretrained=True``.
"""

import dataclasses
import fnmatch
import inspect
import sys
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

from timm.models import PretrainedCfg
from torch import nn

from deformvision._checks import check_bool
from deformvision.models._checkpoint import load_checkpoint
from deformvision.models._pretrained import load_pretrained

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {}  # "name" (its default tag) and "name.tag"


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name (decorator), with its module's ``default_cfgs``."""
    name = factory.__name__
    if name in _MODEL_FACTORIES:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_FACTORIES[name] = factory
    default_cfg = getattr(sys.modules[factory.__module__], "default_cfgs", {}).get(name)
    if default_cfg is not None:
        for i, tag in enumerate(default_cfg.tags):
            cfg = dataclasses.replace(default_cfg.cfgs[tag], architecture=name, tag=tag or None)
            _PRETRAINED_CFGS[f"{name}.{tag}" if tag else name] = cfg
            if i == 0:
                _PRETRAINED_CFGS[name] = cfg
    return factory


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (e.g. ``"dat_*"``).

    With ``pretrained=True``: the ``"name.tag"`` of every published set of weights instead.
    """
    if pretrained:
        names = [k for k, cfg in _PRETRAINED_CFGS.items() if "." in k and cfg.has_weights]
    else:
        names = list(_MODEL_FACTORIES)
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The pretrained cfg of ``"name"`` (its default weights) or ``"name.tag"``.

    Raises:
        ValueError: unknown model or tag; the message lists the known ones.
    """
    if name not in _PRETRAINED_CFGS:
        model = name.split(".")[0]
        known = [k for k in _PRETRAINED_CFGS if k.split(".")[0] == model and "." in k]
        raise ValueError(f"no pretrained cfg {name!r}; known for {model!r}: {known or 'none'}")
    return _PRETRAINED_CFGS[name]


def build_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: str | PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for a registered variant, with its pretrained cfg (and weights).

    Args:
        model_cls: the model class (or any callable returning the model).
        variant: the registered name, e.g. ``"dat_tiny"``.
        pretrained: load the weights the cfg names (downloaded once, SHA-256 checked, cached).
        pretrained_cfg: a tag (``"in1k"``), a dict or a :class:`PretrainedCfg`; default: the
            variant's default cfg. Same meaning as in :func:`timm.create_model`.
        pretrained_cfg_overlay: fields replacing the cfg's (e.g. ``{"url": ...}`` or ``{"file": ...}``).
        cache_dir: where downloaded weights are cached (default: under ``torch.hub.get_dir()``).
        **kwargs: the model's arguments (``num_classes``, ``img_size``, ``features_only``...).
    """
    if isinstance(pretrained_cfg, PretrainedCfg):
        cfg = pretrained_cfg
    elif isinstance(pretrained_cfg, dict):
        cfg = PretrainedCfg(**pretrained_cfg)
    else:
        cfg = get_pretrained_cfg(f"{variant}.{pretrained_cfg}" if pretrained_cfg else variant)
    cfg = dataclasses.replace(cfg, architecture=variant, **(pretrained_cfg_overlay or {}))
    check_known_kwargs(variant, model_cls, kwargs)
    model = model_cls(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    if pretrained:
        load_pretrained(model, cfg, cache_dir)
    return model


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: a name from :func:`list_models`, optionally with a weights tag (``"dat_tiny.in1k"``).
        pretrained: load the published weights of the variant (downloaded on first use, SHA-256
            checked, cached; offline afterwards). A model built for another number of classes keeps
            its own fresh head.
        checkpoint: path to one of our safetensors files or an official / Hugging Face checkpoint
            of the model family (``.pth``, a plain state dict or ``{'model': ...}``); converted by
            the model's ``checkpoint_filter`` (position tables resized to the model's size, etc.).
            Not together with ``pretrained``.
        **kwargs: model arguments such as ``num_classes``, ``img_size``, ``drop_path_rate``,
            ``features_only``, ``out_indices``, and timm's ``pretrained_cfg``,
            ``pretrained_cfg_overlay``, ``cache_dir``.

    Returns:
        The model, in train mode as built by ``nn.Module``, with ``model.pretrained_cfg``.
    """
    base, _, tag = name.partition(".")
    if base not in _MODEL_FACTORIES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if tag:
        if kwargs.get("pretrained_cfg") is not None:
            raise ValueError(f"give the weights tag either in the name ({name!r}) or as pretrained_cfg, not both")
        kwargs["pretrained_cfg"] = tag
    check_bool("pretrained", pretrained)
    if pretrained and checkpoint is not None:
        raise ValueError("give either pretrained=True or checkpoint=PATH, not both")
    model = _MODEL_FACTORIES[base](pretrained=pretrained, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


# ------------------------------------------------------------------------------------------------
# Argument checks of the model constructors and factories: each error names the argument, the value
# and what is allowed (TypeError for a wrong type, ValueError for a value out of range).


def check_known_kwargs(variant: str, model_cls: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments that ``model_cls`` does not take, listing those it takes.

    A ``model_cls`` with ``**kwargs`` of its own checks them itself (nothing is checked here).
    """
    params = inspect.signature(model_cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{variant} got {unknown_arguments(unknown)}; valid: {', '.join(params)}")


def unknown_arguments(names: Sequence[str]) -> str:
    """``"an unexpected keyword argument 'x'"`` (Python's own words) or ``"unexpected keyword arguments 'x', 'y'"``."""
    quoted = ", ".join(map(repr, names))
    return f"an unexpected keyword argument {quoted}" if len(names) == 1 else f"unexpected keyword arguments {quoted}"
