"""Config validation: every key has a stated range, checked when a config is built, loaded or overridden.

The allowed values below are written out here from the documented ranges, independently of the rules in
``config.py``: a property test draws random values (in and out of range) for every key and checks that
the config accepts exactly the allowed ones, and that a refusal names the key.
"""

import dataclasses
import math
import re
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deformvision.demo import TASKS, demo_config
from deformvision.engine.config import ConfigError, TrainConfig, config_from_dict, load_config


def number(check):
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and check(v)


def optional(check):
    return lambda v: v is None or check(v)


def every(check, nonempty=False):
    return lambda v: isinstance(v, tuple | list) and (len(v) > 0 or not nonempty) and all(map(check, v))


def pair(check):
    return lambda v: len(v) == 2 and all(map(check, v)) and v[0] <= v[1]


TEXT = lambda v: isinstance(v, str) and v.strip() != ""  # noqa: E731
BOOL = lambda v: isinstance(v, bool)  # noqa: E731
POSITIVE, NON_NEGATIVE = number(lambda v: v > 0), number(lambda v: v >= 0)
AT_LEAST_1, PROBABILITY = number(lambda v: v >= 1), number(lambda v: 0 <= v <= 1)
UNIT_OPEN_LOW, UNIT_OPEN_HIGH = number(lambda v: 0 < v <= 1), number(lambda v: 0 <= v < 1)

# Allowed values of every key when only that key differs from the defaults (defaults: cosine schedule of
# 300 epochs with 20 of warmup, lr 1e-3, warmup_lr 1e-6, min_lr 1e-5, classification from an image folder,
# whole-image segmentation inference).
ALLOWED = {
    "model.name": TEXT,
    "model.checkpoint": optional(TEXT),
    "model.grad_checkpointing": BOOL,
    "data.task": lambda v: v == "classification",  # the others need another data.format than image_folder
    "data.format": lambda v: v in ("image_folder", "digits"),
    "data.root": TEXT,
    "data.train_split": TEXT,
    "data.val_split": TEXT,
    "data.train_annotations": TEXT,
    "data.val_annotations": TEXT,
    "data.contiguous_ids": BOOL,
    "data.num_classes": optional(AT_LEAST_1),
    "data.reduce_zero_label": BOOL,
    "data.img_size": number(lambda v: v >= 32),
    "data.batch_size": AT_LEAST_1,
    "data.eval_batch_size": optional(AT_LEAST_1),
    "data.num_workers": NON_NEGATIVE,
    "data.pin_memory": BOOL,
    "aug.scale": pair(UNIT_OPEN_LOW),
    "aug.ratio": pair(POSITIVE),
    "aug.hflip": PROBABILITY,
    "aug.rand_augment": optional(lambda v: AT_LEAST_1(v[0]) and number(lambda m: 0 <= m <= 10)(v[1])),
    "aug.reprob": PROBABILITY,
    "aug.crop_pct": UNIT_OPEN_LOW,
    "aug.mixup": NON_NEGATIVE,
    "aug.cutmix": NON_NEGATIVE,
    "aug.mixup_prob": PROBABILITY,
    "aug.mixup_switch_prob": PROBABILITY,
    "aug.scales": every(AT_LEAST_1, True),
    "aug.max_size": AT_LEAST_1,
    "aug.crop": optional(pair(AT_LEAST_1)),
    "aug.crop_resize": every(AT_LEAST_1, True),
    "aug.val_size": AT_LEAST_1,
    "aug.seg_scale": every(AT_LEAST_1),
    "aug.seg_ratio_range": pair(POSITIVE),
    "aug.seg_crop": every(AT_LEAST_1),
    "aug.cat_max_ratio": UNIT_OPEN_LOW,
    "aug.photometric": BOOL,
    "aug.seg_inference": lambda v: v in ("whole", "slide"),
    "aug.slide_stride": every(AT_LEAST_1),  # compared with aug.seg_crop only for slide inference
    "loss.label_smoothing": UNIT_OPEN_HIGH,
    "loss.cls_loss_coef": NON_NEGATIVE,
    "loss.bbox_loss_coef": NON_NEGATIVE,
    "loss.giou_loss_coef": NON_NEGATIVE,
    "loss.set_cost_class": NON_NEGATIVE,
    "loss.set_cost_bbox": NON_NEGATIVE,
    "loss.set_cost_giou": NON_NEGATIVE,
    "loss.focal_alpha": PROBABILITY,
    "loss.num_select": AT_LEAST_1,
    "optim.name": lambda v: v in ("adamw", "sgd"),
    "optim.lr": number(lambda v: v >= 1e-5),  # >= min_lr
    "optim.lr_ref_batch": optional(AT_LEAST_1),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": every(UNIT_OPEN_HIGH),
    "optim.eps": POSITIVE,
    "optim.momentum": UNIT_OPEN_HIGH,
    "optim.backbone_lr": optional(NON_NEGATIVE),
    "optim.lr_mults": lambda v: all(map(NON_NEGATIVE, v.values())),
    "optim.no_decay_1d": BOOL,
    "optim.no_decay_keywords": every(TEXT),
    "optim.clip_grad": NON_NEGATIVE,
    "schedule.name": lambda v: v in ("cosine", "step", "poly"),
    "schedule.epochs": number(lambda v: v >= 20),
    "schedule.max_steps": NON_NEGATIVE,
    "schedule.max_seconds": NON_NEGATIVE,
    "schedule.warmup_epochs": number(lambda v: 0 <= v <= 300),
    "schedule.warmup_steps": optional(NON_NEGATIVE),
    "schedule.warmup_lr": number(lambda v: 0 <= v <= 1e-3),
    "schedule.min_lr": number(lambda v: 0 <= v <= 1e-3),
    "schedule.lr_drop": every(AT_LEAST_1),
    "schedule.lr_drop_at": every(number(lambda v: 0 < v < 1)),
    "schedule.gamma": UNIT_OPEN_LOW,
    "schedule.power": POSITIVE,
    "ema.enabled": BOOL,
    "ema.decay": UNIT_OPEN_HIGH,
    "checkpoint.every_steps": NON_NEGATIVE,
    "checkpoint.keep": AT_LEAST_1,
    "log.interval": AT_LEAST_1,
    "log.progress": BOOL,
    "output_dir": TEXT,
    "seed": number(lambda v: 0 <= v < 2**32),
    "device": lambda v: v in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:[0-9]+", v) is not None,
    "deterministic": BOOL,
    "threads": optional(AT_LEAST_1),
    "amp": lambda v: v in ("none", "auto", "bf16", "fp16"),
    "compile": lambda v: v in ("none", "default", "reduce-overhead", "max-autotune"),
    "eval_every": AT_LEAST_1,
    "resume": optional(TEXT),
    "overwrite": BOOL,
}
# Keys whose in-range values another key's default can still refuse (data.format).
RELATED = {"data.task"}

FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, 1.0, -1.0, 1e-9, 0.5, 10.0, 32.0, 341.0, 2.0**32]))
INTS = st.one_of(st.integers(-3, 2**33), st.sampled_from([0, 1, 31, 32, 341, 512, 513, 2**32 - 1, 2**32]))
STRINGS = st.one_of(
    st.sampled_from(
        ["", " ", "cpu", "cuda", "cuda:0", "cuda:12", "cuda:x", "gpu", "mps", "auto", "none", "bf16", "fp8", "coco"]
        + ["image_folder", "digits", "semantic", "classification", "whole", "slide", "sgd", "adamw", "poly", "step"]
    ),
    st.text(max_size=4),
)


def _leaf_hints(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    leaves = {}
    for spec in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[spec.name]):
            leaves.update(_leaf_hints(hints[spec.name], f"{prefix}{spec.name}."))
        elif f"{prefix}{spec.name}" != "model.kwargs":  # free-form: the model checks its arguments
            leaves[f"{prefix}{spec.name}"] = hints[spec.name]
    return leaves


LEAVES = _leaf_hints(TrainConfig)


def _values(hint: typing.Any) -> st.SearchStrategy:
    """Random values of the key's type (the type conversion has its own tests)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return st.one_of(st.none(), _values(next(a for a in args if a is not type(None))))
    if hint is bool:
        return st.booleans()
    if typing.get_origin(hint) is tuple:
        if args[-1] is Ellipsis:
            return st.lists(_values(args[0]), max_size=3).map(tuple)
        return st.tuples(*map(_values, args))
    if typing.get_origin(hint) is dict:
        return st.dictionaries(st.sampled_from(["a", "offsets"]), _values(args[1]), max_size=2)
    return {int: INTS, float: FLOATS, str: STRINGS}[hint]


def test_every_key_has_a_stated_range():
    assert set(ALLOWED) == set(LEAVES)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_values_are_accepted_exactly_when_in_range(data):
    key = data.draw(st.sampled_from(sorted(LEAVES)), label="key")
    value = data.draw(_values(LEAVES[key]), label="value")
    *sections, name = key.split(".")
    raw = {sections[0]: {name: value}} if sections else {name: value}
    try:
        config = config_from_dict(raw)
    except ConfigError as err:
        assert key in str(err)  # the key itself, or the key that a relation compares it with
        assert not ALLOWED[key](value) or key in RELATED, f"{key} = {value!r} refused: {err}"
    else:
        stored = config
        for part in key.split("."):
            stored = getattr(stored, part)
        assert stored == value
        assert ALLOWED[key](stored), f"{key} = {stored!r} accepted"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], "optim.lr = -1.0: must be > 0"),
        (["optim.lr=0"], "optim.lr = 0.0: must be > 0"),
        (["optim.lr=nan"], "optim.lr = nan: must be a finite number"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay = -0.1: must be >= 0"),
        (["optim.lr_mults={offsets: -0.1}"], "optim.lr_mults = {'offsets': -0.1}: every value must be >= 0"),
        (["schedule.warmup_epochs=-1"], "schedule.warmup_epochs = -1.0: must be >= 0"),
        (["schedule.epochs=10"], "schedule.warmup_epochs = 20.0: must be <= schedule.epochs (10)"),
        (["schedule.min_lr=0.01"], "schedule.min_lr = 0.01: must be <= optim.lr (0.001)"),
        (["threads=0"], "threads = 0: must be >= 1"),
        (["device=gpu"], "device = 'gpu': must be auto, cpu, cuda, cuda:N or mps"),
        (["aug.hflip=.nan"], "aug.hflip = nan: must be a finite number"),
        (["data.img_size=16"], "data.img_size = 16: must be >= 32"),
        (["data.eval_batch_size=0"], "data.eval_batch_size = 0: must be >= 1"),
        (["aug.rand_augment=[2, 11]"], "aug.rand_augment = [2, 11.0]: item 2 must be in [0, 10]"),
        (["aug.crop=[600, 384]"], "aug.crop = [600, 384]: must be (min, max) with min <= max"),
        (
            ["data.format=coco"],
            "data.format = 'coco': must be one of image_folder, digits for data.task classification",
        ),
        (
            ["aug.seg_inference=slide", "aug.slide_stride=[600, 600]"],
            "aug.slide_stride = [600, 600]: must be <= aug.seg_crop [512, 512]",
        ),
    ],
)
def test_messages_name_the_key_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(message)


def test_step_schedule_ignores_min_lr_and_no_warmup_ignores_warmup_lr():
    """min_lr only shapes cosine and poly; warmup_lr only matters with a warmup."""
    config = load_config(None, ["schedule.name=step", "schedule.warmup_epochs=0", "optim.lr=1e-7"])
    assert (config.optim.lr, config.schedule.min_lr, config.schedule.warmup_lr) == (1e-7, 1e-5, 1e-6)
    with pytest.raises(ConfigError, match=r"schedule.warmup_lr = 1e-06: must be <= optim.lr \(1e-07\)"):
        load_config(None, ["schedule.name=step", "optim.lr=1e-7"])


@pytest.mark.parametrize("task", TASKS)
def test_the_demo_recipes_are_valid(task, tmp_path):
    for budget in ({"minutes": 8.0}, {"epochs": 1}):  # a time budget, or epochs
        config = demo_config(tmp_path, tmp_path / "data", seed=0, task=task, **budget)
        assert config.data.task == task
