"""Semantic FPN / UperNet on DAT: registry, parameter counts vs the paper, losses, any input size, errors."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import deformvision as dv
from deformvision.models.segmentation import EncoderDecoder, FCNHead, FPNHead, FPNNeck, UPerHead

NAMES = [f"{head}_dat_{size}" for head in ("semantic_fpn", "upernet") for size in ("tiny", "small", "base")]
# Paper (DAT v1, Table 4; quoted by RMT Table 5), millions of parameters with 150 classes.
PAPER_PARAMS_M = {
    "semantic_fpn_dat_tiny": 32,
    "semantic_fpn_dat_small": 53,
    "semantic_fpn_dat_base": 92,
    "upernet_dat_tiny": 60,
    "upernet_dat_small": 81,
    "upernet_dat_base": 121,
}
# Official DAT v1 classifier counts (test_dat.py), their classification head + final norm, stage dims.
DAT = {
    "tiny": (28_319_138, 768 * 1000 + 1000 + 2 * 768, (96, 192, 384, 768)),
    "small": (49_700_402, 768 * 1000 + 1000 + 2 * 768, (96, 192, 384, 768)),
    "base": (87_881_632, 1024 * 1000 + 1000 + 2 * 1024, (128, 256, 512, 1024)),
}

# A narrow, shallow DAT with every block kind (window, shifted window, deformable) for fast CPU tests.
NARROW = {
    "dims": (16, 32, 64, 128),
    "depths": (1, 1, 2, 2),
    "heads": (1, 2, 4, 8),
    "groups": (-1, -1, 2, 4),
    "stage_spec": (("L",), ("S",), ("L", "D"), ("L", "D")),
}
NARROW_HEADS = {
    "semantic_fpn": {"fpn_channels": 32, "head_channels": 16},
    "upernet": {"channels": 32, "aux_channels": 16},
}


def narrow(name: str, num_classes: int = 5, **kwargs) -> EncoderDecoder:
    head = name.rsplit("_dat_", 1)[0]
    torch.manual_seed(0)
    return dv.create_model(
        name,
        num_classes=num_classes,
        drop_path_rate=0.0,
        backbone_kwargs={**NARROW, **kwargs.pop("backbone", {})},
        **{**NARROW_HEADS[head], **kwargs},
    )


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registered_with_pretrained_cfgs():
    assert dv.list_models("semantic_fpn_dat_*") + dv.list_models("upernet_dat_*") == sorted(NAMES[:3]) + sorted(
        NAMES[3:]
    )
    cfg = dv.models.get_pretrained_cfg("upernet_dat_small")
    assert cfg.input_size == (3, 512, 512) and cfg.num_classes == 150 and not cfg.has_weights
    model = narrow("semantic_fpn_dat_tiny")
    assert model.pretrained_cfg["input_size"] == (3, 512, 512)
    assert model.pretrained_cfg["architecture"] == "semantic_fpn_dat_tiny"


def _conv_bn(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + 2 * c_out  # no conv bias; BN weight and bias


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_match_the_paper(name):
    head, size = name.rsplit("_dat_", 1)
    with torch.device("meta"):  # no memory, no initialisation cost
        model = dv.create_model(name)
    total, cls_head, dims = DAT[size]
    # backbone: the classifier without its head and final norm, plus 4 output LayerNorms
    assert n_params(model.backbone) == total - cls_head + sum(2 * d for d in dims)
    # neck and heads, counted by hand from the mmseg structures (150 classes)
    classifier = lambda c: c * 150 + 150  # noqa: E731
    if head == "semantic_fpn":
        fpn = sum(d * 256 + 256 for d in dims) + 4 * (256 * 256 * 9 + 256)
        fpn_head = 4 * _conv_bn(256, 128, 3) + 3 * _conv_bn(128, 128, 3) + classifier(128)  # 1+1+2+3 convs
        assert n_params(model.neck) == fpn and n_params(model.decode_head) == fpn_head
    else:
        ppm = 4 * _conv_bn(dims[3], 512, 1)
        uper = (
            ppm
            + _conv_bn(dims[3] + 4 * 512, 512, 3)
            + sum(_conv_bn(d, 512, 1) for d in dims[:3])
            + 3 * _conv_bn(512, 512, 3)
            + _conv_bn(4 * 512, 512, 3)
            + classifier(512)
        )
        assert n_params(model.decode_head) == uper
        assert n_params(model.aux_head) == _conv_bn(dims[2], 256, 3) + classifier(256)
    assert n_params(model) / 1e6 == pytest.approx(PAPER_PARAMS_M[name], rel=0.025)


def test_default_drop_path_rates():
    expected = {"semantic_fpn": (0.4, 0.4, 0.7), "upernet": (0.3, 0.5, 0.7)}
    for head, rates in expected.items():
        for size, rate in zip(("tiny", "small", "base"), rates, strict=True):
            model = dv.create_model(f"{head}_dat_{size}", backbone_kwargs=NARROW, **NARROW_HEADS[head])
            assert model.backbone.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(rate)


@pytest.mark.parametrize("name", ["semantic_fpn_dat_tiny", "upernet_dat_tiny"])
def test_train_step_odd_size(name):
    model = narrow(name).train()
    images = torch.randn(2, 3, 72, 100)
    targets = torch.randint(0, 5, (2, 72, 100))
    targets[:, :8] = 255
    losses = model(images, targets)
    assert set(losses) == ({"loss_seg", "loss_aux"} if name.startswith("upernet") else {"loss_seg"})
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses.values())
    sum(losses.values()).backward()
    for module in (model.backbone.stem.proj, model.backbone.stages[3].blocks[-1].mlp.fc2, model.decode_head.classifier):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    if model.aux_head is not None:
        assert model.aux_head.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["semantic_fpn_dat_tiny", "upernet_dat_tiny"])
def test_eval_logits_at_input_size(name):
    model = narrow(name).eval()
    with torch.no_grad():
        for size in [(64, 64), (72, 100), (97, 131), (20, 33)]:
            assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


@pytest.mark.parametrize("name", ["semantic_fpn_dat_tiny", "upernet_dat_tiny"])
def test_logits_are_padded_run_upsampled_and_cropped(name):
    """Independently: backbone -> (neck) -> head by hand, bilinear to the padded size, crop."""
    model = narrow(name).eval()
    images = torch.randn(1, 3, 70, 99)
    with torch.no_grad():
        got = model(images)
        padded = torch.zeros(1, 3, 96, 128)  # next multiples of 32
        padded[..., :70, :99] = images
        features = model.backbone(padded)
        assert [f.shape[-2:] for f in features] == [(24, 32), (12, 16), (6, 8), (3, 4)]
        decoded = model.decode_head(model.neck(features) if model.neck is not None else features)
        expected = F.interpolate(decoded, size=(96, 128), mode="bilinear", align_corners=False)[..., :70, :99]
        torch.testing.assert_close(got, expected)
        # a multiple of 32: mmseg's resize of the stride-4 logits to the input size
        images = torch.randn(1, 3, 64, 96)
        features = model.backbone(images)
        decoded = model.decode_head(model.neck(features) if model.neck is not None else features)
        expected = F.interpolate(decoded, size=(64, 96), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(images), expected)


def _manual_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, over_all_pixels: bool) -> torch.Tensor:
    log_probs = logits.log_softmax(1).permute(0, 2, 3, 1)  # B, H, W, K
    valid = targets != 255
    picked = log_probs[valid].gather(1, targets[valid][:, None])  # N_valid, 1
    return -picked.sum() / (targets.numel() if over_all_pixels else valid.sum())


@pytest.mark.parametrize("avg_non_ignore", [True, False])
def test_losses_are_cross_entropy_over_labelled_pixels(avg_non_ignore):
    model = narrow("upernet_dat_tiny", avg_non_ignore=avg_non_ignore).eval()  # eval: no dropout
    images = torch.randn(2, 3, 64, 80)
    targets = torch.randint(0, 5, (2, 64, 80))
    targets[0, 10:30, 5:60] = 255
    with torch.no_grad():
        losses = model(images, targets)
        logits = model(images)
        aux = model.aux_head(model.backbone(F.pad(images, (0, 16)))[2])  # padded to 64x96; stride 16: 4x6
        aux = F.interpolate(aux, size=(64, 96), mode="bilinear", align_corners=False)[..., :80]
    torch.testing.assert_close(losses["loss_seg"], _manual_cross_entropy(logits, targets, not avg_non_ignore))
    torch.testing.assert_close(losses["loss_aux"], 0.4 * _manual_cross_entropy(aux, targets, not avg_non_ignore))


@pytest.mark.parametrize("name", ["semantic_fpn_dat_tiny", "upernet_dat_tiny"])
def test_all_ignored_target_gives_zero_loss_and_zero_gradients(name):
    model = narrow(name).train()
    losses = model(torch.randn(2, 3, 64, 64), torch.full((2, 64, 64), 255))
    assert all(loss.item() == 0.0 for loss in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_input_errors_name_the_bad_values():
    model = narrow("semantic_fpn_dat_tiny").eval()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.zeros(2, 32, 32, dtype=torch.long)
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\) or ignore_index 255; found -1, 5, 9"):
        model(
            images,
            targets.index_put(
                (torch.tensor([0, 1, 1]), torch.tensor([0, 3, 4]), torch.tensor([1, 2, 3])), torch.tensor([5, 9, -1])
            ),
        )
    with pytest.raises(ValueError, match=r"targets must be a \(B, H, W\) = \(2, 32, 32\) tensor .* got \(2, 32, 31\)"):
        model(images, targets[..., :31])
    with pytest.raises(ValueError, match="targets must be an integer .* got dtype torch.float32"):
        model(images, targets.float())
    with pytest.raises(ValueError, match="images must be a floating-point .* got dtype torch.uint8"):
        model(images.to(torch.uint8))
    with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) tensor, got \(3, 32, 32\)"):
        model(images[0])
    with pytest.raises(ValueError, match="ignore_index must not be a class index"):
        narrow("semantic_fpn_dat_tiny", num_classes=300)
    with pytest.raises(ValueError, match=r"backbone_kwargs must not set \['features_only', 'out_indices'\]"):
        narrow("upernet_dat_tiny", backbone={"features_only": False, "out_indices": (3,)})
    targets_uint8 = torch.randint(0, 5, (2, 32, 32), dtype=torch.uint8)  # other integer types are accepted
    assert set(model(images, targets_uint8)) == {"loss_seg"}


def test_pretrained_loads_the_backbone_only(tmp_path):
    with pytest.raises(ValueError, match="no pretrained weights are published for upernet_dat_tiny"):
        narrow("upernet_dat_tiny", pretrained=True)
    torch.manual_seed(1)
    classifier = dv.create_model("dat_tiny", **NARROW)  # stands for the ImageNet checkpoint (no download)
    path = tmp_path / "dat.safetensors"
    save_file(classifier.state_dict(), path)
    model = narrow(
        "upernet_dat_tiny", pretrained_backbone=True, backbone={"pretrained_cfg_overlay": {"file": str(path)}}
    )
    own = model.backbone.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith(("head.", "norm.")):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_grad_checkpointing_gives_the_same_gradients():
    images, targets = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    grads = []
    for enable in (False, True):
        model = narrow("upernet_dat_tiny").eval()  # eval: deterministic (no dropout), still differentiable
        model.set_grad_checkpointing(enable)
        assert all(stage.grad_checkpointing == enable for stage in model.backbone.stages)
        sum(model(images, targets).values()).backward()
        grads.append(model.backbone.stem.proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_builders_on_any_features_only_backbone():
    backbone = dv.create_model("dat_tiny", features_only=True, **NARROW)
    model = dv.models.segmentation.semantic_fpn(backbone, num_classes=3, fpn_channels=16, head_channels=8)
    assert isinstance(model.neck, FPNNeck) and isinstance(model.decode_head, FPNHead) and model.aux_head is None
    model = dv.models.segmentation.upernet(backbone, num_classes=3, channels=16, aux_channels=0)
    assert isinstance(model.decode_head, UPerHead) and model.aux_head is None
    model = dv.models.segmentation.upernet(backbone, num_classes=3, channels=16, aux_channels=8)
    assert isinstance(model.aux_head, FCNHead) and model.aux_head.convs[0][0].in_channels == NARROW["dims"][2]
    with pytest.raises(ValueError, match="strides must be the first stride times powers of 2"):
        FPNHead([8, 8], [4, 12])


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_eval_fullgraph():
    """Dynamo captures the eval forward as one graph (no breaks); the captured graph computes the same logits.

    ``aot_eager`` runs the captured graph without code generation (seconds); inductor also works (max
    difference 1e-6 in a trial) but compiles for minutes on a CPU: see ``test_torch_compile_inductor``.
    """
    torch._dynamo.reset()
    model = narrow("upernet_dat_tiny").eval()
    images = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        expected = model(images)
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(images)  # fullgraph: raises on a break
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_train_step_fullgraph():
    """The training forward (losses) is one graph too (the target value check is skipped when traced)."""
    torch._dynamo.reset()
    images, targets = torch.randn(2, 3, 64, 96), torch.randint(0, 5, (2, 64, 96))
    targets[1, :20] = 255
    results = []
    for compiled in (False, True):
        model = narrow("semantic_fpn_dat_tiny", dropout=0.0).train()  # same seed: same weights
        forward = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        loss = forward(images, targets)["loss_seg"]
        loss.backward()
        results.append((loss.detach(), model.backbone.stem.proj.weight.grad))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_inductor():
    """Inductor (the default backend) on the eval forward: 2-3 minutes of compilation on a shared 2-core CPU."""
    torch._dynamo.reset()
    model = narrow("semantic_fpn_dat_tiny").eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(images)
        got = torch.compile(model)(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_class_weight_weights_the_pixel_losses():
    """Against a hand computation: sum of w[t] * CE over the counted pixels, divided by the sum of their weights."""
    torch.manual_seed(0)
    model = narrow("semantic_fpn_dat_tiny", num_classes=3, class_weight=[0.2, 1.0, 3.0])
    logits = torch.randn(2, 3, 4, 5)
    targets = torch.randint(0, 3, (2, 4, 5))
    targets[0, 0, :3] = 255
    weight = torch.tensor([0.2, 1.0, 3.0])
    keep = targets != 255
    per_pixel = -logits.log_softmax(1).gather(1, targets.clamp(max=2)[:, None])[:, 0]
    expected = (weight[targets.clamp(max=2)] * per_pixel)[keep].sum() / weight[targets.clamp(max=2)][keep].sum()
    torch.testing.assert_close(model.cross_entropy(logits, targets), expected)
    with pytest.raises(ValueError, match="class_weight must be 3 non-negative numbers"):
        narrow("semantic_fpn_dat_tiny", num_classes=3, class_weight=[1.0, 1.0])
