"""Config loading: the shipped YAML files, overrides, type conversion, unknown keys, ``base`` files."""

import functools
from pathlib import Path

import pytest
import yaml
from engine_utils import CONFIGS

from deformvision.engine.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)


def _file_values(path: Path) -> dict:
    """The YAML file's mapping over its ``base`` file's, merged here independently of the loader."""
    raw = yaml.safe_load(path.read_text())
    base = raw.pop("base", None)
    merged = _file_values(path.parent / base) if base else {}
    for section, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **value}
        else:
            merged[section] = value
    return merged


def _tuples(value):
    """Lists (YAML's) and tuples (the config's) alike, nested too."""
    return tuple(map(_tuples, value)) if isinstance(value, list | tuple) else value


def _leaves(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "kwargs" and key != "lr_mults":
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_every_value_written_and_round_trip(path):
    """Every key written in the file (or its base files) arrives in the config, and only defaults elsewhere."""
    config = load_config(path)
    written = dict(_leaves(_file_values(path)))
    assert written, "a recipe with no keys"
    for key, expected in written.items():
        actual = functools.reduce(getattr, key.split("."), config)
        assert _tuples(actual) == _tuples(expected), key
    defaults = dict(_leaves(config_to_dict(TrainConfig())))
    for key, value in _leaves(config_to_dict(config)):
        if key not in written:
            assert value == defaults[key], key
    assert config_from_dict(config_to_dict(config)) == config


def test_paper_recipes():
    tiny, small, base = (load_config(CONFIGS / f"dat_{v}_imagenet.yaml") for v in ("tiny", "small", "base"))
    assert [c.model.kwargs["drop_path_rate"] for c in (tiny, small, base)] == [0.2, 0.3, 0.5]
    assert [c.model.name for c in (tiny, small, base)] == ["dat_tiny", "dat_small", "dat_base"]
    assert (tiny.optim.lr, tiny.optim.lr_ref_batch, tiny.optim.weight_decay) == (1e-3, 1024, 0.05)
    assert (tiny.schedule.name, tiny.schedule.epochs, tiny.schedule.warmup_epochs) == ("cosine", 300, 20)
    assert (tiny.aug.rand_augment, tiny.aug.mixup, tiny.aug.cutmix, tiny.aug.reprob) == ((2, 9.0), 0.8, 1.0, 0.25)
    assert tiny.loss.label_smoothing == 0.1
    # small and base write no optim / aug section: both come from dat_tiny_imagenet.yaml through `base`
    for path in ("dat_small_imagenet.yaml", "dat_base_imagenet.yaml"):
        assert not {"optim", "aug"} & set(yaml.safe_load((CONFIGS / path).read_text()))
    for config in (small, base):
        assert (config.optim.lr, config.optim.lr_ref_batch, config.optim.clip_grad) == (1e-3, 1024, 5.0)
        assert config.optim.no_decay_keywords == ("relative_position_bias_table", "rpe_table")
        assert (config.aug.rand_augment, config.aug.mixup, config.aug.cutmix) == ((2, 9.0), 0.8, 1.0)
        assert (config.schedule.epochs, config.amp, config.data.batch_size) == (300, "auto", 128)

    detr = load_config(CONFIGS / "deformable_detr_r50_coco.yaml")
    assert (detr.optim.lr, detr.optim.backbone_lr, detr.optim.weight_decay, detr.optim.clip_grad) == (
        2e-4,
        2e-5,
        1e-4,
        0.1,
    )
    assert detr.optim.lr_mults == {"sampling_offsets": 0.1, "reference_points": 0.1}
    assert (detr.schedule.name, detr.schedule.epochs, detr.schedule.lr_drop) == ("step", 50, (40,))
    assert detr.data.batch_size == 2 and detr.aug.scales == tuple(range(480, 801, 32))
    refine = load_config(CONFIGS / "deformable_detr_r50_box_refine_coco.yaml")
    two_stage = load_config(CONFIGS / "deformable_detr_r50_two_stage_coco.yaml")
    assert refine.model.name == "deformable_detr_r50_box_refine"
    assert two_stage.model.name == "deformable_detr_r50_two_stage"
    assert refine.optim == detr.optim == two_stage.optim


def test_overrides_convert_types_and_win_over_the_file():
    config = load_config(
        CONFIGS / "dat_digits.yaml",
        [
            "optim.lr=1e-3",
            "data.batch_size=16",
            "aug.rand_augment=null",
            "aug.scales=[96, 128]",
            "model.kwargs.dims=[16,32,64,128]",
            "resume=auto",
            "schedule.warmup_epochs=1",
            "threads=2",
        ],
    )
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)  # "1e-3" is a string in YAML 1.1
    assert config.data.batch_size == 16 and config.aug.rand_augment is None and config.aug.scales == (96, 128)
    assert config.model.kwargs["dims"] == [16, 32, 64, 128] and config.model.kwargs["img_size"] == 32
    assert config.resume == "auto" and config.schedule.warmup_epochs == 1.0 and config.threads == 2


def test_defaults_without_a_file():
    assert load_config() == TrainConfig()
    assert parse_override("optim.betas=[0.9, 0.95]") == ("optim.betas", [0.9, 0.95])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.learning_rate=1"], "unknown config key(s) optim.learning_rate; valid keys of optim: name, lr,"),
        (["epochs=3"], "unknown config key(s) epochs; valid keys of the top level: model, data,"),
        (["optim.lr=fast"], "optim.lr must be float, got 'fast'"),
        (["data.batch_size=2.5"], "data.batch_size must be int"),
        (["aug.crop=[1, 2, 3]"], "aug.crop must be a list of 2 values"),
        (["schedule.name=linear"], "schedule.name = 'linear': must be one of cosine, step, poly"),
        (["amp=fp8"], "amp = 'fp8': must be one of none, auto, bf16, fp16"),
        (["optim=3"], "optim must be a mapping"),
        (["optim.lr"], "must look like section.key=value"),
        (["log.interval=0"], "log.interval = 0: must be >= 1"),
        (["aug.hflip=2"], "aug.hflip = 2.0: must be in [0, 1]"),
        (["aug.reprob=-0.1"], "aug.reprob = -0.1: must be in [0, 1]"),
    ],
)
def test_invalid_overrides_raise_clear_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_unknown_key_in_a_file_and_base_chain(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "optim: {lr: 0.5}\nschedule: {epochs: 7, warmup_epochs: 1}\nmodel: {kwargs: {a: 1, b: 2}}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim: {weight_decay: 0.0}\nmodel: {kwargs: {b: 3}}\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.optim.lr, config.optim.weight_decay, config.schedule.epochs) == (0.5, 0.0, 7)
    assert config.model.kwargs == {"a": 1, "b": 3}

    (tmp_path / "bad.yaml").write_text("data:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) data.batchsize; valid keys of data: task,"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
