"""Registered Deformable DETR variants: the official configurations (``configs/r50_deformable_detr*.sh``).

Every factory takes ``num_classes`` (default 91, COCO's official head size) and any
:class:`~deformvision.models.deformable_detr.detector.DeformableDETR` argument as a keyword
(``with_box_refine``, ``two_stage``, ``num_queries``, ``d_model``, ...), which overrides the variant's
defaults. Official checkpoints load with ``create_model(name, checkpoint=path)`` through
:meth:`DeformableDETR.checkpoint_filter`.

| name | backbone maps (stride) | levels | box refine | two-stage | params |
|---|---|---|---|---|---|
| ``deformable_detr_r50_single_scale`` | C5 (32) | 1 | | | 34,066,593 |
| ``deformable_detr_r50_single_scale_dc5`` | C5 dilated (16) | 1 | | | 34,066,593 |
| ``deformable_detr_r50`` | C3-C5 (8, 16, 32) | 4 | | | 40,069,665 |
| ``deformable_detr_r50_box_refine`` | C3-C5 | 4 | yes | | 40,849,660 |
| ``deformable_detr_r50_two_stage`` | C3-C5 | 4 | yes | yes | 41,181,529 |
| ``deformable_detr_dat_tiny`` | DAT-T stages 1-3 (8, 16, 32) | 4 | | | 40,643,483 |
| ``deformable_detr_dat_digits`` | narrow DAT, for ~128-px images (the demo) | 4 | yes | yes | 2.6M |

The ResNet-50 backbones use frozen BatchNorm and freeze the stem and ``layer1`` (as the official code); the
parameter counts include the frozen ones (222,400 of them).
"""

from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from deformvision.models._registry import build_model, register_model
from deformvision.models.dat import dat_tiny
from deformvision.models.deformable_detr.detector import DeformableDETR
from deformvision.models.resnet import resnet50


def _hf_hub(repo: str, revision: str, sha256: str) -> dict[str, Any]:
    """Pretrained cfg of official COCO weights on the Hugging Face Hub (SenseTime's, converted on loading)."""
    return {
        "url": f"https://huggingface.co/SenseTime/{repo}/resolve/{revision}/model.safetensors#sha256={sha256}",
        "num_classes": 91,
        "input_size": (3, 800, 1333),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "license": "apache-2.0",
        "paper_ids": "arXiv:2010.04159",
        "paper_name": "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
        "origin_url": "https://github.com/fundamentalvision/Deformable-DETR",
    }


# COCO-trained weights (91-entry class heads) at pinned revisions, with the SHA-256 of each file.
default_cfgs = generate_default_cfgs(
    {
        "deformable_detr_r50.coco": _hf_hub(
            "deformable-detr",
            "83ecd26945199939cb82806f988debdb71e6f43e",
            "caf1e3e61283c6ce35cd2d9adaa7033cf40997d4dfe434003bcdb9085cc8cf9b",
        ),
        "deformable_detr_r50_single_scale.coco": _hf_hub(
            "deformable-detr-single-scale",
            "e880a4ca7bbe47b33d37ed90e2948efbbdad0d44",
            "82eeb57bbcdd02408afc53d5f5c874e3a7f27b5034194ae2c4475d06fceaa59b",
        ),
        "deformable_detr_r50_single_scale_dc5.coco": _hf_hub(
            "deformable-detr-single-scale-dc5",
            "c23332913d0ae1a8c98725e308eccba65a5933cc",
            "e71afa5f5900e2e769275156494195508efcadaab4275b0cd4c80f10369dc090",
        ),
        "deformable_detr_r50_box_refine.coco": _hf_hub(
            "deformable-detr-with-box-refine",
            "2e9e461623a8fdc296e19666c46c8a4389a3a6fe",
            "4113700fe8aade398808424b7c5c1304cfbf886adc6450a6ca5d50a702be3373",
        ),
        "deformable_detr_r50_two_stage.coco": _hf_hub(
            "deformable-detr-with-box-refine-two-stage",
            "e74bff70d69f3e825f6cefaf179bfba707f92054",
            "411bb4238a834d40fff651b1b5b7d6dd80c2dd28be1747eec7b6918674e85de6",
        ),
        "deformable_detr_dat_tiny": {"input_size": (3, 800, 1333)},
        "deformable_detr_dat_digits": {"input_size": (3, 128, 128)},
    }
)


def _r50(variant: str, pretrained: bool, out_indices: tuple[int, ...], dilation: bool, **kwargs) -> DeformableDETR:
    backbone = resnet50(features_only=True, out_indices=out_indices, dilation=dilation)
    return build_model(partial(DeformableDETR, backbone), variant, pretrained, **kwargs)


@register_model
def deformable_detr_r50(pretrained: bool = False, num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Multi-scale Deformable DETR, ResNet-50: 40.1M parameters."""
    return _r50("deformable_detr_r50", pretrained, (1, 2, 3), False, num_classes=num_classes, **kwargs)


@register_model
def deformable_detr_r50_single_scale(pretrained: bool = False, num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Single-scale Deformable DETR (C5 only), ResNet-50: 34.1M parameters."""
    return _r50(
        "deformable_detr_r50_single_scale",
        pretrained,
        (3,),
        False,
        num_classes=num_classes,
        **{"num_feature_levels": 1, **kwargs},
    )


@register_model
def deformable_detr_r50_single_scale_dc5(pretrained: bool = False, num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Single-scale Deformable DETR on a dilated C5 (stride 16), ResNet-50: 34.1M parameters."""
    return _r50(
        "deformable_detr_r50_single_scale_dc5",
        pretrained,
        (3,),
        True,
        num_classes=num_classes,
        **{"num_feature_levels": 1, **kwargs},
    )


@register_model
def deformable_detr_r50_box_refine(pretrained: bool = False, num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Deformable DETR with iterative box refinement, ResNet-50: 40.8M parameters."""
    return _r50(
        "deformable_detr_r50_box_refine",
        pretrained,
        (1, 2, 3),
        False,
        num_classes=num_classes,
        **{"with_box_refine": True, **kwargs},
    )


@register_model
def deformable_detr_r50_two_stage(pretrained: bool = False, num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Two-stage Deformable DETR with box refinement, ResNet-50: 41.2M parameters."""
    return _r50(
        "deformable_detr_r50_two_stage",
        pretrained,
        (1, 2, 3),
        False,
        num_classes=num_classes,
        **{"with_box_refine": True, "two_stage": True, **kwargs},
    )


@register_model
def deformable_detr_dat_tiny(pretrained: bool = False, num_classes: int = 91, **kwargs) -> DeformableDETR:
    """Multi-scale Deformable DETR on a DAT-T backbone (stages 1-3: 192/384/768 channels, strides 8/16/32)."""
    build = partial(DeformableDETR, dat_tiny(features_only=True, out_indices=(1, 2, 3)))
    return build_model(build, "deformable_detr_dat_tiny", pretrained, num_classes=num_classes, **kwargs)


# The small DAT of deformable_detr_dat_digits: strides 8/16/32 from stages 1-3 (a stride-4 stem), window
# attention in stages 0-1, deformable attention in stages 2-3 (8x8 and 4x4 maps at 128 pixels).
DIGITS_BACKBONE: dict[str, Any] = {
    "img_size": 128,
    "dims": (32, 64, 128, 256),
    "depths": (1, 1, 2, 2),
    "heads": (1, 2, 4, 8),
    "groups": (-1, -1, 2, 4),
    "window_sizes": (8, 8, 8, 4),
    "stage_spec": (("L",), ("S",), ("L", "D"), ("L", "D")),
    "out_indices": (1, 2, 3),
    "drop_path_rate": 0.0,
}
DIGITS_DETR: dict[str, Any] = {
    "num_queries": 30,
    "d_model": 64,
    "num_heads": 4,
    "enc_layers": 1,
    "dec_layers": 2,
    "dim_feedforward": 256,
    "dropout": 0.0,
    "with_box_refine": True,
    "two_stage": True,
}


@register_model
def deformable_detr_dat_digits(
    pretrained: bool = False, num_classes: int = 10, backbone_kwargs: dict | None = None, **kwargs
) -> DeformableDETR:
    """Two-stage Deformable DETR with box refinement on a narrow DAT, for small images (2.6M parameters).

    ``backbone_kwargs`` update :data:`DIGITS_BACKBONE` (the ``dat_tiny`` arguments), ``kwargs``
    :data:`DIGITS_DETR` (the :class:`DeformableDETR` arguments).
    """
    build = partial(DeformableDETR, dat_tiny(features_only=True, **{**DIGITS_BACKBONE, **(backbone_kwargs or {})}))
    kwargs = {**DIGITS_DETR, **kwargs}
    return build_model(build, "deformable_detr_dat_digits", pretrained, num_classes=num_classes, **kwargs)
