"""DeformableDETR: official key list and parameter counts, inputs, initialisation, checkpoints, registry sweep."""

import json
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import FeatureInfo
from torch import nn

import deformvision as dv
from deformvision.layers.ms_deform_attn import directional_offset_bias
from deformvision.models import create_model, list_models
from deformvision.models._checkpoint import check_state_dict, load_checkpoint
from deformvision.models.deformable_detr import DeformableDETR, pad_images

KEYS = Path(__file__).parents[2] / "fixtures" / "ddetr_r50_keys.json"
SMALL = dict(d_model=32, num_heads=2, enc_layers=1, dec_layers=2, dim_feedforward=32, enc_n_points=2, dec_n_points=2)
VARIANT_FLAGS = {
    "multi_scale": {},
    "box_refine": {"with_box_refine": True},
    "two_stage": {"with_box_refine": True, "two_stage": True},
}


class TinyBackbone(nn.Module):
    """Two maps (strides 8 and 16) following timm's ``features_only`` contract."""

    feature_info = FeatureInfo(
        [dict(num_chs=8, reduction=8, module="stem"), dict(num_chs=16, reduction=16, module="down")], out_indices=(0, 1)
    )

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, stride=8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stem(x).relu()
        return [c1, self.down(c1).relu()]


def tiny_detr(num_classes: int = 3, seed: int = 0, **kwargs) -> DeformableDETR:
    torch.manual_seed(seed)
    args = {**SMALL, "num_queries": 5, "num_feature_levels": 3, "dropout": 0.0, **kwargs}
    return DeformableDETR(TinyBackbone(), num_classes, **args)


# --------------------------------------------------------------------------------------------------
# Official state dict and parameter counts


def official_state_dict() -> tuple[dict[str, torch.Tensor], dict, set[str]]:
    """Every key of the official multi-scale R50 checkpoint; aliases share their original's values."""
    spec = json.loads(KEYS.read_text())
    state_dict, aliases = {}, set()
    for i, entry in enumerate(spec["keys"]):
        group = sorted([entry["name"], *entry["aliases"]])
        if group[0] != entry["name"]:
            aliases.add(entry["name"])
        else:
            value = torch.full(entry["shape"], float(i % 1000))
            state_dict.update({name: value for name in group})
    return state_dict, spec, aliases


def test_official_key_list_loads_into_r50():
    model = create_model("deformable_detr_r50")
    state_dict, spec, aliases = official_state_dict()
    assert len(state_dict) == spec["num_keys"] == 561 and len(aliases) == 561 - spec["num_unique_tensors"]
    converted = model.checkpoint_filter(state_dict)
    check_state_dict(model, converted)  # every model key present, nothing unexpected, shapes equal
    model.load_state_dict(converted)
    own = model.state_dict()
    for key, value in state_dict.items():  # every official key is loaded, or is an alias of a loaded one
        if key in aliases:
            continue
        ours = key.replace("backbone.0.body.", "backbone.")
        assert torch.equal(own[ours], value), key
    official = {e["name"]: e for e in spec["keys"]}
    for name, param in model.named_parameters():
        assert param.requires_grad == official[name.replace("backbone.", "backbone.0.body.")]["requires_grad"], name


@pytest.mark.parametrize(
    "name, total, trainable",
    [
        ("deformable_detr_r50_single_scale", 34_066_593, 33_844_193),
        ("deformable_detr_r50_single_scale_dc5", 34_066_593, 33_844_193),
        ("deformable_detr_r50", 40_069_665, 39_847_265),
        ("deformable_detr_r50_box_refine", 40_849_660, 40_627_260),
        ("deformable_detr_r50_two_stage", 41_181_529, 40_959_129),
    ],
)
def test_parameter_counts_are_official(name, total, trainable):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable

    def count(prefix: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    assert count("backbone.") == 23_454_912
    assert count("transformer.encoder.") == (4_097_088 if "single" in name else 4_541_184)
    assert count("input_proj.") == (525_056 if "single" in name else 5_639_168)
    assert count("query_embed.") == (0 if "two_stage" in name else 153_600)


def test_variant_flags_as_kwargs():
    model = create_model("deformable_detr_r50", with_box_refine=True, two_stage=True, num_classes=20, **SMALL)
    assert model.two_stage and model.with_box_refine and len(model.class_embed) == 3
    assert model.class_embed[0].out_features == 20


# --------------------------------------------------------------------------------------------------
# Inputs and outputs


@pytest.mark.parametrize("variant", VARIANT_FLAGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_outputs(variant, batch):
    model = tiny_detr(**VARIANT_FLAGS[variant]).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 48, 64))
    assert out["pred_logits"].shape == (batch, 5, 3) and out["pred_boxes"].shape == (batch, 5, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_boxes"].shape == (batch, 5, 4)
    tokens = 6 * 8 + 3 * 4 + 2 * 2  # levels at strides 8, 16, 32
    if variant == "two_stage":
        assert out["enc_outputs"]["pred_logits"].shape == (batch, tokens, 3)
        assert out["enc_outputs"]["pred_boxes"].shape == (batch, tokens, 4)
    else:
        assert "enc_outputs" not in out
    assert "aux_outputs" not in tiny_detr(aux_loss=False).eval()(torch.randn(1, 3, 48, 64))


@pytest.mark.parametrize("variant", VARIANT_FLAGS)
def test_list_of_images_equals_padded_batch_and_batch_is_independent(variant):
    """A list is padded at the bottom/right with a True-is-padding mask; images do not influence each other.

    (A list is not equal to separate runs of the unpadded images: GroupNorm statistics and the convolutions
    at the border see the padding.)
    """
    model = tiny_detr(**VARIANT_FLAGS[variant]).double().eval()
    images = [torch.randn(3, h, w, dtype=torch.float64) for h, w in [(40, 56), (64, 48), (50, 50)]]
    batch, mask = pad_images(images)
    assert batch.shape == (3, 3, 64, 56) and mask.shape == (3, 64, 56)
    assert not mask[1, :, :48].any() and mask[1, :, 48:].all() and mask[0, 40:].all() and not mask[0, :40, :56].any()
    with torch.no_grad():
        from_list = model(images)
        from_batch = model(batch, mask)
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(from_list[key], from_batch[key], rtol=0, atol=0)
        for b in range(3):
            alone = model(batch[b : b + 1], mask[b : b + 1])
            torch.testing.assert_close(alone["pred_logits"][0], from_batch["pred_logits"][b])
            torch.testing.assert_close(alone["pred_boxes"][0], from_batch["pred_boxes"][b])


def test_bad_inputs_raise():
    model = tiny_detr()
    with pytest.raises(ValueError, match="mask"):
        model([torch.randn(3, 32, 32)], torch.zeros(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(1, 3, 32, 32), torch.zeros(1, 32, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="num_feature_levels"):
        tiny_detr(num_feature_levels=1)
    with pytest.raises(ValueError, match="encoder tokens"):  # 64 tokens at 48 x 64, fewer than the 100 queries
        tiny_detr(with_box_refine=True, two_stage=True, num_queries=100)(torch.randn(1, 3, 48, 64))


def test_two_stage_without_box_refine_raises():
    with pytest.raises(ValueError, match="with_box_refine"):
        tiny_detr(two_stage=True)


# --------------------------------------------------------------------------------------------------
# Initialisation and gradients


@pytest.mark.parametrize("variant", VARIANT_FLAGS)
def test_official_initialisation(variant):
    model = tiny_detr(**VARIANT_FLAGS[variant])
    expected_heads = {"multi_scale": 1, "box_refine": 2, "two_stage": 3}[variant]
    assert len(model.class_embed) == len(model.bbox_embed) == expected_heads
    prior = -math.log((1 - 0.01) / 0.01)
    for i, (cls, box) in enumerate(zip(model.class_embed, model.bbox_embed, strict=True)):
        assert torch.equal(cls.bias, torch.full_like(cls.bias, prior))
        assert torch.equal(cls.weight, model.class_embed[0].weight)  # clones of one initialised head
        last = box.layers[-1]
        assert not last.weight.any()
        size_bias = -2.0 if i == 0 and variant != "two_stage" else 0.0
        assert torch.equal(last.bias, torch.tensor([0.0, 0.0, size_bias, size_bias]))
    assert model.bbox_embed[0].layers[0].bias.any()  # hidden biases keep PyTorch's default init
    for proj in model.input_proj:
        assert not proj[0].bias.any()
    attn = model.transformer.encoder.layers[0].self_attn
    assert torch.equal(attn.sampling_offsets.bias.detach(), directional_offset_bias(2, 3, 2))
    if variant != "two_stage":
        assert not model.transformer.reference_points.bias.any()
    assert model.transformer.decoder.layers[0].linear1.bias.any()


def perturbed(model: DeformableDETR) -> DeformableDETR:
    """Every parameter moved off its initial value (zero-initialised layers would block all gradients)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_box_refinement_detaches_references():
    """Refined reference points are detached: the final boxes get no gradient through earlier box heads."""
    refine = perturbed(tiny_detr(with_box_refine=True))
    refine(torch.randn(1, 3, 48, 64))["pred_boxes"].sum().backward()
    assert all(not p.grad.any() for p in refine.bbox_embed[0].parameters())
    assert all(p.grad.any() for p in refine.bbox_embed[1].parameters())
    assert refine.query_embed.weight.grad.any()
    shared = perturbed(tiny_detr())  # without refinement the initial reference points get gradient from the boxes
    shared(torch.randn(1, 3, 48, 64))["pred_boxes"].sum().backward()
    assert shared.transformer.reference_points.weight.grad.any()


# --------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("variant", VARIANT_FLAGS)
def test_own_state_dict_round_trips(variant, tmp_path):
    source, target = tiny_detr(seed=0, **VARIANT_FLAGS[variant]), tiny_detr(seed=1, **VARIANT_FLAGS[variant])
    save_file(source.state_dict(), tmp_path / "ours.safetensors")
    load_checkpoint(target, tmp_path / "ours.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_official_layout_with_aliases_loads(tmp_path):
    """Official non-refine checkpoints repeat the shared heads per layer; box-refine ones also alias them."""
    source = tiny_detr(with_box_refine=True)
    official = dict(source.state_dict())
    official.update(
        {
            f"transformer.decoder.{k}": v.clone()
            for k, v in source.state_dict().items()
            if k.startswith(("class_embed.", "bbox_embed."))
        }
    )
    torch.save({"model": official}, tmp_path / "refine.pth")
    target = tiny_detr(seed=1, with_box_refine=True)
    load_checkpoint(target, tmp_path / "refine.pth")
    assert torch.equal(target.bbox_embed[1].layers[0].weight, source.bbox_embed[1].layers[0].weight)

    shared = tiny_detr().state_dict()
    repeated = {k.replace("_embed.0.", "_embed.1."): v.clone() for k, v in shared.items() if "_embed.0." in k}
    assert tiny_detr().checkpoint_filter({**shared, **repeated}).keys() == shared.keys()
    repeated["class_embed.1.bias"] += 1  # per-layer heads that differ: a box-refinement checkpoint
    with pytest.raises(ValueError, match="with_box_refine=True"):
        tiny_detr().checkpoint_filter({**shared, **repeated})


def test_num_classes_mismatch_keeps_own_class_heads(tmp_path, caplog):
    source = tiny_detr(num_classes=3, with_box_refine=True, seed=0)
    save_file(source.state_dict(), tmp_path / "k3.safetensors")
    target = tiny_detr(num_classes=7, with_box_refine=True, seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("class_embed.")}
    with caplog.at_level(logging.WARNING):
        load_checkpoint(target, tmp_path / "k3.safetensors")
    assert "3 classes, this model 7" in caplog.text
    for key, value in target.state_dict().items():
        expected = fresh[key] if key.startswith("class_embed.") else source.state_dict()[key]
        assert torch.equal(value, expected), key


# --------------------------------------------------------------------------------------------------
# Registered variants


@pytest.mark.parametrize("name", [n for n in list_models("deformable_detr_*") if n != "deformable_detr_dat_tiny"])
def test_registered_resnet_variants_run_small(name):
    model = create_model(name, num_classes=4, num_queries=6, **SMALL).eval()
    with torch.no_grad():
        out = model([torch.randn(3, 64, 80), torch.randn(3, 48, 96)])
    assert out["pred_logits"].shape == (2, 6, 4) and out["pred_boxes"].shape == (2, 6, 4)
    assert model.checkpoint_filter(model.state_dict()).keys() == model.state_dict().keys()


def test_dat_tiny_backbone_forward_backward():
    model = create_model("deformable_detr_dat_tiny", num_classes=4, num_queries=6, **SMALL)
    assert model.backbone.feature_info.reduction() == [8, 16, 32]
    out = model(torch.randn(2, 3, 128, 160))
    assert out["pred_logits"].shape == (2, 6, 4)
    loss = out["pred_logits"].sum() + out["pred_boxes"].sum() + sum(a["pred_boxes"].sum() for a in out["aux_outputs"])
    loss.backward()
    assert model.backbone.stem.proj.weight.grad is not None
    assert model.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_timm_features_only_backbone():
    """A timm ``features_only`` model is a backbone as it is (its FeatureInfo gives the map channels)."""
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(2, 3, 4))
    model = DeformableDETR(backbone, 3, num_queries=5, num_feature_levels=4, **SMALL).eval()
    assert [proj[0].in_channels for proj in model.input_proj] == [128, 256, 512, 512]
    with torch.no_grad():
        out = model([torch.randn(3, 64, 80), torch.randn(3, 48, 96)])
    assert out["pred_logits"].shape == (2, 5, 3) and torch.isfinite(out["pred_boxes"]).all()


def test_grad_checkpointing_reaches_the_backbone_and_keeps_gradients():
    torch.manual_seed(0)
    model = dv.create_model("deformable_detr_dat_digits", num_classes=3).double()
    images = [torch.rand(3, 64, 64, dtype=torch.float64), torch.rand(3, 48, 64, dtype=torch.float64)]

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model(images)
        (out["pred_logits"].square().sum() + out["pred_boxes"].sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.set_grad_checkpointing()
    assert all(stage.grad_checkpointing for stage in model.backbone.stages)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_official_checkpoint_of_the_other_variant_is_refused():
    """The plain official checkpoint's shared heads would fill every refinement head silently: refused."""
    state_dict, _, _ = official_state_dict()
    with pytest.raises(ValueError, match="without box refinement .* with_box_refine=True: build it with"):
        create_model("deformable_detr_r50_box_refine").checkpoint_filter(state_dict)
    refine = dict(state_dict)  # an official refinement checkpoint aliases its per-layer box heads in the decoder
    refine.update({f"transformer.decoder.{k}": v for k, v in state_dict.items() if k.startswith("bbox_embed.")})
    with pytest.raises(ValueError, match="with box refinement .* with_box_refine=False: build it with"):
        create_model("deformable_detr_r50").checkpoint_filter(refine)
