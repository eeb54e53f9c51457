"""Deformable DETR inference (ResNet-50, multi-scale, 300 queries): ours against Hugging Face ``transformers``'
``DeformableDetrForObjectDetection`` with the same configuration (random weights, timm ResNet-50 backbone).

The two models take turns in every repeat; the table gives the median forward time of each (no gradients),
the speed-up (theirs / ours) and the peak memory of one call (:mod:`~deformvision.bench.measure`).
"""

import torch
from torch import nn

from deformvision.bench.measure import check_device, check_repeats, median_times, peak_memory
from deformvision.models import create_model


def hugging_face_detr() -> nn.Module:
    """``DeformableDetrForObjectDetection`` configured as ``deformable_detr_r50`` (91 classes, random weights).

    Raises:
        ModuleNotFoundError: ``transformers`` is not installed.
    """
    try:
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection  # noqa: PLC0415  (optional)
    except ImportError as err:
        raise ModuleNotFoundError(
            "bench detr needs transformers (the model compared with): pip install transformers"
        ) from err

    config = DeformableDetrConfig(
        use_timm_backbone=True,
        backbone="resnet50",
        use_pretrained_backbone=False,
        num_labels=91,
        num_queries=300,
        num_feature_levels=4,
        encoder_n_points=4,
        decoder_n_points=4,
        with_box_refine=False,
        two_stage=False,
    )
    return DeformableDetrForObjectDetection(config)


def run(batch: int = 1, size: int = 800, device: str = "cpu", repeats: int = 3) -> None:
    """Print the table for ``batch`` images of ``size`` x ``size`` pixels on ``device``."""
    check_device(device)
    check_repeats(repeats)
    for name, value in (("batch", batch), ("size", size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    theirs = hugging_face_detr().eval().to(device)
    torch.manual_seed(0)
    ours = create_model("deformable_detr_r50").eval().to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    pixel_mask = torch.ones(batch, size, size, dtype=torch.long, device=device)  # HF: 1 = a real pixel

    @torch.no_grad()
    def run_ours() -> object:
        return ours(images)

    @torch.no_grad()
    def run_theirs() -> object:
        return theirs(pixel_values=images, pixel_mask=pixel_mask)

    calls = [run_ours, run_theirs]
    times = median_times(calls, device, repeats)
    peaks = [peak_memory(call, device) / 2**20 for call in calls]
    print(
        f"Deformable DETR R-50 inference, batch {batch} at {size}x{size} on {device} "
        f"({torch.get_num_threads()} threads, torch {torch.__version__}, median of {repeats})\n"
    )
    print("| model | ms | peak MiB | speed-up (transformers / ours) |")
    print("|---|---:|---:|---:|")
    print(f"| deformvision | {times[0] * 1e3:.1f} | {peaks[0]:.0f} | {times[1] / times[0]:.2f} |")
    print(f"| transformers | {times[1] * 1e3:.1f} | {peaks[1]:.0f} | 1.00 |")
