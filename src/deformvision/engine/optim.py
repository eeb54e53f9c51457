"""Optimizer parameter groups and per-step learning-rate schedules.

Recipes (``deformvision/recipes/``):

- DAT (as Swin/timm): AdamW, no weight decay on 1-d parameters (norm weights, biases) nor on the
  position tables (``relative_position_bias_table``, ``rpe_table``); cosine schedule with linear warmup,
  updated every step.
- Deformable DETR (official ``main.py``): AdamW with ``lr`` for the transformer and heads,
  ``backbone_lr`` for ``backbone.*`` and ``0.1 * lr`` for ``sampling_offsets`` and ``reference_points``,
  the same weight decay everywhere; StepLR (x0.1 at ``lr_drop`` epochs).

Schedules are :class:`torch.optim.lr_scheduler.LambdaLR` multipliers of each group's own learning rate,
stepped after every optimizer step, so their state (``last_epoch`` = steps done) resumes mid-epoch. They
are called with the step and the fraction of the run done (``progress``): warmups count steps, decays
follow the fraction, which a time budget makes a fraction of the time (:mod:`~deformvision.engine.budget`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from deformvision.engine.budget import Budget
from deformvision.engine.config import OptimConfig, ScheduleConfig, validate_section


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    backbone_lr: float | None = None,
    lr_mults: dict[str, float] | None = None,
    no_decay_1d: bool = True,
    no_decay_keywords: tuple[str, ...] = (),
) -> list[dict]:
    """Split the trainable parameters of ``model`` into optimizer groups by learning rate and weight decay.

    A parameter's learning rate is ``backbone_lr`` if its name starts with ``backbone.`` (when given),
    else ``lr`` times the multiplier of the first keyword of ``lr_mults`` contained in its name (1 if
    none). Its weight decay is 0 if ``no_decay_1d`` and it has at most one dimension, or its name
    contains one of ``no_decay_keywords``; else ``weight_decay``. Frozen parameters are left out.

    Returns:
        One group per role (``"backbone"``, an ``lr_mults`` keyword or ``"base"``) and decay, in order of
        first appearance, each a dict with ``params``, ``param_names`` (kept by torch in the optimizer's
        state dict), ``role``, ``lr`` and ``weight_decay``. Roles stay apart even when their rates are equal
        (the official Deformable DETR backbone and offset rates are both 2e-5).

    Raises:
        ValueError: ``lr``, ``backbone_lr``, ``weight_decay`` or an ``lr_mults`` value is negative or not finite.
    """
    lr_mults = lr_mults or {}
    rates = {"lr": lr, "weight_decay": weight_decay, "backbone_lr": backbone_lr}
    rates.update({f"lr_mults[{key!r}]": mult for key, mult in lr_mults.items()})
    for name, value in rates.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if backbone_lr is not None and name.startswith("backbone."):
            role, group_lr = "backbone", backbone_lr
        else:
            role = next((key for key in lr_mults if key in name), "base")
            group_lr = lr * lr_mults.get(role, 1.0)
        no_decay = (no_decay_1d and param.ndim <= 1) or any(key in name for key in no_decay_keywords)
        group = groups.setdefault(
            (role, no_decay),
            {
                "params": [],
                "param_names": [],
                "role": role,
                "lr": group_lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimConfig, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW (or SGD with Nesterov momentum) over :func:`param_groups`, learning rates times ``lr_scale``.

    Raises:
        ConfigError: a value of ``config`` is out of its range (``optim.lr = 0.0: must be > 0``).
        ValueError: ``lr_scale`` is not a finite number > 0, or the model has no trainable parameters.
    """
    validate_section(config, ("optim",))
    if not (math.isfinite(lr_scale) and lr_scale > 0):
        raise ValueError(f"lr_scale must be a finite number > 0, got {lr_scale}")
    backbone_lr = config.backbone_lr * lr_scale if config.backbone_lr is not None else None
    groups = param_groups(
        model,
        config.lr * lr_scale,
        config.weight_decay,
        backbone_lr=backbone_lr,
        lr_mults=config.lr_mults,
        no_decay_1d=config.no_decay_1d,
        no_decay_keywords=config.no_decay_keywords,
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr * lr_scale, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr * lr_scale, betas=config.betas, eps=config.eps)


@dataclass
class WarmupCosine:
    """Multiplier of the base learning rate at step ``t`` (timm's ``CosineLRScheduler``, ``t_in_epochs=False``).

    ``t < warmup_steps``: linear from ``warmup_factor`` (at ``t = 0``) towards 1; after it,
    ``min_factor + (1 - min_factor) (1 + cos(pi p)) / 2`` with ``p`` the fraction of the run done
    (``progress``, default ``t / total_steps``); ``min_factor`` from ``p = 1`` on. As in timm the cosine
    runs over the whole schedule, warmup included.
    """

    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 0.0
    min_factor: float = 0.0

    def __call__(self, step: int, progress: float | None = None) -> float:
        if step < self.warmup_steps:
            return self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        progress = step / self.total_steps if progress is None else progress
        if progress >= 1.0:
            return self.min_factor
        return self.min_factor + 0.5 * (1.0 - self.min_factor) * (1.0 + math.cos(math.pi * progress))


@dataclass
class StepDecay:
    """Multiplier ``gamma ** k`` at step ``t``, ``k`` the number of ``drop_epochs`` <= ``t // steps_per_epoch``
    plus the number of ``drop_at`` fractions <= ``progress`` (the fraction of the run done).

    With one drop epoch this is StepLR(step_size=lr_drop) of Deformable DETR stepped per epoch (for
    the papers' schedules, where training ends before a second drop).
    """

    steps_per_epoch: int
    drop_epochs: tuple[int, ...] = ()
    gamma: float = 0.1
    drop_at: tuple[float, ...] = ()

    def __call__(self, step: int, progress: float | None = None) -> float:
        if self.drop_at and progress is None:
            raise ValueError(f"StepDecay with drop_at={self.drop_at} needs the progress of the run")
        epoch = step // self.steps_per_epoch
        drops = sum(epoch >= drop for drop in self.drop_epochs) + sum(progress >= at for at in self.drop_at)
        return self.gamma**drops


@dataclass
class PolyDecay:
    """mmseg's poly schedule: ``min_factor + (1 - min_factor) (1 - p) ** power`` (``min_factor`` from the end on),
    ``p`` the fraction of the run done (``progress``, default ``t / total_steps``)."""

    total_steps: int
    power: float = 0.9
    min_factor: float = 0.0

    def __call__(self, step: int, progress: float | None = None) -> float:
        remaining = max(0.0, 1.0 - (step / self.total_steps if progress is None else progress))
        return self.min_factor + (1.0 - self.min_factor) * remaining**self.power


@dataclass
class LinearWarmup:
    """``schedule`` with its first ``warmup_steps`` ramped linearly from ``warmup_factor`` times it
    (mmcv's ``warmup='linear'``: the factor multiplies the schedule's own value)."""

    schedule: Callable[[int, float | None], float]
    warmup_steps: int = 0
    warmup_factor: float = 0.0

    def __call__(self, step: int, progress: float | None = None) -> float:
        if step >= self.warmup_steps:
            return self.schedule(step, progress)
        ramp = self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        return self.schedule(step, progress) * ramp


@dataclass
class OnProgress:
    """A schedule as a ``LambdaLR`` multiplier: ``schedule(step, progress(step))``."""

    schedule: Callable[[int, float | None], float]
    progress: Callable[[int], float]

    def __call__(self, step: int) -> float:
        return self.schedule(step, self.progress(step))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: ScheduleConfig,
    steps_per_epoch: int,
    base_lr: float,
    progress: Callable[[int], float] | None = None,
) -> LambdaLR:
    """The schedule of ``config`` as a per-step :class:`LambdaLR`.

    ``warmup_lr`` and ``min_lr`` become factors of ``base_lr`` (the configured main learning rate, at the
    same batch size) applied to every group: groups with other learning rates, and learning rates scaled
    with the batch size, follow the same curve proportionally. ``progress(step)`` is the fraction of the
    run done before ``step`` (default: of ``config.epochs``' steps; a
    :meth:`~deformvision.engine.budget.Budget.progress` for runs with a budget).

    Raises:
        ConfigError: a value of ``config`` is out of its range (``schedule.epochs = 0: must be >= 1``).
        ValueError: ``base_lr`` is not a finite number > 0 (the factors divide by it), or ``steps_per_epoch`` < 1.
    """
    validate_section(config, ("schedule",))
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base_lr must be a finite number > 0 (warmup_lr and min_lr are its fractions), got {base_lr}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch} (is the training set empty?)")
    total_steps = config.epochs * steps_per_epoch
    progress = progress or Budget(config, steps_per_epoch).progress
    warmup_steps = config.warmup_steps
    if warmup_steps is None:
        warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    warmup_factor = config.warmup_lr / base_lr
    if config.name == "cosine":
        schedule = WarmupCosine(
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            warmup_factor=warmup_factor,
            min_factor=config.min_lr / base_lr,
        )
    elif config.name == "poly":
        decay = PolyDecay(total_steps, config.power, config.min_lr / base_lr)
        schedule = LinearWarmup(decay, warmup_steps, warmup_factor)
    else:
        decay = StepDecay(steps_per_epoch, tuple(config.lr_drop), config.gamma, tuple(config.lr_drop_at))
        schedule = LinearWarmup(decay, warmup_steps, warmup_factor)
    return LambdaLR(optimizer, OnProgress(schedule, progress))
