"""Deformable DETR R-50 against Hugging Face ``transformers``' ``DeformableDetrForObjectDetection``.

Both models are full size (d_model 256, 6 + 6 layers, FFN 1024, 4 levels, 4 points, 300 queries, 91 classes)
with the same random weights: a random Hugging Face model (its own ResNet-50 backbone, every floating tensor
perturbed so that no zero-initialised head hides work) is loaded into ours through
:meth:`DeformableDETR.checkpoint_filter`. Variants: multi-scale, box refinement, two-stage. Both compute the
official model: Hugging Face's ``activation_dropout`` (default 0) is set to the official 0.1 of the FFN's
hidden layer, so that a training step draws the same dropout in both.

Cases, on one ``(1, 3, H, W)`` image whose bottom/right tenth is padding (masks and valid ratios matter):

- ``inference``: ``eval()``, ``torch.no_grad()``, the forward pass;
- ``train``: ``train()``, forward, the Hungarian-matched loss with auxiliary (and two-stage encoder) losses
  for 5 target boxes, backward. Hugging Face computes its loss in ``forward`` from ``labels``; ours with
  :class:`SetCriterion` and the official weights. Hugging Face freezes its whole ResNet backbone, so ours is
  frozen the same way (the trainable parameter counts are checked to be equal).

Times and memory: :mod:`~deformvision.bench.measure` (the two models take turns in every repeat).
"""

import statistics

import torch
from torch import nn

from deformvision.bench.measure import check_device, check_repeats, peak_memory, round_times
from deformvision.models import create_model
from deformvision.models.deformable_detr.criterion import SetCriterion, weight_dict, weighted_loss
from deformvision.models.deformable_detr.matcher import HungarianMatcher

NUM_CLASSES, NUM_QUERIES, NUM_TARGETS = 91, 300, 5
VARIANTS = {  # name -> (our model, Hugging Face flags)
    "multi_scale": ("deformable_detr_r50", {}),
    "box_refine": ("deformable_detr_r50_box_refine", {"with_box_refine": True}),
    "two_stage": ("deformable_detr_r50_two_stage", {"with_box_refine": True, "two_stage": True}),
}
CASES = ("inference", "train")


def _transformers():
    try:
        import transformers  # noqa: PLC0415  (optional: only this benchmark needs it)
    except ImportError as err:
        raise ModuleNotFoundError(
            "bench detr needs transformers (the model compared with): pip install transformers"
        ) from err
    return transformers


def build_pair(variant: str) -> tuple[nn.Module, nn.Module]:
    """Ours and the Hugging Face model of ``variant`` with the same (random, perturbed) weights."""
    transformers = _transformers()
    name, flags = VARIANTS[variant]
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage2", "stage3", "stage4"]),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=NUM_CLASSES,
        num_queries=NUM_QUERIES,
        two_stage_num_proposals=NUM_QUERIES,
        auxiliary_loss=True,
        activation_dropout=0.1,  # the official FFN: dropout(0.1) after the ReLU, as ours
        **flags,
    )
    torch.manual_seed(0)
    theirs = transformers.DeformableDetrForObjectDetection(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in [*theirs.named_parameters(), *theirs.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if key.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))
    ours = create_model(name, num_classes=NUM_CLASSES, num_queries=NUM_QUERIES)
    ours.load_state_dict(ours.checkpoint_filter(theirs.state_dict()))
    if not any(p.requires_grad for p in theirs.model.backbone.parameters()):
        ours.backbone.requires_grad_(False)
    # the trainable parameters outside the class heads must agree: in box refinement without two-stage Hugging
    # Face ties its per-layer class heads into one (the official code and ours clone them), the same compute
    trainable = [
        sum(p.numel() for name, p in m.named_parameters() if p.requires_grad and "class_embed" not in name)
        for m in (ours, theirs)
    ]
    if trainable[0] != trainable[1]:
        raise RuntimeError(f"trainable parameters differ: ours {trainable[0]}, Hugging Face {trainable[1]}")
    return ours, theirs


def make_batch(height: int, width: int, device: str) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """One image whose bottom/right 10% are padding, its mask (True = padding) and 5 target boxes."""
    g = torch.Generator().manual_seed(2)
    images = torch.randn(1, 3, height, width, generator=g)
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[:, height - height // 10 :] = True
    mask[:, :, width - width // 10 :] = True
    images[:, :, mask[0]] = 0
    centres = 0.2 + 0.6 * torch.rand(NUM_TARGETS, 2, generator=g)
    sizes = 0.05 + 0.2 * torch.rand(NUM_TARGETS, 2, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (NUM_TARGETS,), generator=g)
    targets = [{"labels": labels.to(device), "boxes": torch.cat([centres, sizes], 1).to(device)}]
    return images.to(device), mask.to(device), targets


def calls(ours: nn.Module, theirs: nn.Module, batch: tuple, two_stage: bool, case: str) -> list:
    """The zero-argument ``case`` functions of ours and of Hugging Face's model, in that order."""
    images, mask, targets = batch
    pixel_mask = (~mask).long()  # Hugging Face: 1 = a real pixel
    if case == "inference":

        @torch.no_grad()
        def run_ours() -> object:
            return ours.eval()(images, mask)

        @torch.no_grad()
        def run_theirs() -> object:
            return theirs.eval()(pixel_values=images, pixel_mask=pixel_mask)

        return [run_ours, run_theirs]
    weights = weight_dict(len(ours.transformer.decoder.layers), two_stage)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(), weights)
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]

    def train_ours() -> object:
        ours.train().zero_grad(set_to_none=True)
        weighted_loss(criterion(ours(images, mask), targets), weights).backward()

    def train_theirs() -> object:
        theirs.train().zero_grad(set_to_none=True)
        theirs(pixel_values=images, pixel_mask=pixel_mask, labels=hf_labels).loss.backward()

    return [train_ours, train_theirs]


def run(
    variants: tuple[str, ...] = tuple(VARIANTS),
    cases: tuple[str, ...] = CASES,
    height: int = 512,
    width: int = 683,
    device: str = "cpu",
    repeats: int = 3,
    memory: bool = True,
) -> None:
    """Print the table: median (min - max) ms of ours and Hugging Face's, the ratio, and peak memory."""
    check_device(device)
    check_repeats(repeats)
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 32:
            raise ValueError(f"{name} must be an integer >= 32, got {value!r}")
    for name, values, allowed in (("variants", variants, VARIANTS), ("cases", cases, CASES)):
        if not values or any(v not in allowed for v in values):
            raise ValueError(f"{name} must be some of {', '.join(allowed)}, got {list(values)}")
    transformers = _transformers()
    batch = make_batch(height, width, device)
    print(
        f"Deformable DETR R-50 vs transformers {transformers.__version__}, one {height}x{width} image on {device} "
        f"({torch.get_num_threads()} threads, torch {torch.__version__}), median (min - max) of {repeats}\n"
    )
    print(
        "| variant | case | ours ms | transformers ms | transformers / ours | ours peak MiB | transformers peak MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for variant in variants:
        ours, theirs = (model.to(device) for model in build_pair(variant))
        for case in cases:
            fns = calls(ours, theirs, batch, VARIANTS[variant][1].get("two_stage", False), case)
            times = round_times(fns, device, repeats)
            spread = [f"{statistics.median(t) * 1e3:.0f} ({min(t) * 1e3:.0f} - {max(t) * 1e3:.0f})" for t in times]
            ratio = statistics.median(times[1]) / statistics.median(times[0])
            peaks = [f"{peak_memory(fn, device) / 2**20:.0f}" for fn in fns] if memory else ["-", "-"]
            print(
                f"| {variant} | {case} | {spread[0]} | {spread[1]} | {ratio:.2f} | {peaks[0]} | {peaks[1]} |",
                flush=True,
            )
