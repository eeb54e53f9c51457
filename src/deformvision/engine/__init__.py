"""Training and evaluation: loops, configs, checkpoints, distributed runs, COCO evaluation.

>>> from deformvision.engine import load_config, train
>>> from deformvision.recipes import recipe_path
>>> config = load_config(recipe_path("dat_digits"), ["schedule.epochs=1", "schedule.warmup_epochs=0"])
>>> metrics = train(config)  # doctest: +SKIP

- :mod:`~deformvision.engine.config`: :class:`TrainConfig` and YAML loading with overrides;
- :mod:`~deformvision.engine.builders`: model, data, task and loaders from a config (reused by other commands);
- :mod:`~deformvision.engine.trainer`: :class:`Trainer`, :func:`train`, :func:`evaluate`;
- :mod:`~deformvision.engine.budget`: how long a run trains (epochs, or a step / time budget) and how much is done;
- :mod:`~deformvision.engine.run_dir`: what a run directory holds, when a run may start, resume or replace one;
- :mod:`~deformvision.engine.classification`, :mod:`~deformvision.engine.detection`: per-task loss and metrics;
- :mod:`~deformvision.engine.optim`: parameter groups and learning-rate schedules;
- :mod:`~deformvision.engine.checkpoint`: atomic, resumable checkpoints;
- :mod:`~deformvision.engine.distributed`, :mod:`~deformvision.engine.data`: torchrun and data order;
- :mod:`~deformvision.engine.coco_eval`: the 12 COCO box numbers with pycocotools.
"""

from deformvision.engine.builders import (
    DataBundle,
    build_data,
    build_loader,
    build_model,
    build_task,
    build_transforms,
)
from deformvision.engine.coco_eval import STAT_NAMES, detections_to_coco, evaluate_coco
from deformvision.engine.config import ConfigError, TrainConfig, config_to_dict, load_config, save_config
from deformvision.engine.trainer import Trainer, evaluate, train

__all__ = [
    "STAT_NAMES",
    "ConfigError",
    "DataBundle",
    "TrainConfig",
    "Trainer",
    "build_data",
    "build_loader",
    "build_model",
    "build_task",
    "build_transforms",
    "config_to_dict",
    "detections_to_coco",
    "evaluate",
    "evaluate_coco",
    "load_config",
    "save_config",
    "train",
]
