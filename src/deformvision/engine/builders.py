"""Build the pieces of a run from a :class:`~deformvision.engine.config.TrainConfig`.

These are the entry points other commands reuse (evaluation, prediction, demos): :func:`build_data`
(datasets with their transforms and label metadata), :func:`build_transforms` (the training or
evaluation transform alone), :func:`build_model`, :func:`build_task` (loss and evaluation of the task),
:func:`build_loader`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from deformvision.data import (
    ADE20K,
    DIGITS_SEMANTIC_CLASSES,
    CocoDetection,
    ImageFolder,
    SegmentationFolder,
    build_classification_transforms,
    build_detection_transforms,
    build_digits_classification,
    build_digits_detection,
    build_digits_instance,
    build_digits_semantic,
    build_instance_transforms,
    build_segmentation_transforms,
    collate_detection,
)
from deformvision.engine.classification import ClassificationTask
from deformvision.engine.config import TrainConfig
from deformvision.engine.data import SeededTransform
from deformvision.engine.detection import DetectionTask
from deformvision.engine.instance import InstanceTask, collate_instances
from deformvision.engine.semantic import SemanticTask
from deformvision.models import create_model
from deformvision.models.deformable_detr import HungarianMatcher, PostProcess, SetCriterion, weight_dict

Task = ClassificationTask | DetectionTask | InstanceTask | SemanticTask


@dataclass
class DataBundle:
    """The datasets of a run and what the model and evaluation need to know about them.

    ``train`` and ``val`` return augmented / evaluation-transformed samples (``train`` is ``None`` when
    built for evaluation only). ``class_names[label]`` names each label; for detection
    ``label_to_category_id`` maps labels back to COCO category ids and ``val_annotations`` is the json
    the evaluation scores against.
    """

    train: SeededTransform | None
    val: SeededTransform
    num_classes: int
    class_names: list[str]
    label_to_category_id: dict[int, int] | None = None
    val_annotations: Path | None = None


def _untransformed(image: Any, target: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
    """The transforms given to :class:`CocoDetection` so that it returns the PIL image and raw target."""
    return image, target


def _num_classes(config: TrainConfig, found: int) -> int:
    if config.data.num_classes is None:
        return found
    if config.data.num_classes < found:
        raise ValueError(f"data.num_classes={config.data.num_classes} but the dataset has {found} labels")
    return config.data.num_classes


def build_transforms(config: TrainConfig, train: bool) -> Callable[..., Any]:
    """The training or evaluation transform of ``config``.

    Classification: ``PIL image -> (3, img_size, img_size)`` tensor (timm). Detection, instance and
    semantic segmentation: ``(PIL image, target) -> ((3, H, W) tensor, target)`` (``transforms.v2``;
    ``target`` may be ``{}`` for detection).
    Random transforms draw from the global RNGs (see :class:`~deformvision.engine.data.SeededTransform`).
    """
    data, aug = config.data, config.aug
    if data.task == "instance":
        return build_instance_transforms(train, hflip=aug.hflip, crop=aug.crop)
    if data.task == "semantic":
        return build_segmentation_transforms(
            train,
            scale=aug.seg_scale,
            ratio_range=aug.seg_ratio_range,
            crop_size=aug.seg_crop,
            cat_max_ratio=aug.cat_max_ratio,
            hflip=aug.hflip,
            photometric=aug.photometric,
        )
    if data.task == "detection":
        return build_detection_transforms(
            train,
            scales=aug.scales,
            max_size=aug.max_size,
            crop=aug.crop,
            crop_resize=aug.crop_resize,
            val_size=aug.val_size,
            hflip=aug.hflip,
        )
    if not train:
        return build_classification_transforms(False, data.img_size, crop_pct=aug.crop_pct)
    return build_classification_transforms(
        True,
        data.img_size,
        scale=aug.scale,
        ratio=aug.ratio,
        hflip=aug.hflip,
        rand_augment=aug.rand_augment,
        reprob=aug.reprob,
    )


def _classification_data(config: TrainConfig, train: bool) -> DataBundle:
    data = config.data
    root = Path(data.root)
    if data.format == "digits":
        build_digits_classification(root, img_size=data.img_size)
    elif data.format != "image_folder":
        raise ValueError(f"classification data must be image_folder or digits, got format={data.format!r}")
    val_set = ImageFolder(root / data.val_split)
    train_set = None
    if train:
        train_set = ImageFolder(root / data.train_split)
        if train_set.classes != val_set.classes:
            raise ValueError(f"class folders differ between {train_set.root} and {val_set.root}")
        train_set = SeededTransform(train_set, build_transforms(config, True), config.seed)
    return DataBundle(
        train=train_set,
        val=SeededTransform(val_set, build_transforms(config, False), config.seed),
        num_classes=_num_classes(config, len(val_set.classes)),
        class_names=list(val_set.classes),
    )


def _detection_data(config: TrainConfig, train: bool) -> DataBundle:
    """Deformable DETR (``detection``) or torchvision-style (``instance``, with masks) data in COCO form."""
    data = config.data
    root = Path(data.root)
    instance = data.task == "instance"
    if data.format == "digits":
        (build_digits_instance if instance else build_digits_detection)(root)
        images = {"train": root / "train" / "images", "val": root / "val" / "images"}
        annotations = {"train": root / "annotations" / "train.json", "val": root / "annotations" / "val.json"}
    elif data.format == "coco":
        images = {"train": root / data.train_split, "val": root / data.val_split}
        annotations = {"train": root / data.train_annotations, "val": root / data.val_annotations}
    else:
        raise ValueError(f"{data.task} data must be coco or digits, got format={data.format!r}")

    def dataset(split: str, is_train: bool) -> SeededTransform:
        base = CocoDetection(
            images[split], annotations[split], _untransformed, contiguous_ids=data.contiguous_ids, masks=instance
        )
        return SeededTransform(base, build_transforms(config, is_train), config.seed, detection=True)

    val_set = dataset("val", False)
    base = val_set.dataset
    found = len(base.category_ids) if data.contiguous_ids else max(base.category_ids) + 1
    names = [base.category_names.get(base.label_to_category_id.get(label), "") for label in range(found)]
    return DataBundle(
        train=dataset("train", True) if train else None,
        val=val_set,
        num_classes=_num_classes(config, found),
        class_names=names,
        label_to_category_id=dict(base.label_to_category_id),
        val_annotations=annotations["val"],
    )


def _semantic_data(config: TrainConfig, train: bool) -> DataBundle:
    data = config.data
    root = Path(data.root)
    if data.format == "ade20k":
        splits = {"train": ADE20K(root, "training", _untransformed), "val": ADE20K(root, "validation", _untransformed)}
        names = list(ADE20K.classes)
    elif data.format in ("segmentation_folder", "digits"):
        if data.format == "digits":
            build_digits_semantic(root)
        reduce = data.reduce_zero_label and data.format != "digits"
        splits = {
            name: SegmentationFolder(
                root / split / "images",
                root / split / "labels",
                _untransformed,
                reduce_zero_label=reduce,
                num_classes=data.num_classes,
            )
            for name, split in (("train", data.train_split), ("val", data.val_split))
        }
        names = list(DIGITS_SEMANTIC_CLASSES) if data.format == "digits" else []
    else:
        raise ValueError(f"semantic data must be ade20k, segmentation_folder or digits, got format={data.format!r}")
    if not names:
        if data.num_classes is None:
            raise ValueError("data.num_classes must be set for a segmentation_folder (the classes of its label maps)")
        names = [str(k) for k in range(data.num_classes)]

    def wrap(name: str, is_train: bool) -> SeededTransform:
        return SeededTransform(splits[name], build_transforms(config, is_train), config.seed, detection=True)

    return DataBundle(
        train=wrap("train", True) if train else None,
        val=wrap("val", False),
        num_classes=_num_classes(config, len(names)),
        class_names=names,
    )


def build_data(config: TrainConfig, train: bool = True) -> DataBundle:
    """The datasets of ``config.data`` (the built-in digits sets are written to ``data.root`` first)."""
    if config.data.task == "classification":
        return _classification_data(config, train)
    if config.data.task == "semantic":
        return _semantic_data(config, train)
    return _detection_data(config, train)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """``create_model(model.name, num_classes=..., checkpoint=model.checkpoint, **model.kwargs)``."""
    kwargs = {"num_classes": num_classes, **config.model.kwargs}
    model = create_model(config.model.name, checkpoint=config.model.checkpoint, **kwargs)
    if config.model.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"{config.model.name} does not support gradient checkpointing")
        model.set_grad_checkpointing(True)
    return model


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` itself when ``mode`` is ``"none"`` (eager), else ``torch.compile(model, mode=mode)``.

    The compiled module shares ``model``'s parameters and buffers; compilation happens at its first call
    (and again for a new input shape or train/eval mode).
    """
    return model if mode == "none" else torch.compile(model, mode=mode)


def build_task(config: TrainConfig, data: DataBundle, model: nn.Module) -> Task:
    """The loss and evaluation of ``config.data.task``.

    Detection reads ``dec_layers`` and ``two_stage`` from ``model`` (the loss weights cover every
    decoder layer and the encoder proposals).
    """
    loss, aug = config.loss, config.aug
    if config.data.task == "classification":
        mixup = None
        if aug.mixup > 0 or aug.cutmix > 0:
            if config.data.batch_size % 2:
                raise ValueError(
                    f"aug.mixup={aug.mixup} / aug.cutmix={aug.cutmix} mix each image with its mirror in the batch "
                    f"(timm's Mixup): data.batch_size must be even, got {config.data.batch_size}"
                )
            mixup = Mixup(
                mixup_alpha=aug.mixup,
                cutmix_alpha=aug.cutmix,
                prob=aug.mixup_prob,
                switch_prob=aug.mixup_switch_prob,
                mode="batch",
                label_smoothing=loss.label_smoothing,
                num_classes=data.num_classes,
            )
        return ClassificationTask(data.num_classes, mixup, loss.label_smoothing)
    if config.data.task == "instance":
        roi_heads = getattr(model, "roi_heads", None)
        masks = roi_heads is not None and roi_heads.has_mask()
        return InstanceTask(data.val_annotations, data.label_to_category_id, masks=masks)
    if config.data.task == "semantic":
        return SemanticTask(
            data.num_classes, inference=aug.seg_inference, crop_size=aug.seg_crop, stride=aug.slide_stride
        )
    matcher = HungarianMatcher(loss.set_cost_class, loss.set_cost_bbox, loss.set_cost_giou, loss.focal_alpha)
    num_decoder_layers = len(model.transformer.decoder.layers) if hasattr(model, "transformer") else 1
    weights = weight_dict(
        num_decoder_layers,
        bool(getattr(model, "two_stage", False)),
        loss.cls_loss_coef,
        loss.bbox_loss_coef,
        loss.giou_loss_coef,
    )
    criterion = SetCriterion(data.num_classes, matcher, weights, focal_alpha=loss.focal_alpha)
    return DetectionTask(criterion, PostProcess(loss.num_select), data.val_annotations, data.label_to_category_id)


def build_loader(
    dataset: Dataset, sampler: Sampler[int], config: TrainConfig, *, train: bool, device: torch.device
) -> DataLoader:
    """A loader over ``sampler``'s indices (detection batches padded with masks; instance batches as lists;
    semantic evaluation one image at a time, since label maps keep their sizes).

    The loader has its own seeded generator so that creating an iterator never consumes the global
    RNG (which a resumed run restores exactly); workers are not persistent, so they see the dataset's
    current epoch.
    """
    data = config.data
    batch_size = data.batch_size if train else (data.eval_batch_size or data.batch_size)
    if data.task == "semantic" and not train:
        batch_size = 1  # label maps keep their original sizes (mmseg's protocol): one image per batch
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=data.num_workers,
        collate_fn={"detection": collate_detection, "instance": collate_instances}.get(data.task),
        pin_memory=data.pin_memory and device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
