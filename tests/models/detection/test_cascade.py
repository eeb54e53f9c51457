"""CascadeRoIHeads against hand computations: refinement between stages, GIoU loss, score and mask merging.

The heads run on 8-channel random FPN maps (``channels=8``), which keeps them cheap.
"""

import math

import pytest
import torch
from conftest import box_mask
from torchvision.ops import MultiScaleRoIAlign

from deformvision.models.detection import CascadeRoIHeads

CHANNELS, SIZE = 8, 64
IMAGE_SHAPES = [(SIZE, SIZE), (SIZE, SIZE)]
STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


def make_heads(num_classes: int, **kwargs) -> CascadeRoIHeads:
    torch.manual_seed(0)
    names = ["0", "1", "2", "3"]
    return CascadeRoIHeads(
        num_classes,
        MultiScaleRoIAlign(names, output_size=7, sampling_ratio=0),
        MultiScaleRoIAlign(names, output_size=14, sampling_ratio=0),
        channels=CHANNELS,
        **kwargs,
    )


def make_features(batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        str(i): torch.randn(batch, CHANNELS, SIZE // 2 ** (i + 2), SIZE // 2 ** (i + 2), generator=generator)
        for i in range(4)
    }


def random_boxes(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=generator) * 30 + 5
    wh = torch.rand(n, 2, generator=generator) * 20 + 8
    return torch.cat([xy, xy + wh], dim=1)


def hand_decode(deltas: torch.Tensor, rois: torch.Tensor, stds: tuple[float, ...]) -> torch.Tensor:
    """Delta-xywh decoding written out: centre shift d * std * size, size scale exp(d * std) (clamped)."""
    widths, heights = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    cx, cy = rois[:, 0] + widths / 2, rois[:, 1] + heights / 2
    dx, dy = deltas[:, 0] * stds[0], deltas[:, 1] * stds[1]
    dw = (deltas[:, 2] * stds[2]).clamp(max=math.log(1000 / 16))
    dh = (deltas[:, 3] * stds[3]).clamp(max=math.log(1000 / 16))
    pcx, pcy = cx + dx * widths, cy + dy * heights
    pw, ph = widths * dw.exp(), heights * dh.exp()
    return torch.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], dim=1).clamp(0, SIZE)


def record(heads: CascadeRoIHeads) -> dict[str, list]:
    """Hooks recording the RoIs given to the box RoIAlign and each stage's box / mask predictions, in call order."""
    seen = {"rois": [], "box": [], "mask": []}
    heads.box_roi_pool.register_forward_pre_hook(lambda mod, args: seen["rois"].append([b.clone() for b in args[1]]))
    for stage in heads.stages:
        stage.box_predictor.register_forward_hook(lambda mod, args, out: seen["box"].append(out))
        stage.mask_predictor.register_forward_hook(lambda mod, args, out: seen["mask"].append(out))
    return seen


def test_eval_refinement_is_previous_stage_decoded_boxes() -> None:
    """Stage t + 1 gets stage t's boxes: regressed by the best non-background class, clipped to the image."""
    heads = make_heads(num_classes=4).eval()
    proposals = [random_boxes(6, seed=2), random_boxes(4, seed=3)]
    seen = record(heads)
    with torch.no_grad():
        heads(make_features(), proposals, IMAGE_SHAPES)
    assert len(seen["rois"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen["rois"][0], proposals, strict=True))
    for t in range(2):
        logits, regression = seen["box"][t]  # (10, 4), (10, 16)
        rois = torch.cat(seen["rois"][t])
        labels = logits[:, 1:].argmax(dim=1) + 1
        deltas = regression.reshape(-1, 4, 4)[torch.arange(len(labels)), labels]
        expected = hand_decode(deltas, rois, STDS[t])
        torch.testing.assert_close(torch.cat(seen["rois"][t + 1]), expected, rtol=1e-5, atol=1e-4)
        assert not torch.equal(seen["rois"][t + 1][0], seen["rois"][t][0])  # the boxes did move


def test_train_refinement_adds_gt_to_detached_refined_boxes() -> None:
    """In training stage t + 1's RoIs are stage t's refined non-GT RoIs followed by the GT (all sampled here)."""
    heads = make_heads(num_classes=2).train()  # one object class: every RoI is regressed by class 1
    proposals = [random_boxes(5, seed=4), random_boxes(3, seed=5)]
    gt = [random_boxes(2, seed=6), random_boxes(1, seed=7)]
    targets = [
        {
            "boxes": g,
            "labels": torch.ones(len(g), dtype=torch.int64),
            "masks": torch.stack([box_mask(SIZE, SIZE, b) for b in g]),
        }
        for g in gt
    ]
    seen = record(heads)
    heads(make_features(), proposals, IMAGE_SHAPES, targets)
    for i in range(2):
        assert torch.equal(seen["rois"][0][i], torch.cat([proposals[i], gt[i]]))
    for t in range(2):
        _, regression = seen["box"][t]
        assert regression.requires_grad
        rois = seen["rois"][t]
        refined = hand_decode(regression.detach().reshape(-1, 2, 4)[:, 1], torch.cat(rois), STDS[t])
        refined = refined.split([len(r) for r in rois])
        for i in range(2):
            without_gt = refined[i][: len(rois[i]) - len(gt[i])]
            torch.testing.assert_close(seen["rois"][t + 1][i], torch.cat([without_gt, gt[i]]), rtol=1e-5, atol=1e-4)
            assert not seen["rois"][t + 1][i].requires_grad


def _train_giou_losses(proposal: torch.Tensor) -> dict[str, torch.Tensor]:
    """Losses of a one-image, one-GT batch whose box regression is forced to 0 (predicted box = RoI)."""
    heads = make_heads(num_classes=2).train()
    for stage in heads.stages:
        torch.nn.init.zeros_(stage.box_predictor.bbox_pred.weight)
        torch.nn.init.zeros_(stage.box_predictor.bbox_pred.bias)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = {"boxes": gt, "labels": torch.tensor([1]), "masks": box_mask(SIZE, SIZE, gt[0])[None]}
    return heads(make_features(1), [proposal], IMAGE_SHAPES[:1], [target])[1]


def test_giou_loss_zero_for_perfect_boxes() -> None:
    losses = _train_giou_losses(torch.zeros(0, 4))  # only the GT itself is a RoI: predicted box == GT
    for t in range(3):
        assert losses[f"loss_box_giou_stage{t}"].item() == 0.0
        assert torch.isfinite(losses[f"loss_classifier_stage{t}"]) and torch.isfinite(losses[f"loss_mask_stage{t}"])


def test_giou_loss_hand_computed() -> None:
    """RoI (2, 0, 12, 10) vs GT (0, 0, 10, 10): intersection 80, union 120, hull 120 -> GIoU = IoU = 2/3.

    2 sampled RoIs per stage (the proposal and the GT). The proposal is positive at IoU thresholds 0.5
    and 0.6 (stages 0, 1), negative at 0.7 (stage 2); the GT RoI contributes 0. Loss per stage:
    stage weight * 10 * (1 - 2/3) / 2 sampled RoIs.
    """
    losses = _train_giou_losses(torch.tensor([[2.0, 0.0, 12.0, 10.0]]))
    for t, (weight, positive) in enumerate([(1.0, True), (0.5, True), (0.25, False)]):
        expected = weight * 10 * (1 - 2 / 3) / 2 if positive else 0.0
        assert losses[f"loss_box_giou_stage{t}"].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("score_merge", ["mean_logits", "mean_probs"])
def test_eval_scores_and_masks_merge_the_stages(score_merge: str) -> None:
    """Scores: softmax of the mean stage logits (mmdet) or mean of the stage softmaxes; masks: mean of the
    3 mask heads' sigmoid at the detected class. No filtering: every (RoI, class) pair comes out."""
    heads = make_heads(
        num_classes=4, score_thresh=0.0, nms_thresh=1.0, detections_per_img=1000, score_merge=score_merge
    )
    heads.eval()
    proposals = [random_boxes(6, seed=8), random_boxes(4, seed=9)]
    seen = record(heads)
    with torch.no_grad():
        detections, _ = heads(make_features(), proposals, IMAGE_SHAPES)
    logits = torch.stack([out[0] for out in seen["box"]])  # 3, 10, 4
    if score_merge == "mean_logits":
        merged = logits.mean(dim=0).softmax(dim=-1)
    else:
        merged = logits.softmax(dim=-1).mean(dim=0)
    expected = [s[:, 1:].flatten().sort(descending=True).values for s in merged.split([6, 4])]
    for det, exp in zip(detections, expected, strict=True):
        torch.testing.assert_close(det["scores"].sort(descending=True).values, exp)
        assert set(det["labels"].tolist()) == {1, 2, 3}  # torchvision's labels here: 0 is background
    labels = torch.cat([d["labels"] for d in detections])
    stage_probs = [m.sigmoid()[torch.arange(len(labels)), labels] for m in seen["mask"]]  # each (D, 28, 28)
    torch.testing.assert_close(torch.cat([d["masks"] for d in detections])[:, 0], sum(stage_probs) / 3)


def test_train_image_without_objects() -> None:
    """An image without GT gives only background RoIs: finite losses, zero box and mask losses."""
    heads = make_heads(num_classes=3).train()
    target = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, SIZE, SIZE),
    }
    losses = heads(make_features(1), [random_boxes(5, seed=10)], IMAGE_SHAPES[:1], [target])[1]
    assert all(torch.isfinite(loss) for loss in losses.values())
    for t in range(3):
        assert losses[f"loss_box_giou_stage{t}"].item() == 0 and losses[f"loss_mask_stage{t}"].item() == 0
        assert losses[f"loss_classifier_stage{t}"].item() > 0
