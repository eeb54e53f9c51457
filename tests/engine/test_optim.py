"""Learning-rate schedules and optimizer parameter groups."""

import math

import pytest
import torch
from engine_utils import TINY_DAT

from deformvision.engine.config import ConfigError, OptimConfig, ScheduleConfig, load_config
from deformvision.engine.optim import (
    LinearWarmup,
    PolyDecay,
    StepDecay,
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    param_groups,
)
from deformvision.models import create_model
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.recipes import recipe_path


def test_warmup_cosine_values():
    schedule = WarmupCosine(total_steps=100, warmup_steps=10, warmup_factor=0.01, min_factor=0.001)
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(5) == pytest.approx(0.01 + 0.99 * 0.5)
    # after warmup the cosine runs over the whole schedule (timm): at t=10 it is already below 1
    assert schedule(10) == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert schedule(50) == pytest.approx(0.001 + 0.999 * 0.5)
    assert schedule(100) == schedule(1000) == pytest.approx(0.001)
    values = [schedule(t) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_step_decay_values():
    schedule = StepDecay(steps_per_epoch=10, drop_epochs=(40,), gamma=0.1)
    assert schedule(0) == schedule(399) == 1.0
    assert schedule(400) == schedule(499) == pytest.approx(0.1)
    two = StepDecay(steps_per_epoch=3, drop_epochs=(2, 4))
    assert [two(t) for t in (0, 5, 6, 11, 12)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_scheduler_applies_to_every_group_per_step():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-4}])
    config = ScheduleConfig(name="cosine", epochs=2, warmup_epochs=1, warmup_lr=1e-5, min_lr=0.0)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=5, base_lr=1e-3)
    seen = []
    for _ in range(10):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    factors = WarmupCosine(10, 5, 1e-2, 0.0)
    for step, (main, other) in enumerate(seen):
        assert main == pytest.approx(1e-3 * factors(step)) and other == pytest.approx(1e-4 * factors(step))

    step_config = ScheduleConfig(name="step", epochs=3, lr_drop=(2,), warmup_epochs=0)
    optimizer = torch.optim.AdamW([params[0]], lr=2e-4)
    scheduler = build_scheduler(optimizer, step_config, steps_per_epoch=4, base_lr=2e-4)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2e-4] * 8 + [2e-5] * 4)


def _names(groups, **match):
    return {n for g in groups if all(g[k] == v for k, v in match.items()) for n in g["param_names"]}


def test_dat_groups_skip_decay_on_norms_biases_and_position_tables():
    model = create_model("dat_tiny", num_classes=3, **TINY_DAT)
    keywords = ("relative_position_bias_table", "rpe_table")
    groups = param_groups(model, 1e-3, 0.05, no_decay_keywords=keywords)
    no_decay, decay = _names(groups, weight_decay=0.0), _names(groups, weight_decay=0.05)
    params = dict(model.named_parameters())
    assert no_decay | decay == set(params) and not no_decay & decay
    assert {n for n, p in params.items() if p.ndim <= 1} <= no_decay  # norm weights and biases
    assert {n for n in params if any(k in n for k in keywords)} <= no_decay
    assert {"stem.norm.weight", "stem.proj.bias", "stages.3.blocks.0.norm1.weight"} <= no_decay
    assert "head.weight" in decay and "head.bias" in no_decay
    assert all(g["lr"] == 1e-3 for g in groups)


@pytest.fixture(scope="module")
def tiny_detector() -> DeformableDETR:
    backbone = create_model("dat_tiny", features_only=True, out_indices=(1, 2, 3), **TINY_DAT)
    return DeformableDETR(
        backbone,
        num_classes=3,
        num_queries=8,
        d_model=32,
        num_heads=2,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=32,
        enc_n_points=2,
        dec_n_points=2,
    )


def test_deformable_detr_groups(tiny_detector):
    config = OptimConfig(
        lr=2e-4,
        backbone_lr=2e-5,
        weight_decay=1e-4,
        no_decay_1d=False,
        lr_mults={"sampling_offsets": 0.1, "reference_points": 0.1},
    )
    optimizer = build_optimizer(tiny_detector, config)
    groups = optimizer.param_groups
    params = {n for n, p in tiny_detector.named_parameters() if p.requires_grad}
    backbone = {n for n in params if n.startswith("backbone.")}
    linear_proj = {n for n in params if "sampling_offsets" in n or "reference_points" in n}
    assert linear_proj and backbone and not backbone & linear_proj
    lrs = {g["role"]: g["lr"] for g in groups}
    assert lrs == {
        "backbone": 2e-5,
        "sampling_offsets": pytest.approx(2e-5),
        "reference_points": pytest.approx(2e-5),
        "base": 2e-4,
    }
    assert _names(groups, role="backbone") == backbone
    for keyword in ("sampling_offsets", "reference_points"):
        assert _names(groups, role=keyword) == {n for n in linear_proj if keyword in n}
    assert _names(groups, role="base") == params - backbone - linear_proj
    assert all(g["weight_decay"] == 1e-4 for g in groups)  # the official code decays everything
    assert isinstance(optimizer, torch.optim.AdamW)


def test_lr_scale_and_frozen_parameters(tiny_detector):
    tiny_detector.backbone.stem.requires_grad_(False)
    try:
        groups = build_optimizer(tiny_detector, OptimConfig(lr=1e-3, backbone_lr=1e-4), lr_scale=2.0).param_groups
    finally:
        tiny_detector.backbone.stem.requires_grad_(True)
    names = {n for g in groups for n in g["param_names"]}
    assert not any(n.startswith("backbone.stem.") for n in names)
    assert sorted({g["lr"] for g in groups}) == pytest.approx([2e-4, 2e-3])


def test_poly_decay_with_linear_warmup_values():
    """mmseg's poly (power 1: linear to 0) after mmcv's linear warmup, against the formulas written out."""
    schedule = LinearWarmup(PolyDecay(total_steps=100, power=1.0, min_factor=0.0), warmup_steps=10, warmup_factor=1e-6)
    assert schedule(0) == pytest.approx(1e-6)
    assert schedule(5) == pytest.approx((1 - 5 / 100) * (1e-6 + (1 - 1e-6) * 5 / 10))
    assert schedule(10) == pytest.approx(0.9) and schedule(50) == pytest.approx(0.5) and schedule(100) == 0.0
    poly = PolyDecay(total_steps=80, power=0.9, min_factor=0.1)
    assert poly(20) == pytest.approx(0.1 + 0.9 * 0.75**0.9) and poly(200) == pytest.approx(0.1)


def test_step_schedule_warmup_is_off_in_the_official_detr_config():
    config = load_config(recipe_path("deformable_detr_r50_coco"))
    assert config.schedule.warmup_epochs == 0


def test_zero_or_negative_rates_are_refused_before_any_division():
    """lr=0 used to end in a ZeroDivisionError inside the schedule (warmup_lr / lr): now a clear error first."""
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"optim.lr = 0.0: must be > 0"):
        build_optimizer(model, OptimConfig(lr=0.0))
    with pytest.raises(ConfigError, match=r"optim.lr_mults = \{'weight': -0.1\}: every value must be >= 0"):
        build_optimizer(model, OptimConfig(lr_mults={"weight": -0.1}))
    with pytest.raises(ValueError, match=r"lr_scale must be a finite number > 0, got nan"):
        build_optimizer(model, OptimConfig(), lr_scale=math.nan)
    with pytest.raises(ValueError, match=r"lr_mults\['bias'\] must be a finite number >= 0, got -1"):
        param_groups(model, 1e-3, 0.05, lr_mults={"bias": -1})
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -0.05"):
        param_groups(model, 1e-3, -0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"base_lr must be a finite number > 0 .* got 0.0"):
        build_scheduler(optimizer, ScheduleConfig(), steps_per_epoch=10, base_lr=0.0)
    with pytest.raises(ValueError, match=r"steps_per_epoch must be at least 1, got 0"):
        build_scheduler(optimizer, ScheduleConfig(), steps_per_epoch=0, base_lr=0.1)
    with pytest.raises(ConfigError, match=r"schedule.epochs = 0: must be >= 1"):
        build_scheduler(optimizer, ScheduleConfig(name="poly", epochs=0, warmup_epochs=0), 10, base_lr=0.1)
