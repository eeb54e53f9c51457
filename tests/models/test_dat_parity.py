"""DAT against the official implementation: golden tensors of two small, fully randomised DATs.

The fixtures (tests/fixtures/dat/, copied from the official code's outputs) hold the official state
dict (official key names and buffers), an input, the logits in float32 and float64, every stage's
output and the sampling positions/references of every deformable block.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deformvision.layers.window_attention import window_attention_mask
from deformvision.models import load_checkpoint
from deformvision.models.dat import DAT

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dat"
PRESETS = ["tiny64", "odd96"]


def build_from_official_config(preset: str) -> DAT:
    """A DAT with the hyper-parameters of an official constructor call (config.json's dat_kwargs)."""
    official = json.loads((FIXTURES / preset / "config.json").read_text())["dat_kwargs"]
    assert official["dim_stem"] == official["dims"][0] and not official["use_conv_patches"]
    same_names = [
        "img_size",
        "patch_size",
        "num_classes",
        "dims",
        "depths",
        "heads",
        "groups",
        "window_sizes",
        "stage_spec",
        "strides",
        "offset_range_factor",
        "use_pes",
        "dwc_pes",
        "fixed_pes",
        "no_offs",
        "drop_rate",
        "attn_drop_rate",
        "drop_path_rate",
    ]
    return DAT(mlp_ratio=official["expansion"], **{k: official[k] for k in same_names})


@pytest.fixture(scope="module", params=PRESETS)
def official(request):
    """(model with the official weights loaded through the checkpoint path, golden tensors)."""
    model = build_from_official_config(request.param)
    load_checkpoint(model, FIXTURES / request.param / "weights.safetensors")
    return model.eval(), load_file(FIXTURES / request.param / "golden.safetensors")


def test_logits_fp32(official):
    model, golden = official
    with torch.no_grad():
        logits = model(golden["input"])
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)


def test_logits_fp64(official):
    model, golden = official
    model64 = build_from_official_config("tiny64" if golden["input"].shape[-1] == 64 else "odd96")
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    with torch.no_grad():
        logits = model64(golden["input"].double())
    torch.testing.assert_close(logits, golden["logits_f64"], atol=1e-10, rtol=0)


def test_stage_features_and_sampling_points(official):
    model, golden = official
    with torch.no_grad():
        stem = model.stem(golden["input"])
        outputs, points = model.forward_stages(golden["input"])
        pooled = model.forward_head(model.norm(outputs[-1]), pre_logits=True)
    torch.testing.assert_close(stem.permute(0, 3, 1, 2), golden["feat.stem"], atol=1e-5, rtol=0)
    for i, out in enumerate(outputs):  # ours are channels last
        torch.testing.assert_close(out.permute(0, 3, 1, 2), golden[f"feat.stage{i}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, golden["feat.pooled"], atol=1e-5, rtol=0)
    expected_blocks = {k.removeprefix("pos.") for k in golden if k.startswith("pos.")}
    assert {k.replace("stages.", "stage").replace(".blocks.", ".block") for k in points} == expected_blocks
    for key, p in points.items():
        name = key.replace("stages.", "stage").replace(".blocks.", ".block")
        torch.testing.assert_close(p.positions, golden[f"pos.{name}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(p.references, golden[f"ref.{name}"], atol=0, rtol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_runtime_shift_mask_equals_official_buffer(preset):
    """Our shift masks, built for the size seen, equal the official construction-time buffers."""
    model = build_from_official_config(preset)
    weights = load_file(FIXTURES / preset / "weights.safetensors")
    masks = {k: v for k, v in weights.items() if k.endswith("attn_mask")}
    assert masks
    stem_size = model.img_size[0] // 4
    for key, official_mask in masks.items():
        stage = int(key.split(".")[1])
        attn = model.stages[stage].blocks[int(key.split(".")[3])].attn
        size = stem_size // 2**stage
        ours = window_attention_mask(size, size, attn.window_size, attn.shift_size)
        torch.testing.assert_close(ours, official_mask, atol=0, rtol=0)


def test_official_pth_checkpoint_formats(tmp_path):
    """Official .pth files: a plain state dict or {'model': ...}, read with weights_only=True."""
    weights = load_file(FIXTURES / "tiny64" / "weights.safetensors")
    golden = load_file(FIXTURES / "tiny64" / "golden.safetensors")
    for payload in (weights, {"model": weights, "epoch": 300}):
        path = tmp_path / "official.pth"
        torch.save(payload, path)
        model = build_from_official_config("tiny64").eval()
        load_checkpoint(model, path)
        with torch.no_grad():
            torch.testing.assert_close(model(golden["input"]), golden["logits"], atol=1e-5, rtol=0)


def test_every_official_dat_tiny_key_is_used():
    """The full official DAT-T key list (with shapes) converts to exactly our dat_tiny's state dict."""
    from deformvision.models._checkpoint import check_state_dict
    from deformvision.models.dat import dat_tiny

    listing = json.loads((FIXTURES / "dat_tiny_v1_keys.json").read_text())
    official = {name: torch.zeros(entry["shape"]) for name, entry in listing["keys"].items()}
    assert len(official) == 219
    model = dat_tiny()
    converted = model.checkpoint_filter(official)
    check_state_dict(model, converted)
    n_official_params = sum(v.numel() for k, v in official.items() if listing["keys"][k]["kind"] == "param")
    assert n_official_params == listing["params"] == sum(p.numel() for p in model.parameters()) == 28_319_138
