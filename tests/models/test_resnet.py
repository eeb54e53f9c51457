"""ResNet-50/101 (torchvision's, wrapped): official Deformable DETR names and counts, torchvision's and timm's
outputs for the same weights, frozen norms and stages, timm's feature_info / forward_intermediates contract,
gradient checkpointing."""

import json
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

import deformvision as dv
from deformvision.models import load_checkpoint
from deformvision.models._checkpoint import check_state_dict
from deformvision.models.resnet import ResNet, resnet50, resnet101

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
                n = module.running_mean.numel()
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


def torchvision_resnet50(dilation: bool = False) -> nn.Module:
    """torchvision's own classifier (BatchNorm2d, eval mode) with random non-trivial norms, float64."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, dilation])
    randomize_norms(model)
    return model.double().eval()


def assert_close_f64(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


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
    assert all(
        torch.equal(own[name.removeprefix(PREFIX)], value)
        for name, value in official.items()
        if name.startswith(PREFIX)
    )


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
        return sum(
            math.prod(k["shape"])
            for k in official_backbone_keys
            if k["kind"] == kind and (frozen is None or k["requires_grad"] != frozen)
        )

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


@pytest.mark.parametrize("dilation", [False, True], ids=["C5", "DC5"])
def test_torchvision_checkpoint_gives_torchvision_features(tmp_path, dilation):
    """A torchvision resnet50-*.pth (BatchNorm2d, fc, num_batches_tracked) in our frozen backbone: the maps of
    torchvision's own model (eval mode) with the same weights, in train mode too (frozen norms)."""
    reference = torchvision_resnet50(dilation)
    path = tmp_path / "resnet50-tv.pth"
    torch.save(reference.state_dict(), path)
    assert any(k.endswith("num_batches_tracked") for k in reference.state_dict())
    backbone = resnet50(features_only=True, out_indices=(0, 1, 2, 3), dilation=dilation)
    load_checkpoint(backbone, path)  # strict: every key of the model filled
    backbone.double().train()

    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    extractor = create_feature_extractor(reference, return_nodes=[f"layer{i}" for i in range(1, 5)])
    with torch.no_grad():
        expected = list(extractor(x).values())
        features = backbone(x)
    for feature, ref in zip(features, expected, strict=True):
        assert_close_f64(feature, ref)


def test_classifier_logits_equal_torchvision():
    reference = torchvision_resnet50()
    model = resnet50().double().eval()
    model.load_state_dict(model.checkpoint_filter(reference.state_dict()))
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    with torch.no_grad():
        assert_close_f64(model(x), reference(x))


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


def test_detection_backbone_uses_torchvision_frozen_batchnorm(backbone):
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
    assert len(norms) == 53 and all(isinstance(m, FrozenBatchNorm2d) and m.eps == 1e-5 for m in norms)
    assert not any(k.endswith("num_batches_tracked") for k in backbone.state_dict())


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
    model, info = all_stages, all_stages.feature_info
    dilation = info.reduction()[-1] == 16
    assert isinstance(info, timm.models.FeatureInfo) and info.out_indices == (0, 1, 2, 3)
    assert info.channels() == [256, 512, 1024, 2048]
    assert info.reduction() == [4, 8, 16, 16 if dilation else 32]
    assert info.module_name() == ["layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    h, w = size
    # every stride-2 layer rounds up (conv1, maxpool, then the 3x3 of the first block of layer2-4)
    assert [tuple(f.shape) for f in features] == [
        (1, c, math.ceil(h / r), math.ceil(w / r)) for c, r in zip(info.channels(), info.reduction(), strict=True)
    ]


def test_dilated_c5_layout(all_stages):
    dilation = all_stages.feature_info.reduction()[-1] == 16
    block0, block1 = all_stages.layer4[0], all_stages.layer4[1]
    assert block0.conv2.stride == block0.downsample[0].stride == ((1, 1) if dilation else (2, 2))
    assert block0.conv2.dilation == (1, 1)  # the first block keeps the dilation of the previous stage
    assert block1.conv2.dilation == block1.conv2.padding == ((2, 2) if dilation else (1, 1))


def test_out_indices_order_and_validation(backbone):
    model = resnet50(features_only=True, out_indices=(3, 1))
    info = model.feature_info
    assert (info.channels(), info.reduction(), info.module_name()) == ([2048, 512], [32, 8], ["layer4", "layer2"])
    assert len(info) == 4  # timm's FeatureInfo: len counts every stage, not the returned ones
    assert [f.shape[1] for f in model(torch.randn(1, 3, 64, 64))] == info.channels()
    for bad in [(), (1, 1), (4,)]:
        with pytest.raises(ValueError, match="out_indices"):
            resnet50(features_only=True, out_indices=bad)
    with pytest.raises(RuntimeError, match="features_only"):
        backbone.forward_features(torch.randn(1, 3, 64, 64))


# --------------------------------------------------------------------------------------------------
# timm's contract, against timm's own resnet50 with the same weights (timm counts the stem as index 0)


@pytest.fixture(scope="module")
def ours_and_timm() -> tuple[ResNet, nn.Module]:
    reference = timm.create_model("resnet50", pretrained=False)
    randomize_norms(reference)
    model = resnet50()
    model.load_state_dict(model.checkpoint_filter(reference.state_dict()))  # torchvision's names = timm's
    return model.double().eval(), reference.double().eval()


def test_feature_info_equals_timm(ours_and_timm):
    model, reference = ours_and_timm
    assert model.feature_info == reference.feature_info[1:]  # timm's index 0 is the stem
    dc5 = timm.create_model("resnet50", pretrained=False, output_stride=16)
    assert resnet50(dilation=True).feature_info == dc5.feature_info[1:]
    features = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(2, 4, 3))
    info = resnet50(features_only=True, out_indices=(1, 3, 2)).feature_info
    for key in ("channels", "reduction", "module_name"):
        assert getattr(info, key)() == getattr(features.feature_info, key)(), key


@pytest.mark.parametrize(
    ("indices", "timm_indices"), [(None, [1, 2, 3, 4]), (2, 2), ([0, 2], [1, 3]), ([-1, 1], [-1, 2]), ((1,), [2])]
)
@pytest.mark.parametrize("stop_early", [False, True])
def test_forward_intermediates_equal_timm(ours_and_timm, indices, timm_indices, stop_early):
    model, reference = ours_and_timm
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices, stop_early=stop_early)
        ref_final, ref_maps = reference.forward_intermediates(x, timm_indices, stop_early=stop_early)
        only = model.forward_intermediates(x, indices, stop_early=stop_early, intermediates_only=True)
    assert len(maps) == len(ref_maps) == len(only)
    for ours, ref, ours_only in zip(maps, ref_maps, only, strict=True):
        assert_close_f64(ours, ref)
        assert torch.equal(ours_only, ours)
    assert_close_f64(final, ref_final)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers(ours_and_timm):
    model, _ = ours_and_timm
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
    pruned = resnet50().double().eval()
    pruned.load_state_dict(model.state_dict())
    assert pruned.prune_intermediate_layers([0, 2]) == [0, 2]
    assert not hasattr(pruned, "layer4") and isinstance(pruned.fc, nn.Identity) and pruned.num_features == 1024
    with torch.no_grad():
        pooled = pruned.forward_head(pruned.forward_features(x), pre_logits=True)
        assert_close_f64(pooled, expected[2].mean((2, 3)))
        final, maps = pruned.forward_intermediates(x, [0, 2])
    assert torch.equal(final, expected[2])
    assert all(torch.equal(a, expected[i]) for a, i in zip(maps, [0, 2], strict=True))
    with pytest.raises(ValueError, match="not built"):
        pruned.forward_intermediates(x, [3])
    with pytest.raises(ValueError, match="out_indices"):
        resnet50(features_only=True, out_indices=(1, 3)).prune_intermediate_layers([0, 1])


def test_classifier_contract():
    model = resnet50(num_classes=5)
    assert model.no_weight_decay() == set() and model.num_features == 2048
    assert model.get_classifier() is model.fc and model.fc.out_features == 5
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)


@pytest.mark.parametrize("features_only", [True, False], ids=["frozen_backbone", "batchnorm_classifier"])
def test_grad_checkpointing_gives_the_same_gradients(features_only):
    torch.manual_seed(0)
    model = resnet50(features_only=True, out_indices=(1, 2, 3)) if features_only else resnet50(num_classes=4)
    model.double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    def gradients(enable: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        out = model(x)
        loss = sum(f.square().mean() for f in out) if features_only else out.logsumexp(-1).sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == (42 if features_only else 161)  # trainable tensors
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-9, atol=1e-9 * grad.abs().max().item(), msg=name)


def test_registry():
    assert {"resnet50", "resnet101"} <= set(dv.list_models("resnet*"))
    assert isinstance(dv.create_model("resnet50", features_only=True), ResNet)
    assert type(timm.create_model("resnet50", pretrained=False)).__module__ == "timm.models.resnet"  # not ours


def test_pretrained_torchvision_weights_through_the_download_path(tmp_path):
    """``pretrained=True`` reads torchvision's ImageNet file (here served from disk) into the backbone."""
    assert dv.models.get_pretrained_cfg("resnet50").url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    for module in reference.modules():  # non-trivial running statistics, as in a trained network
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    published = tmp_path / "resnet50-published.pth"
    torch.save(reference.state_dict(), published)
    backbone = dv.create_model(
        "resnet50",
        pretrained=True,
        features_only=True,
        out_indices=(3,),
        pretrained_cfg_overlay={"url": published.as_uri()},
        cache_dir=tmp_path / "cache",
    )
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.double().children())[:-2])(x)
        torch.testing.assert_close(backbone.double().eval()(x)[0], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32 on the CPU: oneDNN, channels last
def test_folded_frozen_norms_give_torchvision_gradients(dtype):
    """The frozen backbone folds each FrozenBatchNorm2d into its convolution: its maps and the gradients of the
    trained convolutions equal those of torchvision's own module forward (conv, norm, ReLU, Bottleneck)."""
    backbone = resnet50(features_only=True, out_indices=(1, 2))
    randomize_norms(backbone)
    backbone.to(dtype).train()
    x = torch.randn(1, 3, 64, 48, dtype=dtype)
    weights = [torch.randn(f.shape, dtype=dtype) for f in backbone(x)]
    if dtype == torch.float32:
        with torch.profiler.profile() as prof:
            maps = backbone(x)
        names = {event.name for event in prof.events()}
        # oneDNN called directly on the folded weights: torchvision's own forward would go through aten::convolution
        assert "aten::mkldnn_convolution" in names and "aten::convolution" not in names
        assert all(m.is_contiguous() for m in maps)  # NCHW maps for NCHW images, whatever the layout inside
        channels_last = backbone(x.contiguous(memory_format=torch.channels_last))
        assert all(m.is_contiguous(memory_format=torch.channels_last) for m in channels_last)  # the input's layout

    def loss_and_grads(forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
        backbone.zero_grad(set_to_none=True)
        loss = sum((f * w).sum() for f, w in zip(forward(x), weights, strict=True))
        loss.backward()
        return loss.detach(), [p.grad for p in backbone.layer2.parameters()] + [backbone.layer3[0].conv1.weight.grad]

    def torchvision_forward(images: torch.Tensor) -> list[torch.Tensor]:
        y = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
        maps = []
        for stage in (backbone.layer1, backbone.layer2, backbone.layer3):
            y = stage(y)  # nn.Sequential of torchvision Bottleneck modules
            maps.append(y)
        return maps[1:]

    def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
        if dtype == torch.float64:
            assert_close_f64(actual, expected)
        else:
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    ours, ours_grads = loss_and_grads(backbone)
    expected, expected_grads = loss_and_grads(torchvision_forward)
    close(ours, expected)
    assert len(ours_grads) == 14 and all(g is not None for g in ours_grads)  # layer2: 4 x 3 convs + downsample
    for grad, ref in zip(ours_grads, expected_grads, strict=True):
        close(grad, ref)
