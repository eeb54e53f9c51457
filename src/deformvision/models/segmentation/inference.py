"""Test-time inference of segmentation models: whole image, or averaged overlapping windows (mmseg's modes).

Both take any callable ``model(images (B, C, h, w)) -> logits (B, K, h, w)`` (our segmentation models in
eval mode, or a plain module) and return logits; take ``argmax(1)`` for the label map. Neither changes
the model's mode nor disables gradients: call ``model.eval()`` and wrap in ``torch.no_grad()``.

The DAT paper's ADE20K protocol (the official configs' ``test_cfg``) is whole-image inference on images
resized to short side 512; sliding windows (512x512, stride 341) are the other common protocol.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of them, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")


def _resize(logits: torch.Tensor, output_size: int | Sequence[int] | None) -> torch.Tensor:
    if output_size is None:
        return logits
    size = _pair(output_size, "output_size")
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _run(model: Model, images: torch.Tensor) -> torch.Tensor:
    logits = model(images)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[0] != images.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (B, K, h, w) logits for (B, C, h, w) images, got {got}")
    if logits.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"the model must return logits at its input size {tuple(images.shape[-2:])}, got {tuple(logits.shape[-2:])}"
        )
    return logits


def whole_inference(model: Model, images: torch.Tensor, output_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Logits of the whole images in one forward pass.

    Args:
        model: returns ``(B, K, H, W)`` logits for ``(B, C, H, W)`` images.
        images: ``(B, C, H, W)`` normalised images.
        output_size: resize the logits bilinearly to this ``(h, w)`` (the original image size when the
            test images were resized); default: ``(H, W)``.

    Returns:
        ``(B, K, H, W)`` (or ``output_size``) logits.
    """
    _check_images(images)
    return _resize(_run(model, images), output_size)


def sliding_windows(
    height: int, width: int, crop_size: int | Sequence[int], stride: int | Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """The windows ``(y0, y1, x0, x1)`` (half-open) of :func:`slide_inference`, row by row.

    Per axis (mmseg's grid): ``max(L - crop + stride - 1, 0) // stride + 1`` windows starting every
    ``stride``; a window passing the image end is shifted back to end there (its start clipped at 0),
    so windows are ``crop`` long unless the image is shorter than ``crop``.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(
            f"stride {(stride_h, stride_w)} must not exceed crop_size {(crop_h, crop_w)} (pixels left out)"
        )

    def axis(length: int, crop: int, step: int) -> list[tuple[int, int]]:
        count = max(length - crop + step - 1, 0) // step + 1
        spans = []
        for i in range(count):
            end = min(i * step + crop, length)
            spans.append((max(end - crop, 0), end))
        return spans

    return [(y0, y1, x0, x1) for y0, y1 in axis(height, crop_h, stride_h) for x0, x1 in axis(width, crop_w, stride_w)]


def slide_inference(
    model: Model,
    images: torch.Tensor,
    num_classes: int | None = None,
    crop_size: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (341, 341),
    output_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
) -> torch.Tensor:
    """Logits averaged over overlapping windows (mmseg's ``slide`` test mode).

    Each window of :func:`sliding_windows` is run through the model and its logits added at its place;
    the sum is divided by the number of windows covering each pixel. A window shorter than
    ``crop_size`` (the image is smaller than the crop along that axis) is zero-padded at the
    bottom/right to ``crop_size`` and its logits cropped back, so the model always sees crops of the
    training size.

    Args:
        model: returns ``(N, K, h, w)`` logits for ``(N, C, h, w)`` images.
        images: ``(B, C, H, W)`` normalised images.
        num_classes: ``K``; checked against the model's output when given.
        crop_size: window ``(h, w)``.
        stride: step ``(h, w)`` between windows, at most ``crop_size``.
        output_size: resize the logits bilinearly to this ``(h, w)``; default ``(H, W)``.
        batch_size: windows per forward pass (windows of every image are batched together; the results
            do not depend on it for a model in eval mode).

    Returns:
        ``(B, K, H, W)`` (or ``output_size``) logits.
    """
    _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    crop_h, crop_w = _pair(crop_size, "crop_size")
    b, _, height, width = images.shape
    windows = sliding_windows(height, width, (crop_h, crop_w), stride)
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)  # only when the image is smaller
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images

    # every (image, window) pair; each crop is (C, crop_h, crop_w) of the padded images
    jobs = [(i, window) for i in range(b) for window in windows]
    logits_sum: torch.Tensor | None = None
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        crops = torch.stack([padded[i, :, y0 : y0 + crop_h, x0 : x0 + crop_w] for i, (y0, _, x0, _) in chunk])
        logits = _run(model, crops)  # N, K, crop_h, crop_w
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ValueError(f"num_classes is {num_classes} but the model returned {logits.shape[1]} channels")
        if logits_sum is None:
            logits_sum = logits.new_zeros(b, logits.shape[1], height, width)
        for n, (i, (y0, y1, x0, x1)) in enumerate(chunk):
            logits_sum[i, :, y0:y1, x0:x1] += logits[n, :, : y1 - y0, : x1 - x0]
    assert logits_sum is not None  # at least one window
    count = images.new_zeros(height, width)
    for y0, y1, x0, x1 in windows:
        count[y0:y1, x0:x1] += 1
    return _resize(logits_sum / count, output_size)  # B, K, H, W
