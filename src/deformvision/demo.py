"""The demos: train a small DAT model on a built-in digits set, on the CPU, evaluate it and draw what it does.

Three tasks, each on 128x128 canvases with 1-6 digits (mostly small), no download:

- ``detection`` (the default): ``deformable_detr_dat_digits``, a two-stage Deformable DETR with box
  refinement on a narrow DAT (:func:`~deformvision.data.build_digits_detection`); the 12 COCO box numbers;
- ``instance``: Mask R-CNN on a narrow DAT with an FPN (:func:`~deformvision.data.build_digits_instance`,
  a mask per digit); COCO ``bbox_*`` and ``segm_*`` numbers;
- ``semantic``: Semantic FPN on a narrow DAT (:func:`~deformvision.data.build_digits_semantic`, 11
  classes: background and the ten digits); ``mIoU``, ``aAcc``, ``mAcc``.

:func:`run_demo` builds the dataset, trains for a time budget (or a number of epochs), evaluates, and
writes into the output directory:

- ``config.yaml`` and ``model_final.safetensors``: a run directory that ``deformvision eval`` and
  ``deformvision predict --run`` read;
- ``metrics.json``: the task's numbers (also at the top level: ``segm_AP50``, ``mIoU``...), steps, epochs
  and times; ``log.jsonl``: the training loss;
- ``predictions/``: ``predictions.json`` and annotated PNGs of validation images (``deformvision predict``:
  boxes; masks tinted over the image; predicted class maps with a legend);
- detection only, ``sampling_points.png``: one validation image with the detections, the deformed sampling
  points of the DAT backbone's deformable blocks, and the multi-scale deformable attention sampling
  locations of the decoder's best queries.

Training is bounded by wall-clock time: the learning-rate schedule follows the fraction of the budget used
(warmup, then ``x0.1`` for the last fifth), training stops when the budget is spent, and evaluation follows.
With ``epochs`` the schedule follows the steps instead.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.ops import box_convert

from deformvision.data import (
    DIGITS_SEMANTIC_CLASSES,
    build_digits_detection,
    build_digits_instance,
    build_digits_semantic,
)
from deformvision.data._image import load_rgb
from deformvision.engine import (
    DataBundle,
    TrainConfig,
    build_data,
    build_loader,
    build_model,
    build_task,
    build_transforms,
)
from deformvision.engine.builders import Task
from deformvision.engine.checkpoint import save_weights
from deformvision.engine.config import config_from_dict, save_config
from deformvision.engine.data import EpochSampler, ShardSampler, make_generator
from deformvision.engine.optim import build_optimizer
from deformvision.engine.run_dir import RUN_CONFIG
from deformvision.engine.trainer import FINAL_WEIGHTS, seed_everything
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.predict import Predictor, predict_files
from deformvision.viz import (
    add_title,
    dat_sampling_points,
    draw_dat_sampling_points,
    draw_detections,
    draw_msda_sampling_locations,
    label_color,
    record_sampling_locations,
    side_by_side,
)

DEFAULT_OUTPUT_DIR = "deformvision_demo"
DEFAULT_MINUTES = 8.0
SCORE_THRESHOLD = 0.3
WARMUP_STEPS = 50
LR_DROP_AT = 0.8  # fraction of the budget (or of the steps) after which the learning rate is x0.1
PICTURE_SCALE = 4  # 128-pixel images drawn 512 pixels wide
NUM_PREDICTION_PNGS = 8

# The training recipe (as configs/deformable_detr_digits.yaml, whose schedule is in epochs instead).
RECIPE: dict[str, Any] = {
    "model": {"name": "deformable_detr_dat_digits"},
    "data": {"task": "detection", "format": "coco", "train_split": "train/images", "val_split": "val/images",
             "train_annotations": "annotations/train.json", "val_annotations": "annotations/val.json",
             "batch_size": 8, "num_workers": 0},
    # multi-scale resize only: no flip (a mirrored digit is not that digit), no crop branch
    "aug": {"scales": [128], "max_size": 128, "hflip": 0.0, "crop": None, "val_size": 128},
    "optim": {"lr": 1.0e-3, "lr_mults": {"sampling_offsets": 0.1, "reference_points": 0.1}, "weight_decay": 1.0e-4,
              "no_decay_1d": False, "clip_grad": 0.1},
    "loss": {"num_select": 100},
    "device": "cpu",
    "threads": 1,  # a small model: a second thread gains little, and on a shared core OpenMP spin-waits (35x slower)
}  # fmt: skip


# The small DAT of the dense demos (as deformable_detr_dat_digits'): window attention in stages 0-1, deformable
# attention in stages 2-3 (8x8 and 4x4 maps at 128 pixels).
_DIGITS_DAT: dict[str, Any] = {
    "img_size": 128, "dims": [32, 64, 128, 256], "depths": [1, 1, 2, 2], "heads": [1, 2, 4, 8],
    "groups": [-1, -1, 2, 4], "window_sizes": [8, 8, 8, 4], "stage_spec": [["L"], ["S"], ["L", "D"], ["L", "D"]],
}  # fmt: skip
SEMANTIC_RECIPE: dict[str, Any] = {
    "model": {"name": "semantic_fpn_dat_tiny",
              "kwargs": {"backbone_kwargs": _DIGITS_DAT, "drop_path_rate": 0.0, "fpn_channels": 64, "head_channels": 64,
                         "class_weight": [0.2] + [1.0] * 10}},  # background, most pixels, weighs less
    "data": {"task": "semantic", "format": "segmentation_folder", "num_classes": 11, "batch_size": 8,
             "eval_batch_size": 1, "num_workers": 0},
    # mild scale jitter (0.75-1.33x) with 96-pixel crops; no flip (a mirrored digit is another digit); background
    # is a class here (most of every crop), so no cat_max_ratio redraws
    "aug": {"seg_scale": [256, 128], "seg_ratio_range": [0.75, 1.33], "seg_crop": [96, 96], "cat_max_ratio": 1.0,
            "hflip": 0.0, "photometric": True},
    "optim": {"lr": 1.0e-3, "weight_decay": 0.01, "clip_grad": 1.0},
    "device": "cpu",
    "threads": 1,
}  # fmt: skip
INSTANCE_RECIPE: dict[str, Any] = {
    "model": {"name": "mask_rcnn_dat_tiny",
              "kwargs": {"backbone_kwargs": _DIGITS_DAT, "drop_path_rate": 0.0, "min_size": 128, "max_size": 128,
                         "fpn_channels": 64, "representation_size": 256, "mask_channels": 64,
                         "anchor_sizes": [8, 16, 32, 64, 128],  # digits of 8-40 pixels
                         # fewer proposals and sampled RoIs than for COCO: <= 6 objects per image, 2.8x faster steps
                         "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                         "box_batch_size_per_image": 128}},
    "data": {"task": "instance", "format": "coco", "train_split": "train/images", "val_split": "val/images",
             "train_annotations": "annotations/train.json", "val_annotations": "annotations/val.json",
             "batch_size": 8, "num_workers": 0},
    "aug": {"hflip": 0.0, "crop": None},
    "optim": {"lr": 5.0e-4, "weight_decay": 0.05, "clip_grad": 1.0},
    "device": "cpu",
    "threads": 1,
}  # fmt: skip
RECIPES: dict[str, dict[str, Any]] = {"detection": RECIPE, "instance": INSTANCE_RECIPE, "semantic": SEMANTIC_RECIPE}
DATASETS: dict[str, Callable[..., Path]] = {
    "detection": build_digits_detection, "instance": build_digits_instance, "semantic": build_digits_semantic,
}  # fmt: skip


@dataclass
class DemoResult:
    """What :func:`run_demo` did and where it wrote it."""

    output_dir: Path
    metrics: dict[str, float]
    steps: int
    epochs: float
    train_seconds: float
    total_seconds: float
    files: dict[str, Path]


def demo_config(output_dir: Path, data_root: Path, seed: int, task: str = "detection") -> TrainConfig:
    """The ``task``'s recipe (:data:`RECIPES`) for a dataset at ``data_root`` (the digits layout) and a run in
    ``output_dir``."""
    if task not in RECIPES:
        raise ValueError(f"task must be one of {sorted(RECIPES)}, got {task!r}")
    raw = json.loads(json.dumps(RECIPES[task]))  # a deep copy
    raw["data"]["root"] = str(data_root.resolve())
    raw.update(output_dir=str(output_dir), seed=seed)
    return config_from_dict(raw)


def print_now(line: str) -> None:
    """Print ``line`` and flush (progress shows at once when the output goes to a file or a pipe)."""
    print(line, flush=True)


def lr_factor(step: int, progress: float) -> float:
    """The learning-rate multiplier at optimizer ``step`` and ``progress`` (fraction of the run done)."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return warmup * (0.1 if progress >= LR_DROP_AT else 1.0)


@dataclass
class TrainingRun:
    """What :func:`train_bounded` did: optimizer steps, epochs (fractional), seconds and the loss log."""

    steps: int
    epochs: float
    seconds: float
    log: list[dict[str, float]]


def train_bounded(
    config: TrainConfig,
    data: DataBundle,
    model: torch.nn.Module,
    task: Task,
    *,
    seconds: float | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = print_now,
) -> TrainingRun:
    """Train ``model`` for ``seconds`` of wall-clock time or for ``epochs`` (exactly one of them).

    AdamW with the config's parameter groups and gradient clipping; the learning rates follow
    :func:`lr_factor` of the progress: the elapsed fraction of ``seconds``, or the fraction of the steps of
    ``epochs`` done. The mean loss is logged twice per epoch.
    """
    if (seconds is None) == (epochs is None):
        raise ValueError("give exactly one of seconds and epochs")
    device = torch.device(config.device)
    optimizer = build_optimizer(model, config.optim)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    sampler = EpochSampler(len(data.train), config.data.batch_size, seed=config.seed)
    loader = build_loader(data.train, sampler, config, train=True, device=device)
    total_steps = epochs * sampler.num_batches if epochs is not None else None
    interval = max(1, sampler.num_batches // 2)
    model.train()
    start, step, epoch, losses, records = time.perf_counter(), 0, 0, [], []
    while True:
        sampler.set_epoch(epoch)
        data.train.set_epoch(epoch)
        for batch_index, batch in enumerate(loader):
            elapsed = time.perf_counter() - start
            progress = step / total_steps if total_steps is not None else elapsed / seconds
            if progress >= 1.0:
                return TrainingRun(step, epoch + batch_index / sampler.num_batches, elapsed, records)
            factor = lr_factor(step, progress)
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * factor
            loss, _ = task.train_loss(model, batch, device, make_generator(config.seed, epoch, batch_index))
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if step % interval == 0:
                mean_loss, losses = sum(losses) / len(losses), []
                epochs_done = epoch + (batch_index + 1) / sampler.num_batches
                records.append({"step": step, "epoch": round(epochs_done, 3), "time_s": round(elapsed, 1),
                                "loss": round(mean_loss, 4), "lr_factor": factor})  # fmt: skip
                log(f"step {step:5d}  epoch {epochs_done:5.1f}  {elapsed:5.0f} s  loss {mean_loss:.3f}  lr x{factor:g}")
        epoch += 1


# --------------------------------------------------------------------------------------------------
# Pictures


@torch.no_grad()
def sampling_points_figure(
    model: DeformableDETR,
    image: Image.Image,
    config: TrainConfig,
    class_names: list[str] | None = None,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    max_queries: int = 6,
    scale: int = PICTURE_SCALE,
) -> Image.Image:
    """Panels of one image: the detections; the sampling points of each deformable block of the DAT backbone;
    the decoder's last-layer sampling locations of its best queries (at most ``max_queries`` scoring at least
    ``score_threshold``, else the best one), coloured by their class.

    The image is shown at the model's input size (the config's evaluation resize), enlarged ``scale`` times.
    """
    model.eval()
    x, _ = build_transforms(config, train=False)(image, {})
    shown = image.convert("RGB").resize((x.shape[-1], x.shape[-2]), Image.Resampling.BILINEAR)
    with record_sampling_locations(model.transformer.decoder.layers[-1].cross_attn) as calls:
        outputs = model([x])
    scores, labels = outputs["pred_logits"][0].sigmoid().max(-1)  # Q: best class per query
    ranked = scores.argsort(descending=True)
    queries = [q for q in ranked[:max_queries].tolist() if scores[q] >= score_threshold] or ranked[:1].tolist()
    size = torch.tensor([shown.width, shown.height] * 2, dtype=torch.float32)
    boxes = box_convert(outputs["pred_boxes"][0, queries].float(), in_fmt="cxcywh", out_fmt="xyxy") * size
    panels = [add_title(draw_detections(shown, boxes, labels[queries], scores[queries], class_names, scale=scale),
                        f"detections (score >= {score_threshold:g}, else the best)")]  # fmt: skip
    for block in dat_sampling_points(model.backbone, x):
        groups = block.positions.shape[0]
        title = f"DAT {block.name}: {groups} group(s), white = reference, dot = deformed point"
        panels.append(add_title(draw_dat_sampling_points(shown, block, scale=scale), title))
    colors = [label_color(int(labels[q])) for q in queries]
    msda = draw_msda_sampling_locations(shown, calls[-1], queries, boxes=boxes, colors=colors, scale=scale)
    panels.append(add_title(msda, "decoder sampling locations of the best queries (size ~ weight)"))
    return side_by_side(panels)


# --------------------------------------------------------------------------------------------------
# The whole demo


def run_demo(
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    *,
    task: str = "detection",
    minutes: float = DEFAULT_MINUTES,
    epochs: int | None = None,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 200,
    threads: int | None = None,
    log: Callable[[str], None] = print_now,
) -> DemoResult:
    """Build the data, train for ``minutes`` (or ``epochs``, which wins), evaluate, write predictions and pictures.

    Args:
        output_dir: where everything goes (created; files of an earlier demo are replaced).
        task: ``"detection"``, ``"instance"`` or ``"semantic"`` (see the module docstring).
        minutes: the training time budget (dataset, evaluation and pictures take some seconds more).
        epochs: train this many epochs instead, whatever the time.
        seed: the training seed (initialisation, data order, augmentation); the dataset is always the built-in one.
        num_train, num_val: canvases of the training and validation splits (1000 and 200: the built-in set).
        threads: CPU threads (``torch.set_num_threads``, for the whole process); default the recipe's 1.
        log: where progress lines go.
    """
    if task not in RECIPES:
        raise ValueError(f"task must be one of {sorted(RECIPES)}, got {task!r}")
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data_root = output_dir / "data" / f"digits_{task}_{num_train}_{num_val}"
    log(f"building the digits {task} set ({num_train} train / {num_val} val canvases) in {data_root}")
    DATASETS[task](data_root, num_train=num_train, num_val=num_val)
    config = demo_config(output_dir, data_root, seed, task)
    config.threads = threads or config.threads
    torch.set_num_threads(config.threads)
    save_config(config, output_dir / RUN_CONFIG)
    data = build_data(config)
    if task == "semantic":  # a segmentation folder has no class names; these are the built-in set's
        data.class_names = list(DIGITS_SEMANTIC_CLASSES)
    seed_everything(seed)
    model = build_model(config, data.num_classes)
    task_runner = build_task(config, data, model)
    budget = f"{epochs} epoch(s)" if epochs is not None else f"{minutes:g} minute(s)"
    log(f"training {config.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) "
        f"for {budget} on {torch.get_num_threads()} CPU thread(s)")  # fmt: skip
    run = train_bounded(config, data, model, task_runner, seconds=None if epochs is not None else minutes * 60,
                        epochs=epochs, log=log)  # fmt: skip
    files = {"run config": output_dir / RUN_CONFIG, "weights": output_dir / FINAL_WEIGHTS,
             "training log": output_dir / "log.jsonl", "metrics": output_dir / "metrics.json"}  # fmt: skip
    save_weights(model.state_dict(), files["weights"])
    files["training log"].write_text("".join(json.dumps(record) + "\n" for record in run.log))

    log(f"evaluating on the {len(data.val)} validation images")
    device = torch.device(config.device)
    val_loader = build_loader(data.val, ShardSampler(len(data.val)), config, train=False, device=device)
    metrics = task_runner.evaluate(model, val_loader, device)

    predictor = Predictor(model.eval(), config, data.class_names, device, files["weights"])
    val_images = sorted((data_root / "val" / "images").glob("*.png"))[:NUM_PREDICTION_PNGS]
    files["predictions"] = predict_files(predictor, val_images, output_dir / "predictions",
                                         score_threshold=SCORE_THRESHOLD)  # fmt: skip
    if task == "detection":
        records = json.loads(files["predictions"].read_text())["images"]
        busiest = max(records, key=lambda record: len(record["detections"]))  # the richest picture
        figure = sampling_points_figure(model, load_rgb(Path(busiest["file"])), config, data.class_names)
        files["sampling points"] = output_dir / "sampling_points.png"
        figure.save(files["sampling points"])

    total = time.perf_counter() - start
    summary = {
        "task": task, **({"coco": metrics} if task == "detection" else metrics), "steps": run.steps,
        "epochs": round(run.epochs, 2), "train_seconds": round(run.seconds, 1), "total_seconds": round(total, 1),
        "threads": torch.get_num_threads(), "num_train": num_train, "num_val": num_val, "seed": seed,
    }  # fmt: skip
    files["metrics"].write_text(json.dumps(summary, indent=1) + "\n")
    return DemoResult(output_dir, metrics, run.steps, run.epochs, run.seconds, total, files)
