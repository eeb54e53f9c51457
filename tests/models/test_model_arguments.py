"""Model arguments: bad values are refused at construction, naming the argument, the value and what is allowed."""

import math

import pytest
import timm
import torch

import deformvision as dv
from deformvision.models.deformable_detr import DeformableTransformer

# A narrow DAT (stages 0-1 window attention, 2-3 deformable) that builds in milliseconds.
NARROW = {
    "dims": (8, 16, 32, 64),
    "depths": (1, 1, 1, 1),
    "heads": (1, 2, 2, 4),
    "groups": (-1, -1, 1, 2),
    "stage_spec": (("L",), ("S",), ("D",), ("D",)),
}
DETR = {"num_queries": 4, "d_model": 32, "num_heads": 2, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 16}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_classes": -1}, ValueError, r"num_classes must be an int >= 0, got -1"),
        ({"num_classes": None}, TypeError, r"num_classes must be an int >= 0, got None"),
        ({"num_classes": True}, TypeError, r"num_classes must be an int >= 0, got True \(bool\)"),
        ({"num_classes": 2.0}, TypeError, r"num_classes must be an int >= 0, got 2.0 \(float\)"),
        ({"img_size": 31}, ValueError, r"img_size\[0\] must be an int >= 32, got 31"),
        ({"img_size": (64, 16)}, ValueError, r"img_size\[1\] must be an int >= 32, got 16"),
        ({"patch_size": 0}, ValueError, r"patch_size must be an int >= 1, got 0"),
        ({"drop_path_rate": 1.0}, ValueError, r"drop_path_rate must be in \[0, 1\), got 1.0"),
        ({"drop_rate": math.nan}, ValueError, r"drop_rate must be in \[0, 1\), got nan"),
        ({"attn_drop_rate": -0.1}, ValueError, r"attn_drop_rate must be in \[0, 1\), got -0.1"),
        ({"features_only": "false"}, TypeError, r"features_only must be True or False, got 'false'"),
        ({"heads": (3, 2, 2, 4)}, ValueError, r"heads\[0\] \(3\) must divide dims\[0\] \(8\)"),
        ({"heads": (1, 0, 2, 4)}, ValueError, r"heads\[1\] must be an int >= 1, got 0"),
        ({"groups": (-1, -1, 3, 2)}, ValueError, r"groups\[2\] must be >= 1 and divide heads\[2\] \(2\), got 3"),
        ({"window_sizes": (0, 7, 7, 7)}, ValueError, r"window_sizes\[0\] must be an int >= 1, got 0"),
        ({"dims": (8, 16, 32)}, ValueError, r"dims must have one entry per stage \(4\), got \[8, 16, 32\]"),
        ({"depths": (2, 1, 1, 1)}, ValueError, r"stage_spec\[0\] must be 2 of 'L', 'S', 'D', got \['L'\]"),
    ],
)
def test_dat_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        dv.create_model("dat_tiny", **{**NARROW, **kwargs})


def test_unknown_arguments_are_refused_listing_the_valid_ones():
    with pytest.raises(
        TypeError, match=r"dat_tiny got an unexpected keyword argument 'drop_path'; valid: img_size, patch_size"
    ):
        dv.create_model("dat_tiny", drop_path=0.1, **NARROW)
    with pytest.raises(
        TypeError, match=r"dat_tiny got an unexpected keyword argument 'num_class'; valid: .*num_classes"
    ):
        timm.create_model("dat_tiny", num_class=3, **NARROW)  # timm's create_model calls the same factory
    with pytest.raises(
        TypeError, match=r"resnet50 got an unexpected keyword argument 'pretrained_backbone'; valid: arch,"
    ):
        dv.create_model("resnet50", pretrained_backbone=True)
    with pytest.raises(
        TypeError, match=r"deformable_detr_dat_digits got an unexpected keyword argument 'dec_layer'; .*dec_layers"
    ):
        dv.create_model("deformable_detr_dat_digits", dec_layer=1)


def test_pretrained_must_be_a_bool():
    """A string such as "false" is truthy: it would download weights the caller did not ask for."""
    with pytest.raises(TypeError, match=r"pretrained must be True or False, got 'false' \(str\)"):
        dv.create_model("dat_tiny", pretrained="false", **NARROW)


def test_num_classes_zero_is_timms_headless_classifier():
    """num_classes=0 (timm's convention): forward returns the pooled features, the mean of the final map."""
    torch.manual_seed(0)
    model = dv.create_model("dat_tiny", num_classes=0, **NARROW).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model(x)
        expected = model.forward_features(x).double().mean(dim=(1, 2))  # B, H/32, W/32, C -> B, C
    assert pooled.shape == (2, 64)
    torch.testing.assert_close(pooled.double(), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 0, got -1"):
        model.reset_classifier(-1)


def test_smallest_img_size_is_eight_patches():
    """The last stage has stride 8 * patch_size: its map needs one pixel, so img_size >= 8 * patch_size."""
    model = dv.create_model("dat_tiny", img_size=16, patch_size=2, features_only=True, **NARROW)
    maps = model(torch.randn(1, 3, 16, 16))
    assert [tuple(m.shape[2:]) for m in maps] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    with pytest.raises(ValueError, match=r"img_size\[0\] must be an int >= 16, got 15"):
        dv.create_model("dat_tiny", img_size=15, patch_size=2, features_only=True, **NARROW)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dec_layers": 0}, ValueError, r"dec_layers must be an int >= 1, got 0"),
        ({"enc_layers": 0}, ValueError, r"enc_layers must be an int >= 1, got 0"),
        ({"num_queries": 0}, ValueError, r"num_queries must be an int >= 1, got 0"),
        ({"num_classes": 0}, ValueError, r"num_classes must be an int >= 1, got 0"),
        ({"num_classes": -1}, ValueError, r"num_classes must be an int >= 1, got -1"),
        ({"num_heads": 3}, ValueError, r"num_heads \(3\) must divide d_model \(32\)"),
        ({"dropout": 1.5}, ValueError, r"dropout must be in \[0, 1\), got 1.5"),
        ({"aux_loss": 1}, TypeError, r"aux_loss must be True or False, got 1 \(int\)"),
        ({"dec_n_points": 0}, ValueError, r"dec_n_points must be an int >= 1, got 0"),
    ],
)
def test_deformable_detr_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        dv.create_model("deformable_detr_dat_digits", backbone_kwargs=NARROW, **{**DETR, **kwargs})


def test_deformable_transformer_refuses_zero_layers():
    with pytest.raises(ValueError, match=r"num_decoder_layers must be an int >= 1, got 0"):
        DeformableTransformer(d_model=32, num_heads=2, num_decoder_layers=0)


@pytest.mark.parametrize("name", ["retinanet_dat_tiny", "mask_rcnn_dat_tiny", "cascade_mask_rcnn_dat_tiny"])
def test_detectors_refuse_bad_num_classes(name):
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1, got 0"):
        dv.create_model(name, num_classes=0, backbone_kwargs=NARROW, fpn_channels=16)
    with pytest.raises(TypeError, match=r"num_classes must be an int >= 1, got None"):
        dv.create_model(name, num_classes=None, backbone_kwargs=NARROW, fpn_channels=16)


def test_torchvision_detectors_refuse_arguments_they_would_drop():
    """torchvision passes unknown keyword arguments on to its image transform, which ignored them."""
    with pytest.raises(
        TypeError, match=r"DATMaskRCNN got an unexpected keyword argument 'box_score_threshold'; valid: .*"
    ):
        dv.create_model("mask_rcnn_dat_tiny", box_score_threshold=0.5, backbone_kwargs=NARROW, fpn_channels=16)
    with pytest.raises(
        TypeError, match=r"DATRetinaNet got an unexpected keyword argument 'nms_thresold'; valid: .*nms_thresh"
    ):
        dv.create_model("retinanet_dat_tiny", nms_thresold=0.5, backbone_kwargs=NARROW, fpn_channels=16)
    model = dv.create_model(
        "retinanet_dat_tiny", score_thresh=0.2, size_divisible=64, backbone_kwargs=NARROW, fpn_channels=16
    )
    assert model.score_thresh == 0.2 and model.transform.size_divisible == 64


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_classes": None}, TypeError, r"num_classes must be an int >= 1, got None"),
        ({"num_classes": 0}, ValueError, r"num_classes must be an int >= 1, got 0"),
        ({"aux_weight": math.nan}, ValueError, r"aux_weight must be a finite number >= 0, got nan"),
        ({"dropout": -0.5}, ValueError, r"dropout must be in \[0, 1\), got -0.5"),
        ({"class_weight": [1.0, math.nan]}, ValueError, r"class_weight must be 2 non-negative numbers"),
    ],
)
def test_segmentors_refuse_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        dv.create_model(
            "upernet_dat_tiny",
            **{"num_classes": 2, "channels": 16, "aux_channels": 8, **kwargs},
            backbone_kwargs=NARROW,
        )


def test_resnet_num_classes():
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 0, got -1"):
        dv.create_model("resnet50", num_classes=-1)
    with pytest.raises(TypeError, match=r"dilation must be True or False, got 'no'"):
        dv.create_model("resnet50", dilation="no")
