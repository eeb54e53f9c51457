"""The three detector families on a narrow DAT: training losses, eval outputs, label convention, parts."""

import math

import pytest
import torch
from conftest import FEW_ROIS, NUM_CLASSES, SMALL
from torch import nn

from deformvision.models import create_model
from deformvision.models.dat import DAT
from deformvision.models.detection import DATFPN, dat_fpn

RPN_LOSSES = {"loss_objectness", "loss_rpn_box_reg"}
EXPECTED_LOSSES = {
    "retinanet": {"classification", "bbox_regression"},
    "mask_rcnn": {"loss_classifier", "loss_box_reg", "loss_mask"} | RPN_LOSSES,
    "cascade_mask_rcnn": {f"loss_{k}_stage{t}" for k in ("classifier", "box_giou", "mask") for t in range(3)}
    | RPN_LOSSES,
}
# a random model returns detections once the test score threshold is 0; few of them keep the mask heads cheap
FEW_DETECTIONS = {
    "retinanet": {"score_thresh": 0.0, "detections_per_img": 10},
    "mask_rcnn": {"box_score_thresh": 0.0, "box_detections_per_img": 10},
    "cascade_mask_rcnn": {"score_thresh": 0.0, "detections_per_img": 10},
}
ARCHS = sorted(EXPECTED_LOSSES)


def small_model(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(f"{arch}_dat_tiny", **{**SMALL, **FEW_ROIS[arch], **kwargs})


@pytest.mark.parametrize("arch", ARCHS)
def test_train_step(arch: str, images, targets) -> None:
    model = small_model(arch).train()
    losses = model(images, targets)
    assert set(losses) == EXPECTED_LOSSES[arch]
    assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses.values()), losses
    sum(losses.values()).backward()
    body = model.backbone.body
    deformable = body.stages[3].blocks[1].attn  # a D block: its projections and its offset network
    for param in (body.stem.proj.weight, deformable.proj_q.weight, deformable.conv_offset[0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_outputs(arch: str, images) -> None:
    model = small_model(arch, **FEW_DETECTIONS[arch]).eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == len(images)
    for image, det in zip(images, detections, strict=True):
        height, width = image.shape[1:]
        num = det["boxes"].shape[0]
        assert num == 10
        assert det["boxes"].shape == (num, 4) and det["scores"].shape == (num,) and det["labels"].shape == (num,)
        assert det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        boxes = det["boxes"]  # in input pixels: inside (0, 0, W, H) of the image as given, not as resized
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        if arch == "retinanet":
            assert "masks" not in det
        else:
            assert det["masks"].shape == (num, 1, height, width) and det["masks"].dtype == torch.float32
            assert det["masks"].min() >= 0 and det["masks"].max() <= 1


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_labels_shift_into_torchvision_convention(arch: str, images, targets) -> None:
    """Inside, torchvision's background-0 convention: class k of ours is k + 1 in the RoI heads."""
    model = small_model(arch, **FEW_DETECTIONS[arch])
    seen = {}

    def record_targets(module: nn.Module, args: tuple) -> None:
        seen["targets"] = args[3]

    def record_detections(module: nn.Module, args: tuple, output: tuple) -> None:
        seen["labels"] = [d["labels"].clone() for d in output[0]]

    model.roi_heads.register_forward_pre_hook(record_targets)
    model.roi_heads.register_forward_hook(record_detections)
    model.train()(images, targets)
    for ours, inside in zip(targets, seen["targets"], strict=True):
        assert torch.equal(inside["labels"], ours["labels"] + 1)
    seen.clear()
    with torch.no_grad():
        detections = model.eval()(images)
    for ours, inside in zip(detections, seen["labels"], strict=True):
        assert len(ours["labels"]) == 10 and torch.equal(ours["labels"], inside - 1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bad", [NUM_CLASSES, -1])
def test_label_out_of_range_raises(arch: str, bad: int, images, targets) -> None:
    model = small_model(arch).train()
    targets[1]["labels"] = torch.tensor([bad])
    with pytest.raises(ValueError, match=rf"targets\[1\]\['labels'\] must be in 0\.\.{NUM_CLASSES - 1}.*{bad}"):
        model(images, targets)


def test_label_dtype_raises(images, targets) -> None:
    targets[0]["labels"] = targets[0]["labels"].float()
    with pytest.raises(ValueError, match="int64"):
        small_model("retinanet").train()(images, targets)


@pytest.mark.parametrize(
    ("levels", "names", "strides"),
    [
        ("p2-p6", ["0", "1", "2", "3", "pool"], [4, 8, 16, 32, 64]),
        ("p3-p7", ["0", "1", "2", "p6", "p7"], [8, 16, 32, 64, 128]),
    ],
)
def test_fpn_levels(levels: str, names: list[str], strides: list[int]) -> None:
    backbone = dat_fpn("tiny", levels, backbone_kwargs=SMALL["backbone_kwargs"])
    features = backbone(torch.zeros(1, 3, 128, 256))
    assert list(features) == names
    for feature, stride in zip(features.values(), strides, strict=True):
        assert feature.shape == (1, 256, math.ceil(128 / stride), math.ceil(256 / stride))
    if levels == "p3-p7":  # P6 is a conv on C5 (the DAT's last stage), not on P5
        assert backbone.fpn.extra_blocks.p6.in_channels == SMALL["backbone_kwargs"]["dims"][3]


def test_roi_pools_use_p2_to_p5_only() -> None:
    with torch.device("meta"):
        mask_rcnn, cascade = create_model("mask_rcnn_dat_tiny"), create_model("cascade_mask_rcnn_dat_tiny")
    for pool in (mask_rcnn.roi_heads.box_roi_pool, mask_rcnn.roi_heads.mask_roi_pool, cascade.roi_heads.box_roi_pool):
        assert pool.featmap_names == ["0", "1", "2", "3"]
    assert len(mask_rcnn.rpn.anchor_generator.sizes) == 5  # the RPN uses P2-P6


def test_retinanet_anchors() -> None:
    """9 anchors per location; at stride s: sides 4 s 2^(i/3) (i = 0, 1, 2) at h/w ratios 0.5, 1, 2."""
    with torch.device("meta"):
        model = create_model("retinanet_dat_tiny")
    generator = model.anchor_generator
    assert generator.num_anchors_per_location() == [9] * 5
    for stride, cell in zip((8, 16, 32, 64, 128), generator.cell_anchors, strict=True):
        expected = sorted(
            (round(4 * stride * 2 ** (i / 3) / math.sqrt(r)), round(4 * stride * 2 ** (i / 3) * math.sqrt(r)))
            for r in (0.5, 1.0, 2.0)
            for i in range(3)
        )  # (width, height)
        got = sorted(zip((cell[:, 2] - cell[:, 0]).tolist(), (cell[:, 3] - cell[:, 1]).tolist(), strict=True))
        for (w, h), (ew, eh) in zip(got, expected, strict=True):
            assert abs(w - ew) <= 1 and abs(h - eh) <= 1


@pytest.mark.parametrize(("size", "rate"), [("tiny", 0.2), ("small", 0.3), ("base", 0.5)])
def test_drop_path_defaults(size: str, rate: float) -> None:
    with torch.device("meta"):
        model = create_model(f"mask_rcnn_dat_{size}")
        custom = create_model(f"mask_rcnn_dat_{size}", drop_path_rate=0.1)
    assert model.backbone.body.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(rate)
    assert custom.backbone.body.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_backbone_kwargs_may_not_set_levels() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        dat_fpn("tiny", "p2-p6", backbone_kwargs={"out_indices": (1, 2, 3)})
    with pytest.raises(ValueError, match="levels must be one of"):
        dat_fpn("tiny", "p4-p8")


def test_pretrained_backbone_loads_dat_imagenet_weights(monkeypatch) -> None:
    """pretrained_backbone=True asks the registry for dat_tiny's weights, for the features_only DAT (no download)."""
    calls = []
    monkeypatch.setattr(
        "deformvision.models._registry.load_pretrained", lambda model, cfg, cache_dir: calls.append((model, cfg))
    )
    with torch.device("meta"):
        model = create_model("mask_rcnn_dat_tiny", pretrained_backbone=True)
    ((loaded, cfg),) = calls
    assert loaded is model.backbone.body and isinstance(loaded, DAT) and loaded.out_indices == (0, 1, 2, 3)
    assert cfg.architecture == "dat_tiny" and cfg.url


def test_grad_checkpointing_passthrough() -> None:
    with torch.device("meta"):
        model = create_model("retinanet_dat_tiny")
    model.set_grad_checkpointing()
    assert isinstance(model.backbone, DATFPN)
    assert all(stage.grad_checkpointing for stage in model.backbone.body.stages)


def test_multiscale_min_size(images, targets) -> None:
    """min_size may be a tuple (one size drawn per image in training), as torchvision's transform."""
    model = small_model("retinanet", min_size=(64, 96)).train()
    assert model.transform.min_size == (64, 96)
    assert torch.isfinite(sum(model(images, targets).values()))
