"""Training configuration: nested dataclasses, loaded from YAML and overridden from the command line.

A YAML file mirrors :class:`TrainConfig`: top-level run options and one mapping per section
(``model``, ``data``, ``aug``, ``loss``, ``optim``, ``schedule``, ``ema``, ``checkpoint``, ``log``)::

    base: dat_tiny_imagenet.yaml     # optional: another file (relative to this one) merged first
    model: {name: dat_tiny, kwargs: {drop_path_rate: 0.2}}
    optim: {lr: 1.0e-3, weight_decay: 0.05}

Overrides are ``"section.key=value"`` strings whose value is parsed as YAML (``optim.lr=1e-3``,
``aug.scales=[96,128]``, ``model.kwargs.dims=[32,64,128,256]``, ``resume=null``). Values are converted
to the field's type (``"1e-3"`` -> ``1e-3``); an unknown key raises :class:`ConfigError` listing the
valid ones. ``model.kwargs`` is free-form: it is passed to the model factory as is.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deformvision.data.transforms_det import COCO_SCALES
from deformvision.engine.checkpoint import atomic_write


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or value."""


@dataclass
class ModelConfig:
    """The model: a registered name, keyword arguments for its factory and optional initial weights."""

    name: str = "dat_tiny"
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. drop_path_rate, dims, with_box_refine
    checkpoint: str | None = None  # initial (pretrained) weights, loaded strictly by create_model
    grad_checkpointing: bool = False  # recompute blocks in backward (models with set_grad_checkpointing)


@dataclass
class DataConfig:
    """Where the data is and how it is batched.

    ``task``: ``classification`` (DAT), ``detection`` (Deformable DETR), ``instance`` (torchvision-style
    detectors: RetinaNet, Mask R-CNN, Cascade Mask R-CNN; boxes, and masks when the model predicts them)
    or ``semantic`` (Semantic FPN, UperNet).

    ``format``: ``image_folder`` (``root/<train_split>/<class>/...``), ``coco`` (images in
    ``root/<split>``, annotations ``root/<*_annotations>``; instance masks from their polygons / RLE),
    ``ade20k`` (``root`` holds ``ADEChallengeData2016``), ``segmentation_folder``
    (``root/<split>/images`` and ``root/<split>/labels``, PNG label maps with the images' stems) or
    ``digits`` (the built-in digits sets of each task, written to ``root`` on first use).
    """

    task: str = "classification"  # classification | detection | instance | semantic
    format: str = "image_folder"  # image_folder | coco | ade20k | segmentation_folder | digits
    root: str = "data"
    train_split: str = "train"
    val_split: str = "val"
    train_annotations: str = "annotations/instances_train2017.json"  # coco only
    val_annotations: str = "annotations/instances_val2017.json"  # coco only
    contiguous_ids: bool = True  # coco: labels 0..K-1 (else labels are category ids, as official COCO: 91)
    num_classes: int | None = None  # default: the dataset's (classes, or categories)
    reduce_zero_label: bool = False  # segmentation_folder: label 0 is "unlabelled" (ignored), the rest shift down
    img_size: int = 224  # classification input side (digits: also the rendered size)
    batch_size: int = 128  # per process
    eval_batch_size: int | None = None  # per process; default batch_size
    num_workers: int = 4
    pin_memory: bool = True


@dataclass
class AugConfig:
    """Augmentations: the classification recipe (DAT/Swin) and the detection recipe (Deformable DETR)."""

    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5  # horizontal-flip probability (classification and detection; 0: off)
    rand_augment: tuple[int, float] | None = (2, 9)  # (num_ops, magnitude); null: off
    reprob: float = 0.25  # random erasing
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, centre crop img_size
    mixup: float = 0.8  # Beta alpha (0: off)
    cutmix: float = 1.0  # Beta alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    scales: tuple[int, ...] = COCO_SCALES  # detection: shorter sides of the multi-scale resize
    max_size: int = 1333
    crop: tuple[int, int] | None = (384, 600)  # detection: RandomSizeCrop (min, max); null: no crop branch
    crop_resize: tuple[int, ...] = (400, 500, 600)
    val_size: int = 800
    # semantic segmentation (mmseg's ADE20K recipe)
    seg_scale: tuple[int, int] = (2048, 512)  # images are resized to fit this (long, short) scale ...
    seg_ratio_range: tuple[float, float] = (0.5, 2.0)  # ... times a random ratio in training
    seg_crop: tuple[int, int] = (512, 512)  # training crop (h, w); also the sliding-window size
    cat_max_ratio: float = 0.75  # a training crop is redrawn while one class covers more than this
    photometric: bool = True  # brightness / contrast / saturation / hue distortion in training
    seg_inference: str = "whole"  # evaluation: whole | slide (windows of seg_crop every slide_stride)
    slide_stride: tuple[int, int] = (341, 341)


@dataclass
class LossConfig:
    """Classification: label smoothing. Detection: Hungarian matching costs and loss weights."""

    label_smoothing: float = 0.1
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    focal_alpha: float = 0.25
    num_select: int = 100  # detections kept per image for evaluation


@dataclass
class OptimConfig:
    """AdamW with per-group learning rates and weight decay (see :func:`~deformvision.engine.optim.param_groups`)."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    lr_ref_batch: int | None = None  # scale lr, warmup_lr and min_lr by global batch / lr_ref_batch
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    backbone_lr: float | None = None  # learning rate of parameters under `backbone.` (default: lr)
    lr_mults: dict[str, float] = field(default_factory=dict)  # name keyword -> lr multiplier
    no_decay_1d: bool = True  # no weight decay on 1-d parameters (norm weights, biases)
    no_decay_keywords: tuple[str, ...] = ()  # nor on parameters whose name contains one of these
    clip_grad: float = 0.0  # max gradient norm (0: no clipping)


@dataclass
class ScheduleConfig:
    """Epochs and the learning-rate schedule, applied every step.

    ``cosine``: linear warmup from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then
    ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2`` (timm's, as DAT/Swin). ``step``: ``lr`` times
    ``gamma`` for every epoch of ``lr_drop`` passed (Deformable DETR's StepLR; the detection 1x / 3x
    schedules). ``poly``: ``min_lr + (lr - min_lr) (1 - t / T) ** power`` (mmseg's). ``step`` and ``poly``
    are ramped in linearly over ``warmup_epochs`` from ``warmup_lr / lr`` times their value (mmcv's
    linear warmup; set ``warmup_epochs: 0`` for none). ``warmup_lr`` and ``min_lr`` are relative to
    ``optim.lr`` (other groups and batch scaling follow proportionally).
    """

    name: str = "cosine"  # cosine | step | poly
    epochs: int = 300
    warmup_epochs: float = 20.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    lr_drop: tuple[int, ...] = (40,)
    gamma: float = 0.1
    power: float = 0.9  # poly


@dataclass
class EmaConfig:
    """Exponential moving average of the weights, evaluated next to the model."""

    enabled: bool = False
    decay: float = 0.9998


@dataclass
class CheckpointConfig:
    """Checkpoints in ``output_dir/checkpoints``: at every epoch end and every ``every_steps`` steps."""

    every_steps: int = 0  # 0: only at epoch ends
    keep: int = 2  # checkpoints kept (the newest)


@dataclass
class LogConfig:
    """JSON lines in ``output_dir/log.jsonl`` every ``interval`` steps and every epoch."""

    interval: int = 50
    progress: bool = True  # tqdm bar (only on a TTY, main process)


@dataclass
class TrainConfig:
    """Everything a training or evaluation run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: the local rank's GPU)
    deterministic: bool = False
    threads: int | None = None  # CPU threads per process for intra-op parallelism (default: torch's choice)
    amp: str = "none"  # none | auto (bf16 on CUDA, none on CPU) | bf16 | fp16 (CUDA only, with a gradient scaler)
    eval_every: int = 1  # epochs (the last epoch is always evaluated)
    resume: str | None = None  # a run directory, its last_checkpoint.json, or "auto" (output_dir if any)
    overwrite: bool = False  # replace an earlier run in output_dir (without it, and without resume, refused)


_CHOICES = {
    ("data", "task"): ("classification", "detection", "instance", "semantic"),
    ("data", "format"): ("image_folder", "coco", "ade20k", "segmentation_folder", "digits"),
    ("aug", "seg_inference"): ("whole", "slide"),
    ("optim", "name"): ("adamw", "sgd"),
    ("schedule", "name"): ("cosine", "step", "poly"),
    ("amp",): ("none", "auto", "bf16", "fp16"),
}
_POSITIVE = (("data", "batch_size"), ("schedule", "epochs"), ("log", "interval"), ("checkpoint", "keep"),
             ("eval_every",))  # fmt: skip
_PROBABILITIES = (("aug", "hflip"), ("aug", "reprob"), ("aug", "mixup_prob"), ("aug", "mixup_switch_prob"),
                  ("aug", "cat_max_ratio"))  # fmt: skip


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """The defaults, updated by the YAML file at ``path`` (and its ``base`` chain), then by ``overrides``."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", "1e-3")``-like pair, the value parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. optim.lr=1e-3)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of override {text!r} as YAML: {err}") from err
    return key.strip(), parsed


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict (missing keys keep their defaults)."""
    config = _build(TrainConfig, raw, ())
    for path, choices in _CHOICES.items():
        if _get(config, path) not in choices:
            raise ConfigError(f"{'.'.join(path)} must be one of {', '.join(choices)}; got {_get(config, path)!r}")
    for path in _POSITIVE:
        if _get(config, path) < 1:
            raise ConfigError(f"{'.'.join(path)} must be at least 1; got {_get(config, path)}")
    for path in _PROBABILITIES:
        if not 0.0 <= _get(config, path) <= 1.0:
            raise ConfigError(f"{'.'.join(path)} must be a probability in [0, 1]; got {_get(config, path)}")
    return config


def _get(config: TrainConfig, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """A plain nested dict (tuples as lists) that :func:`config_from_dict` turns back into ``config``."""
    return _plain(dataclasses.asdict(config))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically (a crash leaves the previous file or the new one)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping, merged over the mapping of its ``base`` file (recursively)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files include each other: {' -> '.join(map(str, (*seen, path)))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_yaml(path.parent / base, (*seen, path)), raw)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update; ``update`` wins (``model.kwargs`` merges key by key too)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for i, name in enumerate(parents):
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[last] = value


def _build(cls: type, raw: Any, path: tuple[str, ...]) -> Any:
    """An instance of dataclass ``cls`` from mapping ``raw``, converting and checking every value."""
    where = ".".join(path) or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        prefix = ".".join(path) + "." if path else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys of {where}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _convert(value, hints[name], (*path, name)) for name, value in raw.items()}
    return cls(**values)


def _convert(value: Any, hint: Any, path: tuple[str, ...]) -> Any:
    """``value`` as type ``hint`` (dataclasses, unions with None, tuples, dicts, int/float/bool/str)."""
    key = ".".join(path)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], (*path, str(k))) for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], path) for v in value)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
            return tuple(_convert(v, a, path) for v, a in zip(value, args, strict=True))
        return [_convert(v, args[0], path) for v in value]
    return _scalar(value, hint, key)


def _scalar(value: Any, hint: type, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
