"""Training configuration: nested dataclasses, loaded from YAML and overridden from the command line.

A YAML file mirrors :class:`TrainConfig`: top-level run options and one mapping per section
(``model``, ``data``, ``aug``, ``loss``, ``optim``, ``schedule``, ``ema``, ``checkpoint``, ``log``)::

    base: dat_tiny_imagenet.yaml     # optional: another file (relative to this one) merged first
    model: {name: dat_tiny, kwargs: {drop_path_rate: 0.2}}
    optim: {lr: 1.0e-3, weight_decay: 0.05}

Overrides are ``"section.key=value"`` strings whose value is parsed as YAML (``optim.lr=1e-3``,
``aug.scales=[96,128]``, ``model.kwargs.dims=[32,64,128,256]``, ``resume=null``). Values are converted
to the field's type (``"1e-3"`` -> ``1e-3``); an unknown key raises :class:`ConfigError` listing the
valid ones. ``model.kwargs`` is free-form: it is passed to the model factory as is (the model checks it).

Every other key states its allowed values once, beside its field (a :class:`Rule`: a range, choices or a
pattern); :func:`validate_config` checks them all, every float is finite, and the relations between keys
hold (``schedule.min_lr <= optim.lr``, ``schedule.warmup_epochs <= schedule.epochs``, ...). A bad value
raises ``ConfigError("optim.lr = -1.0: must be > 0")``: the key, the value and what is allowed.
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deformvision._atomic import write_text_atomic
from deformvision.data.transforms_det import COCO_SCALES


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or value."""


@dataclass(frozen=True)
class Rule:
    """What a key allows: a range (``low``/``high``, open or closed), choices or a pattern (for a list or a
    mapping: every item, every value; ``None``, where the key's type allows it, always passes)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False  # high itself is refused
    choices: tuple[str, ...] = ()
    pattern: str = ""  # a regular expression the whole string must match
    meaning: str = ""  # what the pattern allows, in words

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``"must be > 0"``), or ``None`` if it is allowed."""
        if self.choices:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if self.pattern:
            return None if re.fullmatch(self.pattern, value) else f"must be {self.meaning}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return self.describe() if too_low or too_high else None

    def describe(self) -> str:
        """The range in words: ``"must be > 0"``, ``"must be in [0, 1)"``."""
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must be in {opening}{_number(self.low)}, {_number(self.high)}{closing}"
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {_number(self.low)}"
        return f"must be {'<' if self.high_open else '<='} {_number(self.high)}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_POSITIVE = Rule(low=0, low_open=True)
_NON_NEGATIVE = Rule(low=0)
_COUNT = Rule(low=1)  # an int where 0 is meaningless (also sizes in pixels)
_PROBABILITY = Rule(0, 1)
_TEXT = Rule(pattern=r"(?s).*\S.*", meaning="a non-empty string")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")  # the `compile` key: torch.compile modes
_DEVICE = Rule(pattern=r"auto|cpu|mps|cuda(:\d+)?", meaning="auto, cpu, cuda, cuda:N or mps")


def _key(default: Any, rule: Rule | tuple[Rule, ...]) -> Any:
    """A dataclass field with its allowed values: ``rule``, or one rule per item of a fixed-length tuple."""
    return field(default=default, metadata={"rule": rule})


@dataclass
class ModelConfig:
    """The model: a registered name, keyword arguments for its factory and optional initial weights."""

    name: str = _key("dat_tiny", _TEXT)
    kwargs: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. drop_path_rate, dims): the model checks
    checkpoint: str | None = _key(None, _TEXT)  # initial (pretrained) weights, loaded strictly by create_model
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

    task: str = _key("classification", Rule(choices=("classification", "detection", "instance", "semantic")))
    format: str = _key(
        "image_folder", Rule(choices=("image_folder", "coco", "ade20k", "segmentation_folder", "digits"))
    )
    root: str = _key("data", _TEXT)
    train_split: str = _key("train", _TEXT)
    val_split: str = _key("val", _TEXT)
    train_annotations: str = _key("annotations/instances_train2017.json", _TEXT)  # coco only
    val_annotations: str = _key("annotations/instances_val2017.json", _TEXT)  # coco only
    contiguous_ids: bool = True  # coco: labels 0..K-1 (else labels are category ids, as official COCO: 91)
    num_classes: int | None = _key(None, _COUNT)  # default: the dataset's (classes, or categories)
    reduce_zero_label: bool = False  # segmentation_folder: label 0 is "unlabelled" (ignored), the rest shift down
    img_size: int = _key(224, Rule(low=32))  # classification input side (digits: also the rendered size)
    batch_size: int = _key(128, _COUNT)  # per process
    eval_batch_size: int | None = _key(None, _COUNT)  # per process; default batch_size
    num_workers: int = _key(4, _NON_NEGATIVE)
    pin_memory: bool = True


@dataclass
class AugConfig:
    """Augmentations: the classification recipe (DAT/Swin) and the detection recipe (Deformable DETR)."""

    scale: tuple[float, float] = _key((0.08, 1.0), Rule(0, 1, low_open=True))  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = _key((3 / 4, 4 / 3), _POSITIVE)
    hflip: float = _key(0.5, _PROBABILITY)  # horizontal-flip probability (classification and detection; 0: off)
    rand_augment: tuple[int, float] | None = _key((2, 9), (_COUNT, Rule(0, 10)))  # (num_ops, magnitude); null: off
    reprob: float = _key(0.25, _PROBABILITY)  # random erasing
    crop_pct: float = _key(0.875, Rule(0, 1, low_open=True))  # eval: resize to img_size / crop_pct, crop img_size
    mixup: float = _key(0.8, _NON_NEGATIVE)  # Beta alpha (0: off)
    cutmix: float = _key(1.0, _NON_NEGATIVE)  # Beta alpha (0: off)
    mixup_prob: float = _key(1.0, _PROBABILITY)
    mixup_switch_prob: float = _key(0.5, _PROBABILITY)
    scales: tuple[int, ...] = _key(COCO_SCALES, _COUNT)  # detection: shorter sides of the multi-scale resize
    max_size: int = _key(1333, _COUNT)
    crop: tuple[int, int] | None = _key((384, 600), _COUNT)  # detection: RandomSizeCrop (min, max); null: none
    crop_resize: tuple[int, ...] = _key((400, 500, 600), _COUNT)
    val_size: int = _key(800, _COUNT)
    # semantic segmentation (mmseg's ADE20K recipe)
    seg_scale: tuple[int, int] = _key((2048, 512), _COUNT)  # images are resized to fit this (long, short) scale ...
    seg_ratio_range: tuple[float, float] = _key((0.5, 2.0), _POSITIVE)  # ... times a random ratio in training
    seg_crop: tuple[int, int] = _key((512, 512), _COUNT)  # training crop (h, w); also the sliding-window size
    cat_max_ratio: float = _key(0.75, Rule(0, 1, low_open=True))  # a crop is redrawn while a class covers more
    photometric: bool = True  # brightness / contrast / saturation / hue distortion in training
    seg_inference: str = _key("whole", Rule(choices=("whole", "slide")))  # whole | slide (seg_crop windows)
    slide_stride: tuple[int, int] = _key((341, 341), _COUNT)  # slide: at most seg_crop (windows cover the image)


@dataclass
class LossConfig:
    """Classification: label smoothing. Detection: Hungarian matching costs and loss weights."""

    label_smoothing: float = _key(0.1, Rule(0, 1, high_open=True))
    cls_loss_coef: float = _key(2.0, _NON_NEGATIVE)
    bbox_loss_coef: float = _key(5.0, _NON_NEGATIVE)
    giou_loss_coef: float = _key(2.0, _NON_NEGATIVE)
    set_cost_class: float = _key(2.0, _NON_NEGATIVE)
    set_cost_bbox: float = _key(5.0, _NON_NEGATIVE)
    set_cost_giou: float = _key(2.0, _NON_NEGATIVE)
    focal_alpha: float = _key(0.25, _PROBABILITY)
    num_select: int = _key(100, _COUNT)  # detections kept per image for evaluation


@dataclass
class OptimConfig:
    """AdamW with per-group learning rates and weight decay (see :func:`~deformvision.engine.optim.param_groups`)."""

    name: str = _key("adamw", Rule(choices=("adamw", "sgd")))
    lr: float = _key(1e-3, _POSITIVE)
    lr_ref_batch: int | None = _key(None, _COUNT)  # scale lr, warmup_lr and min_lr by global batch / lr_ref_batch
    weight_decay: float = _key(0.05, _NON_NEGATIVE)
    betas: tuple[float, float] = _key((0.9, 0.999), Rule(0, 1, high_open=True))
    eps: float = _key(1e-8, _POSITIVE)
    momentum: float = _key(0.9, Rule(0, 1, high_open=True))  # sgd only
    backbone_lr: float | None = _key(None, _NON_NEGATIVE)  # learning rate of parameters under `backbone.` (default: lr)
    lr_mults: dict[str, float] = field(default_factory=dict, metadata={"rule": _NON_NEGATIVE})  # name part -> lr factor
    no_decay_1d: bool = True  # no weight decay on 1-d parameters (norm weights, biases)
    no_decay_keywords: tuple[str, ...] = _key((), _TEXT)  # nor on parameters whose name contains one of these
    clip_grad: float = _key(0.0, _NON_NEGATIVE)  # max gradient norm (0: no clipping)


@dataclass
class ScheduleConfig:
    """How long a run trains and its learning-rate schedule, applied every step (``t / T``: the fraction done).

    ``cosine``: linear warmup from ``warmup_lr`` to ``lr`` over ``warmup_epochs`` (or ``warmup_steps``), then
    ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2`` (timm's). ``step``: ``lr`` x ``gamma`` per epoch of
    ``lr_drop`` and fraction of ``lr_drop_at`` passed (Deformable DETR's StepLR). ``poly``: ``min_lr + (lr - min_lr)
    (1 - t / T) ** power`` (mmseg's). ``step`` and ``poly`` ramp in linearly from ``warmup_lr / lr`` times their
    value (mmcv's). ``warmup_lr``, ``min_lr``: at the scale of ``optim.lr`` (groups follow), at most it. A budget
    (``max_steps`` and/or ``max_seconds`` of training) ends the run at the first spent, not ``epochs``: it is ``T``.
    """

    name: str = _key("cosine", Rule(choices=("cosine", "step", "poly")))
    epochs: int = _key(300, _COUNT)
    max_steps: int = _key(0, _NON_NEGATIVE)  # a budget of optimizer steps (0: none)
    max_seconds: float = _key(0.0, _NON_NEGATIVE)  # a budget of training seconds (0: none)
    warmup_epochs: float = _key(20.0, _NON_NEGATIVE)  # at most epochs
    warmup_steps: int | None = _key(None, _NON_NEGATIVE)  # instead of warmup_epochs
    warmup_lr: float = _key(1e-6, _NON_NEGATIVE)
    min_lr: float = _key(1e-5, _NON_NEGATIVE)
    lr_drop: tuple[int, ...] = _key((40,), _COUNT)
    lr_drop_at: tuple[float, ...] = _key((), Rule(0, 1, low_open=True, high_open=True))  # fractions of the run
    gamma: float = _key(0.1, Rule(0, 1, low_open=True))
    power: float = _key(0.9, _POSITIVE)  # poly


@dataclass
class EmaConfig:
    """Exponential moving average of the weights, evaluated next to the model."""

    enabled: bool = False
    decay: float = _key(0.9998, Rule(0, 1, high_open=True))


@dataclass
class CheckpointConfig:
    """Checkpoints in ``output_dir/checkpoints``: at every epoch end and every ``every_steps`` steps."""

    every_steps: int = _key(0, _NON_NEGATIVE)  # 0: only at epoch ends
    keep: int = _key(2, _COUNT)  # checkpoints kept (the newest)


@dataclass
class LogConfig:
    """JSON lines in ``output_dir/log.jsonl`` every ``interval`` steps and every epoch."""

    interval: int = _key(50, _COUNT)
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
    output_dir: str = _key("runs/default", _TEXT)
    seed: int = _key(0, Rule(0, 2**32, high_open=True))  # numpy's seeds are 32-bit
    device: str = _key("auto", _DEVICE)  # under torchrun cuda is the local rank's GPU; checked when resolved
    deterministic: bool = False
    threads: int | None = _key(None, _COUNT)  # CPU threads per process for intra-op parallelism (default: torch's)
    amp: str = _key("none", Rule(choices=("none", "auto", "bf16", "fp16")))  # auto: bf16 on CUDA; fp16: CUDA only
    compile: str = _key("none", Rule(choices=COMPILE_MODES))  # torch.compile mode of the model (none: eager)
    eval_every: int = _key(1, _COUNT)  # epochs (the last epoch is always evaluated)
    resume: str | None = _key(None, _TEXT)  # a run directory, its last_checkpoint.json, or "auto" (output_dir if any)
    overwrite: bool = False  # replace an earlier run in output_dir (without it, and without resume, refused)


# The data formats each task reads.
_FORMATS = {
    "classification": ("image_folder", "digits"),
    "detection": ("coco", "digits"),
    "instance": ("coco", "digits"),
    "semantic": ("ade20k", "segmentation_folder", "digits"),
}


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
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Check every key against the :class:`Rule` beside its field, and the relations between keys.

    Raises:
        ConfigError: the first bad value, as ``"optim.lr = -1.0: must be > 0"`` (key, value, what is allowed).
    """
    validate_section(config)
    _check_relations(config)


def validate_section(section: Any, path: tuple[str, ...] = ()) -> None:
    """Check one config dataclass (and the sections in it) against its fields' rules; ``path`` prefixes keys."""
    for spec in dataclasses.fields(section):
        value, key = getattr(section, spec.name), (*path, spec.name)
        if dataclasses.is_dataclass(value):
            validate_section(value, key)
            continue
        rule = spec.metadata.get("rule")
        if rule is None or value is None:  # bools (their type is all there is) and model.kwargs (the model checks)
            continue
        many = isinstance(value, dict | tuple)
        items = tuple(value.values()) if isinstance(value, dict) else value if many else (value,)
        rules = rule if isinstance(rule, tuple) else (rule,) * len(items)
        for index, (item, item_rule) in enumerate(zip(items, rules, strict=True)):
            finite = not isinstance(item, float) or math.isfinite(item)
            problem = item_rule.problem(item) if finite else "must be a finite number"
            if problem is not None:
                which = f"item {index + 1} " if isinstance(rule, tuple) else "every value " if many else ""
                _fail(".".join(key), value, which + problem)


def _check_relations(config: TrainConfig) -> None:
    """The rules between keys (each names the key it refuses and the other key it compares with)."""
    data, aug, optim, schedule = config.data, config.aug, config.optim, config.schedule
    if data.format not in _FORMATS[data.task]:
        _fail("data.format", data.format, f"must be one of {', '.join(_FORMATS[data.task])} for data.task {data.task}")
    if schedule.warmup_epochs > schedule.epochs:
        _fail("schedule.warmup_epochs", schedule.warmup_epochs, f"must be <= schedule.epochs ({schedule.epochs})")
    if (schedule.warmup_epochs > 0 or schedule.warmup_steps) and schedule.warmup_lr > optim.lr:
        _fail("schedule.warmup_lr", schedule.warmup_lr, f"must be <= optim.lr ({optim.lr:g}) to warm up to it")
    if schedule.name != "step" and schedule.min_lr > optim.lr:
        _fail("schedule.min_lr", schedule.min_lr, f"must be <= optim.lr ({optim.lr:g})")
    for key in ("aug.scale", "aug.ratio", "aug.crop", "aug.seg_ratio_range"):
        pair = getattr(aug, key.removeprefix("aug."))
        if pair is not None and pair[0] > pair[1]:
            _fail(key, pair, "must be (min, max) with min <= max")
    for key, sizes in (("aug.scales", aug.scales), ("aug.crop_resize", aug.crop_resize)):
        if not sizes:
            _fail(key, sizes, "must hold at least one size")
    if aug.seg_inference == "slide" and any(s > c for s, c in zip(aug.slide_stride, aug.seg_crop, strict=True)):
        _fail("aug.slide_stride", aug.slide_stride, f"must be <= aug.seg_crop {list(aug.seg_crop)} (windows overlap)")


def _fail(key: str, value: Any, problem: str) -> typing.NoReturn:
    raise ConfigError(f"{key} = {_plain(value)!r}: {problem}")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """A plain nested dict (tuples as lists) that :func:`config_from_dict` turns back into ``config``."""
    return _plain(dataclasses.asdict(config))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically (a crash leaves the previous file or the new one)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    write_text_atomic(path, text)


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
