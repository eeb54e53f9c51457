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
  ``deformvision predict --run`` read (with the Trainer's ``checkpoints/`` and ``last_checkpoint.json``);
- ``metrics.json``: the task's numbers (also at the top level: ``segm_AP50``, ``mIoU``...), steps, epochs
  and times; ``log.jsonl``: the Trainer's log (the training loss about twice per epoch, the evaluation);
- ``predictions/``: ``predictions.json`` and annotated PNGs of validation images (``deformvision predict``:
  boxes; masks tinted over the image; predicted class maps with a legend);
- detection only, ``sampling_points.png``: one validation image with the detections, the deformed sampling
  points of the DAT backbone's deformable blocks, and the multi-scale deformable attention sampling
  locations of the decoder's best queries.

Each demo is a recipe plus a budget: ``deformvision/recipes/demo_<task>.yaml`` trained by the library's
:class:`~deformvision.engine.Trainer` for a wall-clock budget (``schedule.max_seconds``): the learning-rate
schedule follows the fraction of the budget used (warmup, then ``x0.1`` for the last fifth), training stops
when the budget is spent, and evaluation follows. With ``epochs`` the schedule follows the steps instead.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torchvision.ops import box_convert

from deformvision._atomic import save_image_atomic, write_json_atomic
from deformvision.data import (
    DIGITS_SEMANTIC_CLASSES,
    build_digits_detection,
    build_digits_instance,
    build_digits_semantic,
)
from deformvision.data._image import load_rgb
from deformvision.engine import TrainConfig, build_transforms
from deformvision.engine.config import config_from_dict
from deformvision.engine.run_dir import FINAL_WEIGHTS, RUN_CONFIG
from deformvision.engine.trainer import Trainer
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.predict import Predictor, predict_files
from deformvision.recipes import recipe_path
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
PICTURE_SCALE = 4  # 128-pixel images drawn 512 pixels wide
NUM_PREDICTION_PNGS = 8

DATASETS: dict[str, Callable[..., Path]] = {
    "detection": build_digits_detection,
    "instance": build_digits_instance,
    "semantic": build_digits_semantic,
}
TASKS = tuple(DATASETS)


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


def demo_recipe(task: str = "detection") -> dict[str, Any]:
    """The ``task``'s training recipe, the shipped recipe ``demo_<task>``, as a nested dict.

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS`.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return yaml.safe_load(recipe_path(f"demo_{task}").read_text(encoding="utf-8"))


def demo_config(
    output_dir: Path,
    data_root: Path,
    seed: int,
    task: str = "detection",
    *,
    minutes: float = DEFAULT_MINUTES,
    epochs: int | None = None,
) -> TrainConfig:
    """The ``task``'s recipe (:func:`demo_recipe`) for a dataset at ``data_root`` (the digits layout), a run in
    ``output_dir`` (an earlier demo's run there is replaced) and a budget of ``minutes`` of training, or
    ``epochs`` (which wins).

    Raises:
        ValueError: ``task`` is unknown, or ``minutes`` / ``epochs`` is not positive.
    """
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if epochs is None and not minutes > 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    raw = demo_recipe(task)
    raw["data"]["root"] = str(data_root.resolve())
    raw.update(output_dir=str(output_dir), seed=seed, overwrite=True)
    if epochs is not None:  # the schedule follows the steps of the epochs
        raw["schedule"].update(epochs=epochs, max_seconds=0.0, max_steps=0)
    else:
        raw["schedule"].update(max_seconds=minutes * 60.0, max_steps=0)
    return config_from_dict(raw)


def print_now(line: str) -> None:
    """Print ``line`` and flush (progress shows at once when the output goes to a file or a pipe)."""
    print(line, flush=True)


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
    panels = [
        add_title(
            draw_detections(shown, boxes, labels[queries], scores[queries], class_names, scale=scale),
            f"detections (score >= {score_threshold:g}, else the best)",
        )
    ]
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

    Training is :class:`~deformvision.engine.Trainer` on the task's recipe (:func:`demo_config`) with the
    budget; its progress lines and the evaluation go to stdout.

    Args:
        output_dir: where everything goes (created; files of an earlier demo are replaced).
        task: ``"detection"``, ``"instance"`` or ``"semantic"`` (see the module docstring).
        minutes: the training time budget (dataset, evaluation and pictures take some seconds more).
        epochs: train this many epochs instead, whatever the time.
        seed: the training seed (initialisation, data order, augmentation); the dataset is always the built-in one.
        num_train, num_val: canvases of the training and validation splits (1000 and 200: the built-in set).
        threads: CPU threads (``torch.set_num_threads``, for the whole process); default the recipe's 1.
        log: where the demo's own progress lines go.

    Raises:
        ValueError: ``task``, ``minutes`` or ``epochs`` is invalid, or ``output_dir`` holds another dataset.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data_root = output_dir / "data" / f"digits_{task}_{num_train}_{num_val}"
    config = demo_config(output_dir, data_root, seed, task, minutes=minutes, epochs=epochs)
    config.threads = threads or config.threads
    log(f"building the digits {task} set ({num_train} train / {num_val} val canvases) in {data_root}")
    DATASETS[task](data_root, num_train=num_train, num_val=num_val)
    trainer = Trainer(config)
    model, data = trainer.model, trainer.data
    if task == "semantic":  # a segmentation folder has no class names; these are the built-in set's
        data.class_names = list(DIGITS_SEMANTIC_CLASSES)
    budget = f"{epochs} epoch(s)" if epochs is not None else f"{minutes:g} minute(s)"
    log(
        f"training {config.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) "
        f"for {budget} on {torch.get_num_threads()} CPU thread(s), then evaluating on the {len(data.val)} "
        "validation images"
    )
    metrics = trainer.fit()
    files = {
        "run config": output_dir / RUN_CONFIG,
        "weights": output_dir / FINAL_WEIGHTS,
        "training log": output_dir / "log.jsonl",
        "metrics": output_dir / "metrics.json",
    }

    predictor = Predictor(model.eval(), config, data.class_names, trainer.device, files["weights"])
    val_images = sorted((data_root / "val" / "images").glob("*.png"))[:NUM_PREDICTION_PNGS]
    files["predictions"] = predict_files(
        predictor, val_images, output_dir / "predictions", score_threshold=SCORE_THRESHOLD
    )
    if task == "detection":
        records = json.loads(files["predictions"].read_text())["images"]
        busiest = max(records, key=lambda record: len(record["detections"]))  # the richest picture
        figure = sampling_points_figure(model, load_rgb(Path(busiest["file"])), config, data.class_names)
        files["sampling points"] = save_image_atomic(figure, output_dir / "sampling_points.png")

    total = time.perf_counter() - start
    steps, epochs_done = trainer.global_step, trainer.global_step / trainer.steps_per_epoch
    summary = {
        "task": task,
        **({"coco": metrics} if task == "detection" else metrics),
        "steps": steps,
        "epochs": round(epochs_done, 2),
        "train_seconds": round(trainer.train_seconds, 1),
        "total_seconds": round(total, 1),
        "threads": torch.get_num_threads(),
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
    }
    write_json_atomic(files["metrics"], summary)
    return DemoResult(output_dir, metrics, steps, epochs_done, trainer.train_seconds, total, files)
