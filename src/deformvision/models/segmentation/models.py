"""Registered ADE20K segmentation models of the DAT paper (arXiv 2201.00520, Table 4): Semantic FPN and UperNet.

Structure as the mmseg v0.x configs the paper's numbers come from (the Swin / DAT++ segmentation bases;
the DAT v1 configs were never published: see ``docs/dense_prediction_notes.md`` sections 5-7):

- ``semantic_fpn_dat_*``: DAT stages 1-4 (strides 4-32) -> :class:`FPNNeck` (256 channels, 4 levels)
  -> :class:`FPNHead` (128 channels). No auxiliary head.
- ``upernet_dat_*``: DAT stages 1-4 -> :class:`UPerHead` (512 channels, PPM 1/2/3/6); auxiliary
  :class:`FCNHead` (one conv, 256 channels) on stage 3, loss weight 0.4.

| name | backbone | params (150 classes) | paper | paper mIoU (single scale) |
|---|---|---|---|---|
| ``semantic_fpn_dat_tiny`` | DAT-T | 31,924,624 | 32M | 42.6 |
| ``semantic_fpn_dat_small`` | DAT-S | 53,305,888 | 53M | 46.1 |
| ``semantic_fpn_dat_base`` | DAT-B | 91,354,446 | 92M | 47.0 |
| ``upernet_dat_tiny`` | DAT-T | 59,972,646 | 60M | 45.5 |
| ``upernet_dat_small`` | DAT-S | 81,353,910 | 81M | 48.3 |
| ``upernet_dat_base`` | DAT-B | 121,393,124 | 121M | 49.4 |

Every factory takes:

- ``num_classes``: default 150 (ADE20K, ``reduce_zero_label``: label 0 "other" becomes 255 = ignored);
- ``pretrained_backbone``: start the backbone from the DAT ImageNet-1k weights (``dat_*.in1k``,
  downloaded once and cached; official checkpoints converted on loading). ``pretrained=True`` is for
  segmentation weights, of which none are published: it raises, pass ``checkpoint=PATH`` instead;
- ``drop_path_rate``: the backbone's stochastic depth. The v1 values were never published; the
  defaults are the DAT++ segmentation configs' for the same size and head (Semantic FPN 0.4 / 0.4 / 0.7,
  UperNet 0.3 / 0.5 / 0.7 for T / S / B; Swin-T's UperNet also uses 0.3);
- ``backbone_kwargs``: more ``dat_*`` arguments (narrow test models: ``dims``, ``depths``,
  ``stage_spec``...); the backbone is always ``features_only`` with ``out_indices=(0, 1, 2, 3)``;
- ``ignore_index``, ``avg_non_ignore``: see :class:`EncoderDecoder`; head widths (``fpn_channels``,
  ``head_channels`` / ``channels``, ``aux_channels``, ``aux_weight``, ``dropout``).

The backbone is built at ``img_size=224`` as in the official configs (only its deformable position
tables depend on it; they are sampled continuously, so every input size runs).

Official recipes (not applied by the models; for a training config):

- Semantic FPN: AdamW lr 2e-4 at batch 32 (1e-4 at batch 16), weight decay 1e-4, poly decay power
  0.9, 40k iterations at batch 32 (80k at 16), no warmup.
- UperNet: AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, linear warmup 1500 iterations
  then linear decay (poly 1.0), 160k iterations at batch 16; gradient checkpointing on
  (:meth:`EncoderDecoder.set_grad_checkpointing`).
- Both: no weight decay on norms and position tables; 512x512 crops of images resized to short
  side 512 x (0.5-2.0), flip, photometric distortion; SyncBN
  (``nn.SyncBatchNorm.convert_sync_batchnorm``); test at short side 512, whole image.
"""

from collections.abc import Callable
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from torch import nn

from deformvision.models._registry import build_model, register_model
from deformvision.models.dat import dat_base, dat_small, dat_tiny
from deformvision.models.segmentation.heads import FCNHead, FPNHead, UPerHead
from deformvision.models.segmentation.segmentor import EncoderDecoder, FPNNeck

_BACKBONES: dict[str, Callable[..., nn.Module]] = {"tiny": dat_tiny, "small": dat_small, "base": dat_base}
_RESERVED_BACKBONE_KWARGS = ("pretrained", "features_only", "out_indices", "drop_path_rate")


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 150,
        "input_size": (3, 512, 512),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bilinear",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2201.00520",
        "paper_name": "Vision Transformer with Deformable Attention",
        "origin_url": "https://github.com/LeapLabTHU/DAT",
        **kwargs,
    }


# No published segmentation weights: cfgs without URLs, so that model.pretrained_cfg describes the inputs.
default_cfgs = generate_default_cfgs(
    {f"{head}_dat_{size}": _cfg() for head in ("semantic_fpn", "upernet") for size in ("tiny", "small", "base")}
)


def dat_backbone(
    size: str, pretrained: bool = False, drop_path_rate: float = 0.0, backbone_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """``dat_{size}(features_only=True, out_indices=(0, 1, 2, 3))``: four NCHW maps, strides 4 to 32.

    Args:
        size: ``"tiny"``, ``"small"`` or ``"base"``.
        pretrained: load the ImageNet-1k weights of ``dat_{size}``.
        drop_path_rate: stochastic depth of the backbone.
        backbone_kwargs: other ``dat_{size}`` arguments (not ``pretrained``, ``features_only``,
            ``out_indices`` nor ``drop_path_rate``, which have their own arguments or are fixed).
    """
    if size not in _BACKBONES:
        raise ValueError(f"size must be one of {sorted(_BACKBONES)}, got {size!r}")
    backbone_kwargs = dict(backbone_kwargs or {})
    reserved = sorted(set(backbone_kwargs) & set(_RESERVED_BACKBONE_KWARGS))
    if reserved:
        raise ValueError(f"backbone_kwargs must not set {reserved}: use the model's own arguments (or they are fixed)")
    return _BACKBONES[size](
        pretrained=pretrained,
        features_only=True,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=drop_path_rate,
        **backbone_kwargs,
    )


def semantic_fpn(
    backbone: nn.Module,
    num_classes: int = 150,
    fpn_channels: int = 256,
    head_channels: int = 128,
    dropout: float = 0.1,
    **kwargs: Any,
) -> EncoderDecoder:
    """Semantic FPN (Kirillov et al., CVPR 2019) on a ``features_only`` backbone returning 4 maps, finest first.

    ``kwargs``: :class:`EncoderDecoder` arguments (``ignore_index``, ``avg_non_ignore``).
    """
    channels, strides = backbone.feature_info.channels(), backbone.feature_info.reduction()
    neck = FPNNeck(channels, fpn_channels)
    head = FPNHead([fpn_channels] * len(channels), strides, head_channels, num_classes, dropout)
    return EncoderDecoder(backbone, head, neck=neck, **kwargs)


def upernet(
    backbone: nn.Module,
    num_classes: int = 150,
    channels: int = 512,
    pool_scales: tuple[int, ...] = (1, 2, 3, 6),
    aux_channels: int = 256,
    aux_index: int = 2,
    aux_weight: float = 0.4,
    dropout: float = 0.1,
    **kwargs: Any,
) -> EncoderDecoder:
    """UperNet (Xiao et al., ECCV 2018) with an auxiliary FCN head on backbone map ``aux_index``.

    ``aux_channels=0`` builds no auxiliary head. ``kwargs``: :class:`EncoderDecoder` arguments.
    """
    in_channels = backbone.feature_info.channels()
    head = UPerHead(in_channels, channels, pool_scales, num_classes, dropout)
    aux = FCNHead(in_channels[aux_index], aux_channels, 1, num_classes, dropout) if aux_channels > 0 else None
    return EncoderDecoder(backbone, head, aux_head=aux, aux_index=aux_index, aux_weight=aux_weight, **kwargs)


def _create(
    variant: str,
    head: Callable[..., EncoderDecoder],
    pretrained: bool,
    pretrained_backbone: bool,
    drop_path_rate: float,
    backbone_kwargs: dict[str, Any] | None,
    **kwargs: Any,
) -> EncoderDecoder:
    size = variant.rsplit("_", 1)[1]

    def build(**model_kwargs: Any) -> EncoderDecoder:
        return head(dat_backbone(size, pretrained_backbone, drop_path_rate, backbone_kwargs), **model_kwargs)

    return build_model(build, variant, pretrained, **kwargs)


@register_model
def semantic_fpn_dat_tiny(
    pretrained: bool = False,
    num_classes: int = 150,
    pretrained_backbone: bool = False,
    drop_path_rate: float = 0.4,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """Semantic FPN on DAT-T: 31.9M parameters (paper: 32M, 42.6 mIoU on ADE20K val, 80k iterations)."""
    return _create(
        "semantic_fpn_dat_tiny",
        semantic_fpn,
        pretrained,
        pretrained_backbone,
        drop_path_rate,
        backbone_kwargs,
        num_classes=num_classes,
        **kwargs,
    )


@register_model
def semantic_fpn_dat_small(
    pretrained: bool = False,
    num_classes: int = 150,
    pretrained_backbone: bool = False,
    drop_path_rate: float = 0.4,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """Semantic FPN on DAT-S: 53.3M parameters (paper: 53M, 46.1 mIoU)."""
    return _create(
        "semantic_fpn_dat_small",
        semantic_fpn,
        pretrained,
        pretrained_backbone,
        drop_path_rate,
        backbone_kwargs,
        num_classes=num_classes,
        **kwargs,
    )


@register_model
def semantic_fpn_dat_base(
    pretrained: bool = False,
    num_classes: int = 150,
    pretrained_backbone: bool = False,
    drop_path_rate: float = 0.7,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """Semantic FPN on DAT-B: 91.4M parameters (paper: 92M, 47.0 mIoU)."""
    return _create(
        "semantic_fpn_dat_base",
        semantic_fpn,
        pretrained,
        pretrained_backbone,
        drop_path_rate,
        backbone_kwargs,
        num_classes=num_classes,
        **kwargs,
    )


@register_model
def upernet_dat_tiny(
    pretrained: bool = False,
    num_classes: int = 150,
    pretrained_backbone: bool = False,
    drop_path_rate: float = 0.3,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """UperNet on DAT-T with the auxiliary FCN head: 60.0M parameters (paper: 60M, 45.5 mIoU, 160k iterations)."""
    return _create(
        "upernet_dat_tiny",
        upernet,
        pretrained,
        pretrained_backbone,
        drop_path_rate,
        backbone_kwargs,
        num_classes=num_classes,
        **kwargs,
    )


@register_model
def upernet_dat_small(
    pretrained: bool = False,
    num_classes: int = 150,
    pretrained_backbone: bool = False,
    drop_path_rate: float = 0.5,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """UperNet on DAT-S: 81.3M parameters (paper: 81M, 48.3 mIoU)."""
    return _create(
        "upernet_dat_small",
        upernet,
        pretrained,
        pretrained_backbone,
        drop_path_rate,
        backbone_kwargs,
        num_classes=num_classes,
        **kwargs,
    )


@register_model
def upernet_dat_base(
    pretrained: bool = False,
    num_classes: int = 150,
    pretrained_backbone: bool = False,
    drop_path_rate: float = 0.7,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """UperNet on DAT-B: 121.4M parameters (paper: 121M, 49.4 mIoU)."""
    return _create(
        "upernet_dat_base",
        upernet,
        pretrained,
        pretrained_backbone,
        drop_path_rate,
        backbone_kwargs,
        num_classes=num_classes,
        **kwargs,
    )
