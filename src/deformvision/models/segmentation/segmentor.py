"""Encoder-decoder semantic segmentation: backbone, optional neck, decode head, optional auxiliary head.

The calling convention of every segmentation model of this package:

- ``model(images)`` -> logits ``(B, num_classes, H, W)`` at the input size (train or eval mode);
- ``model(images, targets)`` -> ``{"loss_seg": ..., "loss_aux": ...}`` (``loss_aux`` only with an
  auxiliary head, already multiplied by its weight): sum them for the total loss.

``images`` are ``(B, C, H, W)`` float, normalised (ImageNet mean/std for the DAT models); ``targets``
``(B, H, W)`` integer class indices, ``ignore_index`` (255) marking pixels that count nowhere.

Any ``H, W`` works: the images are padded at the bottom/right with zeros to a multiple of the
backbone's largest stride (32), the logits (stride 4 of the padded image) are upsampled bilinearly
(``align_corners=False``) to the padded size and cropped back to ``H x W``. For sizes that are already
multiples of 32 (the 512x512 training crops) this is exactly mmseg's "resize the logits to the input
size"; for other sizes it keeps every logit aligned with its pixel (mmseg stretches the map of a
Swin/DAT backbone that padded internally over the unpadded image instead).

``torch.compile``: the eval forward and the training forward (with targets) are each captured as one
graph (``fullgraph=True`` works; the target value check is skipped while tracing). Tested with the
``aot_eager`` backend; inductor gives the same logits (largest difference 1e-6 on a narrow UperNet)
after a long compilation on a CPU (2-3 minutes on 2 busy cores).
"""

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from deformvision._checks import check_bool


class FPNNeck(FeaturePyramidNetwork):
    """torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on a list of maps (no extra level).

    Per level a 1x1 lateral conv to ``out_channels``; top-down, the coarser result is upsampled (nearest)
    to the finer lateral's size and added; a 3x3 conv on every level. All convs have biases and no norm,
    as mmseg's ``FPN`` in the Semantic FPN config.

    Shape:
        - Input: a list of ``(B, in_channels[i], H_i, W_i)`` maps, finest first.
        - Output: a list of ``(B, out_channels, H_i, W_i)`` maps.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__(list(in_channels), out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        return list(super().forward(OrderedDict((str(i), x) for i, x in enumerate(features))).values())


class EncoderDecoder(nn.Module):
    """A semantic segmentation model (mmseg's ``EncoderDecoder``): see the module docstring for the calls.

    Args:
        backbone: a ``features_only`` model (timm's contract: ``forward`` returns NCHW maps, finest first;
            ``feature_info.reduction()`` their strides), e.g. ``dat_tiny(features_only=True,
            out_indices=(0, 1, 2, 3))``.
        decode_head: maps the (neck's) features to logits at the finest level's resolution; has
            ``num_classes``.
        neck: optional, between backbone and decode head (Semantic FPN's :class:`FPNNeck`).
        aux_head: optional auxiliary head on the backbone map ``aux_index`` (UperNet's FCN head on
            stage 3); trained with weight ``aux_weight``, unused for the logits.
        aux_index: which backbone map the auxiliary head reads.
        aux_weight: multiplies the auxiliary loss.
        ignore_index: target value of pixels that count nowhere (not a class index).
        avg_non_ignore: average the cross-entropy over the non-ignored pixels (default; a target with
            no such pixel gives loss 0 and zero gradients). ``False``: over all pixels, ignored ones
            counting 0, which is what the mmseg v0.x ``CrossEntropyLoss`` of the official configs did (a
            loss scaled by the fraction of labelled pixels).
        class_weight: one loss weight per class (mmseg's ``class_weight``), e.g. a small weight for a
            background that covers most pixels; the average is then over the weights of the pixels
            counted. Default: every class 1.

    Training needs more than one image per BatchNorm (local batch >= 2, or SyncBatchNorm across
    processes): see :mod:`deformvision.models.segmentation.heads`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        neck: nn.Module | None = None,
        aux_head: nn.Module | None = None,
        aux_index: int = 2,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        avg_non_ignore: bool = True,
        class_weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes: int = decode_head.num_classes
        if 0 <= ignore_index < self.num_classes:
            raise ValueError(f"ignore_index must not be a class index in [0, {self.num_classes}), got {ignore_index}")
        weights_ok = class_weight is None or all(math.isfinite(w) and w >= 0 for w in class_weight)
        if not weights_ok or (class_weight is not None and len(class_weight) != self.num_classes):
            raise ValueError(f"class_weight must be {self.num_classes} non-negative numbers, got {list(class_weight)}")
        if not (math.isfinite(aux_weight) and aux_weight >= 0):
            raise ValueError(f"aux_weight must be a finite number >= 0, got {aux_weight}")
        check_bool("avg_non_ignore", avg_non_ignore)
        self.register_buffer(
            "class_weight",
            torch.tensor(class_weight, dtype=torch.float32) if class_weight is not None else None,
            persistent=False,
        )
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.size_divisor = max(backbone.feature_info.reduction())

    # ----------------------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating-point (normalised) tensor, got dtype {images.dtype}")

    def check_targets(self, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Validate ``(B, H, W)`` integer targets against the images; return them as int64.

        Raises:
            ValueError: wrong shape or dtype, or values that are neither a class index in
                ``[0, num_classes)`` nor ``ignore_index`` (the message lists them; this value check is
                skipped under ``torch.compile``, so that a compiled training step has no graph break).
        """
        b, _, h, w = images.shape
        if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (b, h, w):
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"targets must be a (B, H, W) = {(b, h, w)} tensor matching the images, got {shape}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"targets must be an integer (int64) tensor of class indices, got dtype {targets.dtype}")
        targets = targets.long()
        if torch.compiler.is_compiling():  # the check depends on the data: a graph break; skipped when traced
            return targets
        bad = targets[(targets != self.ignore_index) & ((targets < 0) | (targets >= self.num_classes))]
        if bad.numel():  # a device sync; CUDA's cross-entropy would fail with an opaque device assert instead
            values = torch.unique(bad).tolist()
            shown = ", ".join(map(str, values[:10])) + (f", ... ({len(values)} distinct)" if len(values) > 10 else "")
            raise ValueError(
                f"targets must be class indices in [0, {self.num_classes}) or ignore_index {self.ignore_index}; "
                f"found {shown}"
            )
        return targets

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``size_divisor``."""
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % self.size_divisor, -w % self.size_divisor
        return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images

    @staticmethod
    def _upsample_crop(logits: torch.Tensor, padded: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """``(B, K, h, w)`` logits of the padded image -> ``(B, K, *size)``: bilinear to ``padded``, then crop."""
        if tuple(logits.shape[-2:]) != tuple(padded):
            logits = F.interpolate(logits, size=tuple(padded), mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of ``(B, K, H, W)`` logits against ``(B, H, W)`` targets (see ``avg_non_ignore``)."""
        weight = self.class_weight.to(logits.dtype) if self.class_weight is not None else None
        total = F.cross_entropy(logits, targets, weight=weight, ignore_index=self.ignore_index, reduction="sum")
        counted = targets != self.ignore_index
        if weight is not None:  # the weights of the counted pixels (ignored ones weigh 0)
            count = weight[targets.clamp(0, self.num_classes - 1)][counted].sum()
            if not self.avg_non_ignore:
                count = count * targets.numel() / counted.sum().clamp(min=1)
            return total / count.clamp(min=1e-12)
        count = counted.sum() if self.avg_non_ignore else targets.new_tensor(targets.numel())
        return total / count.clamp(min=1)

    # ----------------------------------------------------------------------------------------------
    def forward(
        self, images: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits ``(B, num_classes, H, W)``, or with ``targets`` ``(B, H, W)`` the dict of losses.

        Args:
            images: ``(B, C, H, W)`` normalised float images, any ``H, W``.
            targets: ``(B, H, W)`` class indices, ``ignore_index`` for unlabelled pixels.
        """
        self._check_images(images)
        if targets is not None:
            targets = self.check_targets(targets, images)
        size = images.shape[-2:]
        padded = self._pad(images)  # B, C, H', W' (multiples of size_divisor)
        features = self.backbone(padded)  # finest first: B, C_i, H' / s_i, W' / s_i
        decoded = self.decode_head(self.neck(features) if self.neck is not None else features)
        logits = self._upsample_crop(decoded, padded.shape[-2:], size)  # B, K, H, W
        if targets is None:
            return logits
        losses = {"loss_seg": self.cross_entropy(logits, targets)}
        if self.aux_head is not None:
            aux = self._upsample_crop(self.aux_head(features[self.aux_index]), padded.shape[-2:], size)
            losses["loss_aux"] = self.aux_weight * self.cross_entropy(aux, targets)
        return losses

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's blocks in the backward pass (the backbone's ``set_grad_checkpointing``).

        The official UperNet config trains with it on (``use_checkpoint=True``), Semantic FPN's with it off.
        """
        if not hasattr(self.backbone, "set_grad_checkpointing"):
            raise ValueError(f"the backbone {type(self.backbone).__name__} has no set_grad_checkpointing")
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's ``no_weight_decay`` names (position tables), prefixed ``backbone.``."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{name}" for name in names}
