"""Hugging Face -> official Deformable DETR names against the golden mapping (no transformers needed).

``tests/fixtures/ddetr_r50_keys.json`` lists every key of the official multi-scale R50 checkpoint with the
name the Hugging Face model (transformers 5) gives it, as verified by loading official weights into it.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from deformvision.convert import huggingface_to_official, infer_model, is_huggingface_state_dict
from deformvision.models import create_model
from deformvision.models._checkpoint import check_state_dict

KEYS = Path(__file__).parents[1] / "fixtures" / "ddetr_r50_keys.json"
PACKED = re.compile(r"transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)")


def golden_state_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(official state dict, the same tensors under their Hugging Face names), distinct values per tensor."""
    official, huggingface = {}, {}
    for i, entry in enumerate(json.loads(KEYS.read_text())["keys"]):
        value = torch.full(entry["shape"], float(i))
        if entry["name"].endswith("in_proj_weight") or entry["name"].endswith("in_proj_bias"):
            value = value + torch.arange(entry["shape"][0]).view(-1, *[1] * (len(entry["shape"]) - 1))
        for name in (entry["name"], *entry["aliases"]):
            official[name] = value
        packed = PACKED.fullmatch(entry["name"])
        if packed:
            for part, rows in zip("qkv", value.chunk(3), strict=True):
                huggingface[f"model.decoder.layers.{packed[1]}.self_attn.{part}_proj.{packed[2]}"] = rows
        else:
            for name in (entry["hf"], *entry["aliases"]):  # aliases (shared heads) keep their names
                huggingface[name] = value
    return official, huggingface


def legacy_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names transformers 4 used (and ``save_pretrained`` of transformers 5 still writes)."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        key = key.replace("self_attn.o_proj.", "self_attn.out_proj.")
        renamed[re.sub(r"\.mlp\.(fc[12])\.", r".\1.", key)] = value
    return renamed


@pytest.mark.parametrize("layout", ["transformers5", "legacy"])
def test_golden_huggingface_names_map_to_the_official_ones(layout):
    official, huggingface = golden_state_dicts()
    if layout == "legacy":
        huggingface = legacy_names(huggingface)
    assert is_huggingface_state_dict(huggingface) and not is_huggingface_state_dict(official)
    converted = huggingface_to_official(huggingface)
    assert converted.keys() == official.keys()
    for key, value in official.items():
        assert torch.equal(converted[key], value), key


def test_golden_huggingface_state_dict_loads_into_the_r50_model():
    _, huggingface = golden_state_dicts()
    assert infer_model(huggingface) == "deformable_detr_r50"
    model = create_model("deformable_detr_r50")
    check_state_dict(model, model.checkpoint_filter(huggingface))


def test_timm_backbone_names_are_kept():
    """A timm ResNet backbone (``use_timm_backbone=True``) already has torchvision's names."""
    timm_key = "model.backbone.conv_encoder.model.layer2.0.downsample.0.weight"
    assert list(huggingface_to_official({timm_key: torch.ones(1)})) == ["backbone.0.body.layer2.0.downsample.0.weight"]
