"""ResNet-50/101: torchvision and official Deformable DETR names and counts, frozen norms and stages, features."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import deformvision as dv
from deformvision.models import load_checkpoint
from deformvision.models._checkpoint import check_state_dict
from deformvision.models.resnet import FrozenBatchNorm2d, ResNet, resnet50, resnet101

KEYS_FILE = Path(__file__).parents[1] / "fixtures" / "ddetr_r50_keys.json"
PREFIX = "backbone.0.body."

# Official Deformable DETR multi-scale (DEFORMABLE_DETR.md): all parameters minus trainable ones =
# the frozen stem + layer1 convolutions; the backbone column counts parameters only (conv weights).
OFFICIAL_TOTAL, OFFICIAL_TRAINABLE, OFFICIAL_BACKBONE = 40_069_665, 39_847_265, 23_454_912
# torchvision classifiers (BatchNorm affine counted as parameters), with and without fc.
TORCHVISION_PARAMS = {"resnet50": (25_557_032, 23_508_032), "resnet101": (44_549_160, 42_500_160)}


def num_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def num_buffers(module: nn.Module) -> int:
    return sum(b.numel() for b in module.buffers())


def randomize_norms(model: nn.Module) -> None:
    """Non-trivial statistics and affine in every (frozen) BatchNorm, so that norms matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | FrozenBatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


@pytest.fixture(scope="module")
def official_backbone_keys() -> list[dict]:
    keys = json.loads(KEYS_FILE.read_text())["keys"]
    return [k for k in keys if k["name"].startswith(PREFIX)]


@pytest.fixture(scope="module")
def backbone() -> ResNet:
    return resnet50(features_only=True, out_indices=(1, 2, 3))


# --------------------------------------------------------------------------------------------------
# Names, shapes and counts


def test_official_backbone_keys_load(official_backbone_keys, backbone):
    assert len(official_backbone_keys) == 265
    generator = torch.Generator().manual_seed(0)
    official = {k["name"]: torch.randn(k["shape"], generator=generator) for k in official_backbone_keys}
    official["transformer.level_embed"] = torch.zeros(4, 256)  # the rest of the detector is dropped
    official["input_proj.0.0.weight"] = torch.zeros(256, 512, 1, 1)
    state_dict = backbone.checkpoint_filter(official)
    check_state_dict(backbone, state_dict)  # no missing, no unexpected, equal shapes
    assert state_dict.keys() == backbone.state_dict().keys()
    backbone.load_state_dict(state_dict)
    own = backbone.state_dict()
    assert all(torch.equal(own[name.removeprefix(PREFIX)], value) for name, value in official.items()
               if name.startswith(PREFIX))  # fmt: skip


def test_official_parameter_kinds_and_counts(official_backbone_keys, backbone):
    params = dict(backbone.named_parameters())
    buffers = dict(backbone.named_buffers())
    for key in official_backbone_keys:
        name = key["name"].removeprefix(PREFIX)
        if key["kind"] == "param":
            assert name in params and params[name].requires_grad == key["requires_grad"], name
        else:
            assert name in buffers, name  # FrozenBatchNorm2d: weight/bias/running stats are buffers
    assert len(params) + len(buffers) == len(official_backbone_keys)

    def elements(kind: str, frozen: bool | None = None) -> int:
        return sum(math.prod(k["shape"]) for k in official_backbone_keys
                   if k["kind"] == kind and (frozen is None or k["requires_grad"] != frozen))  # fmt: skip

    frozen = num_params(backbone) - num_params(backbone, trainable_only=True)
    assert num_params(backbone) == elements("param") == OFFICIAL_BACKBONE == 23_454_912
    assert num_buffers(backbone) == elements("buffer") == 106_240  # 4 x 26,560 norm channels
    assert frozen == elements("param", frozen=True) == OFFICIAL_TOTAL - OFFICIAL_TRAINABLE == 222_400
    # torchvision's body counts the BatchNorm affine (2 x 26,560) as parameters on top of the convs.
    assert TORCHVISION_PARAMS["resnet50"][1] - OFFICIAL_BACKBONE == num_buffers(backbone) // 2


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_classifier_counts_equal_torchvision(name):
    with_fc, without_fc = TORCHVISION_PARAMS[name]
    model = dv.create_model(name)
    assert num_params(model) == num_params(model, trainable_only=True) == with_fc
    model.reset_classifier(0)
    assert num_params(model) == without_fc
    norm_channels = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    if name == "resnet101":  # the frozen backbone counts convolutions only
        assert num_params(resnet101(features_only=True)) == without_fc - 2 * norm_channels == 42_394_816


def test_torchvision_checkpoint_loads_into_frozen_backbone(tmp_path):
    classifier = resnet50()  # BatchNorm2d, fc, num_batches_tracked: a torchvision resnet50-*.pth
    randomize_norms(classifier)
    path = tmp_path / "resnet50-tv.pth"
    torch.save(classifier.state_dict(), path)
    assert any(k.endswith("num_batches_tracked") for k in classifier.state_dict())
    backbone = resnet50(features_only=True, out_indices=(1, 2, 3))
    load_checkpoint(backbone, path)  # strict: every key of the model filled

    classifier.double().eval()
    backbone.double().train()  # FrozenBatchNorm2d behaves like eval-mode BatchNorm2d in train mode too
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    with torch.no_grad():
        expected = classifier.forward_stages(x)
        features = backbone(x)
    for i, feature in zip(backbone.out_indices, features, strict=True):
        torch.testing.assert_close(feature, expected[i], rtol=1e-10, atol=1e-10 * expected[i].abs().max().item())


def test_frozen_checkpoint_into_classifier_keeps_own_head(caplog):
    classifier = resnet50(num_classes=10)
    frozen = {PREFIX + k: v for k, v in resnet50(features_only=True).state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="deformvision.models.resnet"):
        state_dict = classifier.checkpoint_filter(frozen)
    check_state_dict(classifier, state_dict)  # own fc and num_batches_tracked filled in
    assert "fc.weight" in caplog.text


def test_truncated_backbone_drops_unbuilt_stages():
    model = resnet50(features_only=True, out_indices=(0, 1))
    assert not hasattr(model, "layer3") and not hasattr(model, "layer4")
    check_state_dict(model, model.checkpoint_filter(resnet50().state_dict()))


# --------------------------------------------------------------------------------------------------
# Frozen norms and stages


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frozen_batchnorm_equals_batchnorm_eval(dtype):
    frozen, reference = FrozenBatchNorm2d(16), nn.BatchNorm2d(16)
    randomize_norms(frozen)
    reference.load_state_dict({**frozen.state_dict(), "num_batches_tracked": torch.tensor(0)})
    frozen, reference = frozen.to(dtype), reference.to(dtype).eval()
    x = torch.randn(2, 16, 5, 7, dtype=dtype) * 3
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(frozen(x), reference(x), **tolerance)
    assert list(frozen.parameters()) == [] and len(list(frozen.buffers())) == 4


def test_frozen_stages_get_no_gradients(backbone):
    backbone.zero_grad(set_to_none=True)
    features = backbone(torch.randn(1, 3, 64, 64))
    sum(f.square().mean() for f in features).backward()
    for name, param in backbone.named_parameters():
        frozen = name.startswith(("conv1.", "layer1."))
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name


def test_frozen_batchnorm_stages_keep_statistics_in_train_mode():
    model = resnet50(features_only=True, norm_layer=nn.BatchNorm2d, out_indices=(0, 1))  # frozen_stages=1
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()
    model(torch.randn(2, 3, 32, 32))
    changed = {k.split(".")[0] for k, v in before.items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {"layer2"}
    assert not model.bn1.training and not model.layer1.training and model.layer2.training


def test_classifier_trains_everything_by_default():
    model = resnet50(num_classes=3)
    assert all(p.requires_grad for p in model.parameters())
    assert all(isinstance(m, nn.BatchNorm2d) for m in [model.bn1, model.layer1[0].bn1])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
        assert model.forward_head(model.forward_features(torch.randn(2, 3, 32, 32)), pre_logits=True).shape == (2, 2048)


# --------------------------------------------------------------------------------------------------
# Backbone contract


@pytest.fixture(scope="module", params=[False, True], ids=["C5", "DC5"])
def all_stages(request) -> ResNet:
    return resnet50(features_only=True, out_indices=(0, 1, 2, 3), dilation=request.param)


@pytest.mark.parametrize("size", [(64, 64), (100, 75)])
def test_features_only_shapes_and_strides(all_stages, size):
    model, dilation = all_stages, all_stages.feature_info[-1].stride == 16
    strides = [4, 8, 16, 16 if dilation else 32]
    assert [(i.channels, i.stride, i.index) for i in model.feature_info] == [
        (256, strides[0], 0), (512, strides[1], 1), (1024, strides[2], 2), (2048, strides[3], 3)
    ]  # fmt: skip
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    h, w = size
    # every stride-2 layer rounds up (conv1, maxpool, then the 3x3 of the first block of layer2-4)
    assert [tuple(f.shape) for f in features] == [
        (1, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride)) for info in model.feature_info
    ]


def test_dilated_c5_layout(all_stages):
    dilation = all_stages.feature_info[-1].stride == 16
    block0, block1 = all_stages.layer4[0], all_stages.layer4[1]
    assert block0.conv2.stride == block0.downsample[0].stride == ((1, 1) if dilation else (2, 2))
    assert block0.conv2.dilation == (1, 1)  # the first block keeps the dilation of the previous stage
    assert block1.conv2.dilation == block1.conv2.padding == ((2, 2) if dilation else (1, 1))


def test_out_indices_order_and_validation(backbone):
    model = resnet50(features_only=True, out_indices=(3, 1))
    assert [i.index for i in model.feature_info] == [3, 1]
    assert [f.shape[1] for f in model(torch.randn(1, 3, 64, 64))] == [2048, 512]
    for bad in [(), (1, 1), (4,)]:
        with pytest.raises(ValueError, match="out_indices"):
            resnet50(features_only=True, out_indices=bad)
    with pytest.raises(RuntimeError, match="features_only"):
        backbone.forward_features(torch.randn(1, 3, 64, 64))


def test_registry():
    assert {"resnet50", "resnet101"} <= set(dv.list_models("resnet*"))
    assert isinstance(dv.create_model("resnet50", features_only=True), ResNet)
