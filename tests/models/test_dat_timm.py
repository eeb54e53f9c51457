"""DAT inside timm: registry, pretrained cfgs, ``forward_intermediates``, checkpointing, weight decay."""

import pytest
import timm
import torch
from timm.data import resolve_data_config

import deformvision as dv

VARIANTS = ["dat_tiny", "dat_small", "dat_base", "dat_base_384"]
NARROW = {"dims": (24, 48, 96, 192), "depths": (2, 2, 2, 2), "stage_spec": (("L", "S"),) * 2 + (("L", "D"),) * 2}


def test_timm_registry_builds_our_model():
    assert timm.list_models("dat_*") == ["dat_base", "dat_base_384", "dat_small", "dat_tiny"]
    model = timm.create_model("dat_tiny")
    assert type(model) is type(dv.create_model("dat_tiny", **NARROW))
    assert sum(p.numel() for p in model.parameters()) == 28_319_138


def test_deformvision_and_timm_agree():
    torch.manual_seed(0)
    ours = dv.create_model("dat_tiny", num_classes=7, **NARROW)
    torch.manual_seed(0)
    theirs = timm.create_model("dat_tiny", num_classes=7, **NARROW)
    assert ours.pretrained_cfg == theirs.pretrained_cfg
    for (name, a), (other, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert name == other and torch.equal(a, b), name


@pytest.mark.parametrize("name", VARIANTS)
def test_resolve_data_config_gives_the_official_recipe(name):
    side = 384 if name.endswith("384") else 224
    config = resolve_data_config({}, model=timm.create_model(name, **NARROW))
    assert config == {
        "input_size": (3, side, side),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 1.0 if side == 384 else 0.875,  # Swin's/DAT's eval: resize 256 -> crop 224; at 384 no crop
        "crop_mode": "center",
    }


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_intermediates_are_the_stage_outputs(name):
    torch.manual_seed(0)
    model = dv.create_model(name, num_classes=5, **NARROW).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        stages = [s.permute(0, 3, 1, 2) for s in model.forward_stages(x)[0]]  # NCHW
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [
            (2, c, 96 // r, 128 // r) for c, r in zip(NARROW["dims"], (4, 8, 16, 32), strict=True)
        ]
        for got, expected in zip(maps, stages, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(final), model(x))

        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NHWC")
        torch.testing.assert_close(last_two[0], stages[2].permute(0, 2, 3, 1))
        picked = model.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True, stop_early=True)
        torch.testing.assert_close(picked[0], stages[0])
        normed = torch.nn.functional.layer_norm(
            stages[3].permute(0, 2, 3, 1), (192,), model.norm.weight, model.norm.bias
        )
        torch.testing.assert_close(picked[1], normed.permute(0, 3, 1, 2))


def test_forward_intermediates_of_a_backbone_use_its_output_norms():
    torch.manual_seed(0)
    backbone = dv.create_model("dat_tiny", features_only=True, out_indices=(1, 3), **NARROW).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone.forward_intermediates(x, indices=[1, 3], norm=True, intermediates_only=True)
        for got, expected in zip(maps, backbone(x), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="intermediates_only=True"):
        backbone.forward_intermediates(x)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC', got 'NLC'"):
        backbone.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)


@pytest.mark.parametrize("features_only", [False, True])
def test_grad_checkpointing_gives_the_same_gradients(features_only):
    torch.manual_seed(0)
    kwargs = {"features_only": True} if features_only else {"num_classes": 4}
    model = dv.create_model("dat_tiny", drop_path_rate=0.0, **NARROW, **kwargs).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model(x)
        loss = (
            sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in out)
            if features_only
            else out.square().sum()
        )
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.set_grad_checkpointing()
    assert all(stage.grad_checkpointing for stage in model.stages)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-12, atol=1e-14, msg=name)


def test_no_weight_decay_names_the_position_tables():
    model = dv.create_model("dat_tiny", **NARROW)
    names = model.no_weight_decay()
    expected = {n for n, _ in model.named_parameters() if "rpe_table" in n or "relative_position_bias_table" in n}
    assert names == expected and any("rpe_table" in n for n in names) and any("position_bias" in n for n in names)


def test_classifier_accessors_follow_timm():
    model = timm.create_model("dat_tiny", **NARROW)
    model.reset_classifier(3, "avg")
    assert model.get_classifier() is model.head and model.head.out_features == 3 and model.num_classes == 3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="global_pool must be None or 'avg', got 'max'"):
        model.reset_classifier(3, "max")
