"""DAT variants: registry, parameter counts, any input size, backbone contract, checkpoints."""

import math

import numpy as np
import pytest
import torch

import deformvision as dv
from deformvision.models import load_checkpoint
from deformvision.models.dat import DAT

OFFICIAL_PARAMS = {"dat_tiny": 28_319_138, "dat_small": 49_700_402, "dat_base": 87_881_632, "dat_base_384": 88_178_272}


def small_variant(name: str, **kwargs) -> DAT:
    """A registered variant with its heads, groups, windows and block kinds, but narrow and shallow.

    Spatial behaviour (windows, padding, shift masks, deformable grids, batching of groups) depends on
    these, not on the widths or the number of repeated blocks, so the sweeps stay fast on a CPU.
    """
    heads = {"dat_tiny": (3, 6, 12, 24), "dat_small": (3, 6, 12, 24)}.get(name, (4, 8, 16, 32))
    spec = (("L", "S"), ("L", "S"), ("L", "D"), ("L", "D"))
    return dv.create_model(name, dims=tuple(8 * h for h in heads), depths=(2, 2, 2, 2), stage_spec=spec, **kwargs)


def test_list_models():
    assert dv.list_models("dat_*") == ["dat_base", "dat_base_384", "dat_small", "dat_tiny"]
    with pytest.raises(ValueError, match="unknown model 'dat_huge'"):
        dv.create_model("dat_huge")


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_count_equals_official(name):
    model = dv.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
@pytest.mark.parametrize("size", [(224, 224), (256, 256), (320, 224), (512, 512)])
def test_features_only_any_size(name, size):
    model = small_variant(name, features_only=True, out_indices=(0, 1, 2, 3))
    for batch in (1, 3):
        x = torch.randn(batch, 3, *size, requires_grad=True)
        features = model(x)
        h, w = size
        info = model.feature_info
        assert [tuple(f.shape) for f in features] == [
            (batch, c, h // r, w // r) for c, r in zip(info.channels(), info.reduction(), strict=True)
        ]
        sum(f.square().mean() for f in features).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dat_tiny", "dat_base_384"])
def test_features_only_detection_size(name):
    model = small_variant(name, features_only=True, out_indices=(1, 2, 3))
    x = torch.randn(1, 3, 800, 1216)
    features = model(x)
    assert [tuple(f.shape[2:]) for f in features] == [(100, 152), (50, 76), (25, 38)]
    sum(f.mean() for f in features).backward()
    assert all(p.grad is not None for p in model.feature_norms.parameters())


def test_batch_items_are_independent():
    """Each image's output does not depend on the others in the batch (groups and heads reshape right)."""
    model = small_variant("dat_tiny", num_classes=5).eval()
    x = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_classifier_api():
    model = small_variant("dat_tiny", num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 2, 2, model.num_features)  # channels last
    assert model.forward_head(features).shape == (2, 7)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_feature_info_and_out_indices():
    model = small_variant("dat_base", features_only=True, out_indices=(1, 3))
    info = model.feature_info
    assert (info.channels(), info.reduction(), info.module_name()) == ([64, 256], [8, 32], ["stages.1", "stages.3"])
    assert info.out_indices == (1, 3) and len(info) == 4  # timm's FeatureInfo describes every stage
    assert small_variant("dat_base").feature_info[1] == dict(num_chs=64, reduction=8, module="stages.1")
    assert len(model(torch.randn(1, 3, 64, 64))) == 2
    with pytest.raises(ValueError, match="out_indices"):
        small_variant("dat_base", features_only=True, out_indices=(4,))


def test_sampling_points_of_every_deformable_block():
    model = small_variant("dat_tiny").eval()
    points = model.sampling_points(torch.randn(2, 3, 96, 64))
    assert sorted(points) == ["stages.2.blocks.1", "stages.3.blocks.1"]
    assert points["stages.2.blocks.1"].positions.shape == (2, 3, 6, 4, 2)  # B, groups, Hk, Wk, (y, x)
    offsets = points["stages.3.blocks.1"].positions - points["stages.3.blocks.1"].references
    assert (offsets[..., 0].abs() <= 2 / 3 + 1e-6).all() and (offsets[..., 1].abs() <= 2 / 2 + 1e-6).all()


def test_input_validation():
    model = small_variant("dat_tiny")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="stage_spec"):
        DAT(stage_spec=(("L",), ("L", "S"), ("L", "D") * 3, ("L", "D")))


# ---- checkpoints ---------------------------------------------------------------------------------


def save_ours(model: torch.nn.Module, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_own_checkpoint_roundtrip_through_create_model(tmp_path):
    torch.manual_seed(0)
    model = small_variant("dat_tiny", num_classes=4).eval()
    save_ours(model, tmp_path / "ours.safetensors")
    spec = (("L", "S"), ("L", "S"), ("L", "D"), ("L", "D"))
    loaded = dv.create_model(
        "dat_tiny",
        dims=(24, 48, 96, 192),
        depths=(2, 2, 2, 2),
        stage_spec=spec,
        num_classes=4,
        checkpoint=tmp_path / "ours.safetensors",
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` weights of PyTorch's bicubic resize (align_corners=False, A=-0.75, edges
    replicated), written out in float64 from the cubic convolution kernel."""
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = (i + 0.5) * size_in / size_out - 0.5
        base = min(math.floor(source), size_in - 1)
        t = min(max(source - base, 0.0), 1.0)
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t)), strict=True):
            matrix[i, min(max(base + offset, 0), size_in - 1)] += weight
    return matrix


def _resized(table: torch.Tensor, size: int) -> torch.Tensor:
    """``(heads, n, n)`` -> ``(heads, size, size)`` with :func:`_bicubic_matrix` along both axes."""
    rows = _bicubic_matrix(table.shape[1], size)
    cols = _bicubic_matrix(table.shape[2], size)
    return torch.from_numpy(rows @ table.double().numpy() @ cols.T)


def test_checkpoint_of_another_resolution_resizes_position_tables(tmp_path):
    """A 224 checkpoint loads into a model built for 384 (bicubic-resized tables) and runs at 384."""
    torch.manual_seed(0)
    model_224 = small_variant("dat_tiny", num_classes=4)
    with torch.no_grad():  # tables of distinct values (they start near zero, where any resize looks right)
        for name, param in model_224.named_parameters():
            if name.endswith(("rpe_table", "relative_position_bias_table")):
                param.copy_(torch.randn(param.shape))
    save_ours(model_224, tmp_path / "m224.safetensors")
    model_384 = small_variant("dat_tiny", num_classes=4, img_size=384, window_sizes=(12, 12, 12, 12))
    load_checkpoint(model_384, tmp_path / "m224.safetensors")
    rpe = model_384.stages[3].blocks[1].attn.rpe_table
    assert rpe.shape == (24, 23, 23)  # 2 * 12 - 1, from (24, 13, 13)
    expected = _resized(model_224.stages[3].blocks[1].attn.rpe_table.detach(), 23)
    torch.testing.assert_close(rpe.detach().double(), expected, atol=1e-5, rtol=1e-5)
    # window tables are stored (positions, heads): resized per head as (heads, 13, 13) maps
    bias = model_384.stages[0].blocks[0].attn.relative_position_bias_table
    assert bias.shape == (23 * 23, 3)
    table_224 = model_224.stages[0].blocks[0].attn.relative_position_bias_table.detach()  # 13 * 13, heads
    expected = _resized(table_224.T.reshape(3, 13, 13), 23).reshape(3, 23 * 23).T
    torch.testing.assert_close(bias.detach().double(), expected, atol=1e-5, rtol=1e-5)
    assert model_384.eval()(torch.randn(1, 3, 384, 384)).shape == (1, 4)


def test_classifier_built_at_224_runs_at_384():
    model = small_variant("dat_tiny", num_classes=4).eval()
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 4)


def test_head_of_another_num_classes_is_replaced(tmp_path, caplog):
    """Everything but the head loads; the head of another size keeps the model's own values (with a warning)."""
    torch.manual_seed(0)
    saved = small_variant("dat_tiny", num_classes=1000)
    save_ours(saved, tmp_path / "in1k.safetensors")
    saved_state = saved.state_dict()
    torch.manual_seed(1)
    model = small_variant("dat_tiny", num_classes=10)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(model, tmp_path / "in1k.safetensors")
    for key, value in model.state_dict().items():
        expected = fresh[key] if key.startswith("head.") else saved_state[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(fresh["stem.proj.weight"], saved_state["stem.proj.weight"])  # the load changed weights
    assert "head.weight" in caplog.text and "head.bias" in caplog.text

    backbone = small_variant("dat_tiny", features_only=True)  # classifier weights into a backbone
    fresh = {k: v.clone() for k, v in backbone.state_dict().items()}
    load_checkpoint(backbone, tmp_path / "in1k.safetensors")
    for key, value in backbone.state_dict().items():
        expected = fresh[key] if key.startswith("feature_norms.") else saved_state[key]
        assert torch.equal(value, expected), key


def test_mismatched_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    save_ours(small_variant("dat_tiny"), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch: stem\.proj\.weight"):
        load_checkpoint(small_variant("dat_base"), tmp_path / "tiny.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        load_checkpoint(small_variant("dat_tiny"), tmp_path / "bad.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="cannot read PyTorch checkpoint"):
        load_checkpoint(small_variant("dat_tiny"), tmp_path / "bad.pth")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(small_variant("dat_tiny"), tmp_path / "nothing.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(small_variant("dat_tiny"), tmp_path / "missing.pth")


def test_drop_path_is_active_only_in_training():
    model = small_variant("dat_tiny", num_classes=3, drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = small_variant("dat_tiny", num_classes=3).double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    torch.manual_seed(1)  # the same stochastic-depth draws in both runs (checkpointing replays them)
    model(x).square().sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing()
    torch.manual_seed(1)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float8_e4m3fn])
def test_checkpoint_of_another_dtype_kind_is_refused(tmp_path, dtype):
    model = small_variant("dat_tiny", num_classes=3)
    state = {k: v.to(dtype) if k == "head.weight" else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match=f"dtype mismatch: head.weight: checkpoint {dtype} vs model torch.float32"):
        load_checkpoint(model, tmp_path / "weights.pth")
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(half, tmp_path / "half.pth")
    load_checkpoint(model, tmp_path / "half.pth")  # another float precision is fine
