"""Inference on image files: detections (or top-k classes) per image as JSON, and annotated PNGs.

A :class:`Predictor` holds a model in eval mode, the config whose evaluation transform prepares the
images, and the class names when known. :func:`load_predictor` builds one from a training run directory
(its ``config.yaml`` and weights), from a config file, or from a registered model name; then
:func:`predict_files` writes ``predictions.json`` and one annotated PNG per image.

Detections are in pixels of the *original* image: boxes ``(x0, y0, x1, y1)`` with pixel edges at integers.
They are the official post-processing's top (query, class) pairs (``loss.num_select`` of the config)
whose score reaches the threshold.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import ImageNetInfo
from timm.models import PretrainedCfg
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from deformvision._atomic import save_image_atomic, write_json_atomic
from deformvision.convert.checkpoint import head_num_classes
from deformvision.data import ADE20K_CLASSES, DIGITS_SEMANTIC_CLASSES, IMG_EXTENSIONS
from deformvision.data._image import is_image_file, load_rgb
from deformvision.engine import TrainConfig, build_model, build_transforms, load_config
from deformvision.engine.builders import compile_model
from deformvision.engine.coco_eval import masks_to_rle
from deformvision.engine.distributed import resolve_device
from deformvision.engine.run_dir import RUN_CONFIG, run_weights
from deformvision.models import (
    create_model,
    get_pretrained_cfg,
    list_models,
    load_checkpoint,
    load_pretrained,
    read_state_dict,
)
from deformvision.models.deformable_detr import DeformableDETR, PostProcess
from deformvision.models.segmentation import EncoderDecoder, slide_inference, whole_inference
from deformvision.viz import (
    add_legend,
    add_title,
    draw_detections,
    draw_instances,
    draw_label_map,
    enlarge,
    legible_scale,
    side_by_side,
)

PREDICTIONS_FILE = "predictions.json"


@dataclass
class Predictor:
    """A model ready for inference on PIL images.

    Attributes:
        model: in eval mode, on ``device``.
        config: ``data.task`` says detection or classification; its evaluation transform (``aug.val_size``,
            ``aug.max_size``; ``data.img_size``, ``aug.crop_pct``) prepares the images; ``loss.num_select``
            detections per image are scored.
        class_names: ``class_names[label]`` (empty strings or ``None``: unknown, labels are written as numbers).
        device: where the model runs.
        weights: the file the weights came from (``None``: the model's initialisation).
    """

    model: nn.Module
    config: TrainConfig
    class_names: list[str] | None
    device: torch.device
    weights: Path | None = None

    @property
    def task(self) -> str:
        return self.config.data.task

    def class_name(self, label: int) -> str | None:
        """The name of ``label``, or ``None`` when unknown."""
        if self.class_names is None or label >= len(self.class_names):
            return None
        return self.class_names[label] or None

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], score_threshold: float = 0.0) -> list[dict[str, torch.Tensor]]:
        """Per image ``scores``, ``labels`` and ``boxes`` ``(x0, y0, x1, y1)`` in its own pixels (clipped to it),
        best first, ``score >= score_threshold`` (a number in [0, 1])."""
        check_score_threshold(score_threshold)
        transform = build_transforms(self.config, train=False)
        tensors = [transform(image, {})[0].to(self.device) for image in images]
        outputs = self.model(tensors)  # padded to one batch by the detector
        sizes = [(image.height, image.width) for image in images]
        results = PostProcess(self.config.loss.num_select)(outputs, sizes)
        for result, (height, width) in zip(results, sizes, strict=True):
            result["boxes"][:, 0::2].clamp_(0, width)  # a box may reach beyond the image: clip it to the image
            result["boxes"][:, 1::2].clamp_(0, height)
        return [{k: v[r["scores"] >= score_threshold].cpu() for k, v in r.items()} for r in results]

    @torch.no_grad()
    def segment_instances(
        self, images: Sequence[Image.Image], score_threshold: float = 0.0
    ) -> list[dict[str, torch.Tensor]]:
        """Per image the model's ``boxes`` (original pixels), ``labels``, ``scores`` and, for mask models,
        ``masks`` ``(n, 1, H, W)`` probabilities, best first, ``score >= score_threshold`` (a number in [0, 1])."""
        check_score_threshold(score_threshold)
        transform = build_transforms(self.config, train=False)
        outputs = self.model([transform(image, {})[0].to(self.device) for image in images])
        results = []
        for out in outputs:
            keep = out["scores"] >= score_threshold
            results.append({k: (v.float() if v.is_floating_point() else v)[keep].cpu() for k, v in out.items()})
        return results

    @torch.no_grad()
    def segment(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Per image the ``(H, W)`` int64 label map at its original size (``aug.seg_inference``: whole or slide)."""
        transform = build_transforms(self.config, train=False)
        aug = self.config.aug
        maps = []
        for image in images:
            x = transform(image)[None].to(self.device)  # 1, 3, h, w (resized to fit aug.seg_scale)
            if aug.seg_inference == "slide":
                logits = slide_inference(
                    self.model,
                    x,
                    crop_size=aug.seg_crop,
                    stride=aug.slide_stride,
                    output_size=(image.height, image.width),
                )
            else:
                logits = whole_inference(self.model, x, output_size=(image.height, image.width))
            maps.append(logits[0].argmax(0).cpu())
        return maps

    @torch.no_grad()
    def classify(self, images: Sequence[Image.Image], top_k: int = 5) -> list[dict[str, torch.Tensor]]:
        """Per image the ``top_k`` (an int >= 1) most probable classes: ``scores`` (softmax) and ``labels``, best
        first."""
        check_top_k(top_k)
        transform = build_transforms(self.config, train=False)
        batch = torch.stack([transform(image) for image in images]).to(self.device)
        probabilities = self.model(batch).float().softmax(-1)
        scores, labels = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        return [{"scores": s.cpu(), "labels": l.cpu()} for s, l in zip(scores, labels, strict=True)]


# --------------------------------------------------------------------------------------------------
# Building a predictor


def class_names_of(config: TrainConfig) -> list[str] | None:
    """The class names of ``config``'s dataset when its files are there (nothing is built), else ``None``.

    Detection: the categories of the validation annotations, in label order (sorted category ids with
    ``contiguous_ids``, else indexed by category id). Classification: the class folders of the validation split.
    Semantic segmentation: the built-in digits and ADE20K classes (a segmentation_folder has no names).
    """
    data, root = config.data, Path(config.data.root)
    if data.task == "semantic":
        return {"digits": list(DIGITS_SEMANTIC_CLASSES), "ade20k": list(ADE20K_CLASSES)}.get(data.format)
    if data.task == "classification":
        split = root / data.val_split
        return sorted(p.name for p in split.iterdir() if p.is_dir()) if split.is_dir() else None
    annotations = root / ("annotations/val.json" if data.format == "digits" else data.val_annotations)
    if not annotations.is_file():
        return None
    categories = {c["id"]: c.get("name", str(c["id"])) for c in json.loads(annotations.read_text())["categories"]}
    if data.contiguous_ids:
        return [categories[i] for i in sorted(categories)]
    return [categories.get(i, "") for i in range(max(categories) + 1)]


def check_score_threshold(score_threshold: float) -> None:
    """Raise unless ``score_threshold`` is a number in [0, 1] (TypeError for another type, ValueError else; nan too)."""
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
        raise TypeError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    if not 0 <= score_threshold <= 1:  # nan fails both comparisons
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")


def check_top_k(top_k: int) -> None:
    """Raise unless ``top_k`` is an int >= 1 (TypeError for another type, ValueError below 1)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int >= 1, got {top_k!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k}")


def load_predictor(
    *,
    run: str | Path | None = None,
    config: str | Path | None = None,
    model: str | None = None,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
    model_kwargs: dict[str, Any] | None = None,
    device: str = "auto",
) -> Predictor:
    """A :class:`Predictor` from one of three sources.

    Args:
        run: a training output directory (``deformvision train`` or ``deformvision demo``): its
            ``config.yaml``, and its weights (``checkpoint`` overrides them).
        config: a YAML config (its ``model``, ``data`` and ``aug``); weights from ``checkpoint``, else
            ``model.checkpoint``.
        model: a registered model name (``"dat_tiny"``, ``"deformable_detr_r50.coco"``); ``data.task`` follows
            the model (a Deformable DETR detects, other models classify). Without ``checkpoint`` the published
            pretrained weights are used (downloaded once and cached), with their class names (ImageNet-1k,
            COCO); a model without published weights is refused, never run with random weights. With
            ``checkpoint``: the number of classes of its head; class names unknown.
        checkpoint: weights (ours, official or Hugging Face; see :func:`~deformvision.models.load_checkpoint`).
        overrides: ``section.key=value`` config overrides (e.g. ``aug.val_size=512``, ``loss.num_select=50``).
        model_kwargs: further model arguments (over ``model.kwargs``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (see
            :func:`~deformvision.engine.distributed.resolve_device`).

    Raises:
        ValueError: not exactly one of ``run``, ``config``, ``model``; a config or weights that do not fit; a
            model without ``checkpoint`` that has no published weights.
        FileNotFoundError: a missing run directory, config or weights file.
        RuntimeError: pretrained weights that are not cached and cannot be downloaded; a device this machine
            does not have.
    """
    if sum(source is not None for source in (run, config, model)) != 1:
        raise ValueError("give exactly one of a run directory, a config file or a model name")
    weights = Path(checkpoint) if checkpoint is not None else None
    pretrained = None
    if model is not None:
        if weights is None:
            pretrained = get_pretrained_cfg(model)
            if not pretrained.has_weights:
                raise ValueError(
                    f"model {model} has no published weights: pass --checkpoint PATH (predicting with random "
                    f"weights would be meaningless); models with weights: {', '.join(list_models(pretrained=True))}"
                )
        train_config = _model_config(model.partition(".")[0], weights, pretrained, overrides)
        class_names = _pretrained_class_names(pretrained)
    else:
        if run is not None:
            run = Path(run)
            if not (run / RUN_CONFIG).is_file():
                raise FileNotFoundError(f"{run} is not a run directory: it has no {RUN_CONFIG}")
            train_config = load_config(run / RUN_CONFIG, overrides)
            weights = weights or run_weights(run)
        else:
            train_config = load_config(config, overrides)
            if weights is None and train_config.model.checkpoint is not None:
                weights = Path(train_config.model.checkpoint)
        class_names = class_names_of(train_config)
    train_config.model.kwargs.update(model_kwargs or {})
    train_config.model.checkpoint = None  # loaded below, once
    num_classes = train_config.data.num_classes or (len(class_names) if class_names else None)
    if num_classes is None:
        raise ValueError("the number of classes is unknown: set data.num_classes (--set data.num_classes=K)")
    net = build_model(train_config, num_classes)
    if pretrained is not None:
        weights = load_pretrained(net, pretrained)
    elif weights is not None:
        load_checkpoint(net, weights)
    target = resolve_device(device)
    net = compile_model(net.eval().to(target), train_config.compile)  # eager unless the config's compile says
    return Predictor(net, train_config, class_names, target, weights)


def _model_config(
    model: str, weights: Path | None, pretrained: PretrainedCfg | None, overrides: Sequence[str]
) -> TrainConfig:
    """The default config of a registered model: its task, and the classes of the checkpoint's head."""
    if pretrained is not None:
        num_classes = pretrained.num_classes
    else:
        num_classes = head_num_classes(read_state_dict(weights)) if weights is not None else None
    with torch.device("meta"):  # only the kind of model and its default head size are needed
        probe = create_model(model, **({"num_classes": num_classes} if num_classes else {}))
    task = task_of(probe)
    config = load_config(None, [f"model.name={model}", f"data.task={task}", *overrides])
    if config.data.num_classes is None:
        config.data.num_classes = num_classes or getattr(probe, "num_classes", None)
    return config


def task_of(model: nn.Module) -> str:
    """The engine task a model is trained and evaluated as (its output contract)."""
    if isinstance(model, DeformableDETR):
        return "detection"
    if isinstance(model, GeneralizedRCNN | RetinaNet):
        return "instance"
    if isinstance(model, EncoderDecoder):
        return "semantic"
    return "classification"


def _pretrained_class_names(cfg: PretrainedCfg | None) -> list[str] | None:
    """Class names of published weights: ImageNet-1k (timm's), COCO by category id (torchvision's)."""
    if cfg is None:
        return None
    if cfg.tag == "in1k":
        info = ImageNetInfo("imagenet-1k")
        return [info.index_to_description(i) for i in range(info.num_classes())]
    if cfg.tag == "coco":  # Deformable DETR's labels are COCO category ids (0 and gaps unused)
        names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
        return ["" if name in ("__background__", "N/A") else name for name in names]
    return None


# --------------------------------------------------------------------------------------------------
# Running it on files


def collect_images(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files named directly (whatever their extension) or found in folders (their image files, sorted,
    not recursive), in the order given. A single path stands for a list of one.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a folder holds no image file, or there are no inputs.
        TypeError: an input is not a path.
    """
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    for item in inputs:
        if not isinstance(item, str | Path):
            raise TypeError(f"inputs must be image or folder paths (str or Path), got {item!r}")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                raise ValueError(f"folder {item} holds no image file ({', '.join(IMG_EXTENSIONS)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such image file or folder: {item}")
    if not files:
        raise ValueError("no input images")
    return files


def _png_names(files: Sequence[Path]) -> list[str]:
    """One PNG name per file, its stem, made unique with ``_2``, ``_3``... where stems repeat."""
    names, seen = [], set()
    for file in files:
        name, k = file.stem, 1
        while name in seen:
            k += 1
            name = f"{file.stem}_{k}"
        seen.add(name)
        names.append(f"{name}.png")
    return names


def _detection_record(predictor: Predictor, result: dict[str, torch.Tensor]) -> dict[str, Any]:
    rows = zip(result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist(), strict=True)
    return {
        "detections": [
            {
                "box": [round(v, 2) for v in box],
                "score": round(score, 4),
                "label": label,
                "category": predictor.class_name(label),
            }
            for box, score, label in rows
        ]
    }


def _instance_record(predictor: Predictor, result: dict[str, torch.Tensor]) -> dict[str, Any]:
    record = _detection_record(predictor, result)
    if "masks" in result:  # COCO RLE of each mask binarised at 0.5, in original pixels
        for detection, rle in zip(record["detections"], masks_to_rle(result["masks"]), strict=True):
            detection["segmentation"] = rle
    return record


def _semantic_record(predictor: Predictor, label_map: torch.Tensor, png: str) -> dict[str, Any]:
    counts = torch.bincount(label_map.flatten())
    present = counts.nonzero().flatten().tolist()
    fractions = (counts[present].double() / label_map.numel()).tolist()
    classes = [
        {"label": k, "class": predictor.class_name(k), "fraction": round(f, 4)}
        for k, f in zip(present, fractions, strict=True)
    ]
    return {"label_map": png.removesuffix(".png") + "_labels.png", "classes": classes}


def _classification_record(predictor: Predictor, result: dict[str, torch.Tensor]) -> dict[str, Any]:
    top = zip(result["labels"].tolist(), result["scores"].tolist(), strict=True)
    return {
        "top_k": [
            {"label": label, "class": predictor.class_name(label), "score": round(score, 4)} for label, score in top
        ]
    }


def _annotate(predictor: Predictor, image: Image.Image, result: Any) -> Image.Image:
    scale = legible_scale(image)
    names = predictor.class_names or []
    if predictor.task == "instance" and "masks" in result:
        return draw_instances(
            image,
            result["masks"],
            result["boxes"],
            result["labels"],
            result["scores"],
            predictor.class_names,
            scale=scale,
        )
    if predictor.task == "semantic":
        present = torch.unique(result).tolist()
        background = [k for k in present if k < len(names) and names[k] == "background"]  # left untinted
        overlay = add_legend(draw_label_map(image, result, skip=background, scale=scale), names, present)
        return side_by_side([add_title(enlarge(image, scale), "image"), add_title(overlay, "predicted classes")])
    if predictor.task in ("detection", "instance"):
        return draw_detections(
            image, result["boxes"], result["labels"], result["scores"], predictor.class_names, scale=scale
        )
    label, score = int(result["labels"][0]), float(result["scores"][0])
    return add_title(enlarge(image, scale), f"{predictor.class_name(label) or label} {score:.2f}")


def predict_files(
    predictor: Predictor,
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    score_threshold: float = 0.3,
    top_k: int = 5,
    batch_size: int = 8,
) -> Path:
    """Run ``predictor`` on the images of ``inputs``; write ``output_dir/predictions.json`` and a PNG per image.

    ``predictions.json``: ``{"task", "model", "weights", "score_threshold" | "top_k", "images": [...]}``, one entry
    per image in input order: ``{"file", "width", "height", "png"}`` and, for detection, ``"detections"``: a list
    of ``{"box": [x0, y0, x1, y1], "score", "label", "category"}`` (original pixels; ``category`` the class name or
    ``null``) with ``score >= score_threshold``, best first; for classification ``"top_k"``: a list of
    ``{"label", "class", "score"}``. The PNGs show the image (enlarged to a shorter side of at least 384
    pixels) with the boxes and names, or the best class as a title.

    Images are read ``batch_size`` at a time; ``predictions.json`` is written once all are done. Every file is
    written atomically (a crash leaves the previous file or the new one).

    Raises:
        ValueError: naming the file, for an image that cannot be decoded (``predictions.json`` is not written).
        FileNotFoundError, ValueError: inputs as :func:`collect_images`.
        TypeError, ValueError: ``score_threshold`` not in [0, 1], ``top_k`` or ``batch_size`` not an int >= 1
            (checked before anything is read or written).
    """
    check_score_threshold(score_threshold)
    check_top_k(top_k)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
    files = collect_images(inputs)
    pngs = _png_names(files)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for start in range(0, len(files), batch_size):
        batch = [load_rgb(file) for file in files[start : start + batch_size]]
        if predictor.task == "detection":
            results = predictor.detect(batch, score_threshold)
        elif predictor.task == "instance":
            results = predictor.segment_instances(batch, score_threshold)
        elif predictor.task == "semantic":
            results = predictor.segment(batch)
        else:
            results = predictor.classify(batch, top_k)
        for file, png, image, result in zip(files[start:], pngs[start:], batch, results, strict=False):
            save_image_atomic(_annotate(predictor, image, result), output_dir / png)
            record = {"file": str(file), "width": image.width, "height": image.height, "png": png}
            if predictor.task == "detection":
                record.update(_detection_record(predictor, result))
            elif predictor.task == "instance":
                record.update(_instance_record(predictor, result))
            elif predictor.task == "semantic":
                record.update(_semantic_record(predictor, result, png))
                save_image_atomic(Image.fromarray(result.to(torch.uint8).numpy()), output_dir / record["label_map"])
            else:
                record.update(_classification_record(predictor, result))
            records.append(record)
    summary = {
        "task": predictor.task,
        "model": predictor.config.model.name,
        "weights": str(predictor.weights) if predictor.weights else None,
    }
    if predictor.task in ("detection", "instance"):
        summary["score_threshold"] = score_threshold
    elif predictor.task == "classification":
        summary["top_k"] = top_k
    return write_json_atomic(output_dir / PREDICTIONS_FILE, {**summary, "images": records})
