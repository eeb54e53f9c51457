"""SetCriterion: official losses on the golden outputs, weight dict, focal loss, empty targets, num_boxes."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from deformvision.models.deformable_detr import criterion as criterion_module
from deformvision.models.deformable_detr.criterion import SetCriterion, sigmoid_focal_loss, weight_dict, weighted_loss
from deformvision.models.deformable_detr.matcher import HungarianMatcher

FIXTURES = Path(__file__).parents[2] / "fixtures" / "detr"
VARIANTS = ["multi_scale", "box_refine", "two_stage"]


@pytest.fixture(scope="module", params=VARIANTS)
def golden(request) -> tuple[str, dict[str, torch.Tensor], dict]:
    path = FIXTURES / f"{request.param}.safetensors"
    with safe_open(path, "pt") as f:
        config = json.loads(f.metadata()["criterion"])
    return request.param, load_file(path), config


def golden_outputs(tensors: dict[str, torch.Tensor], tag: str) -> dict:
    def head(prefix: str) -> dict[str, torch.Tensor]:
        return {
            "pred_logits": tensors[f"{prefix}pred_logits.{tag}"],
            "pred_boxes": tensors[f"{prefix}pred_boxes.{tag}"],
        }

    outputs = head("")
    outputs["aux_outputs"] = [head("aux.0.")]
    if f"enc_outputs.pred_logits.{tag}" in tensors:
        outputs["enc_outputs"] = head("enc_outputs.")
    return outputs


def golden_targets(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"labels": tensors[f"targets.{b}.labels"], "boxes": tensors[f"targets.{b}.boxes"]} for b in range(2)]


def build_criterion(num_classes: int = 5, two_stage: bool = True) -> SetCriterion:
    return SetCriterion(num_classes, HungarianMatcher(2, 5, 2), weight_dict(2, two_stage=two_stage))


def random_problem(sizes: list[int], num_queries: int = 6, num_classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def head() -> dict[str, torch.Tensor]:
        logits = torch.randn(len(sizes), num_queries, num_classes, generator=generator, dtype=torch.float64)
        boxes = torch.rand(len(sizes), num_queries, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.2
        return {"pred_logits": logits.requires_grad_(), "pred_boxes": boxes.requires_grad_()}

    outputs = head()
    outputs["aux_outputs"] = [head()]
    outputs["enc_outputs"] = head()
    targets = [
        {
            "labels": torch.randint(num_classes, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.2,
        }
        for n in sizes
    ]
    return outputs, targets


@pytest.mark.parametrize("tag, rtol", [("f64", 1e-6), ("f32", 1e-5)])
def test_golden_losses(golden, tag, rtol):
    variant, tensors, config = golden
    assert config["num_classes"] == 5 and config["focal_alpha"] == 0.25
    criterion = SetCriterion(config["num_classes"], HungarianMatcher(2, 5, 2), config["weight_dict"])
    losses = criterion(golden_outputs(tensors, tag), golden_targets(tensors))
    expected = {k[len("loss.") :]: v for k, v in tensors.items() if k.startswith("loss.")}
    assert sorted(losses) == sorted(expected)
    for name, value in expected.items():
        assert losses[name].dim() == 0
        torch.testing.assert_close(losses[name].double(), value, rtol=rtol, atol=0, msg=f"{variant} {name}")
    torch.testing.assert_close(criterion.total(losses).double(), tensors["total_loss"], rtol=rtol, atol=0)
    if tag == "f64":
        assert losses["loss_ce"].dtype == torch.float64


def test_weight_dict_is_official(golden):
    variant, _, config = golden
    official = config["weight_dict"]  # the official script adds the _enc weights in every variant
    assert weight_dict(2, two_stage=True) == official
    assert weight_dict(2, two_stage=False) == {k: v for k, v in official.items() if not k.endswith("_enc")}
    six = weight_dict(6, two_stage=True, ce=1, bbox=3, giou=4)
    assert len(six) == 3 * 7 and six["loss_bbox_4"] == 3 and six["loss_ce_enc"] == 1 and "loss_giou_5" not in six


def test_weighted_loss_skips_unweighted_terms():
    losses = {"loss_ce": torch.tensor(1.0), "class_error": torch.tensor(50.0), "loss_bbox_0": torch.tensor(2.0)}
    assert weighted_loss(losses, {"loss_ce": 2.0, "loss_bbox_0": 5.0, "loss_giou": 2.0}).item() == 12.0
    with pytest.raises(ValueError, match="no loss"):
        weighted_loss({"class_error": torch.tensor(1.0)}, {"loss_ce": 2.0})


def test_sigmoid_focal_loss_by_hand():
    logits = torch.tensor([[[0.3, -2.0], [1.5, 0.0]]], dtype=torch.float64)  # B=1, Q=2, K=2
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    pos = -0.25 * (1 - p) ** 2 * torch.log(p)
    neg = -0.75 * p**2 * torch.log(1 - p)
    elementwise = torch.where(targets == 1, pos, neg)
    expected = elementwise.sum() / 2 / 3.0  # mean over queries, sum, / num_boxes
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, num_boxes=3.0), expected)
    no_alpha = torch.where(targets == 1, pos / 0.25, neg / 0.75).sum() / 2
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 1.0, alpha=-1), no_alpha)


def test_losses_by_hand():
    """One image, one target, one query: every term from its definition."""
    logits = torch.tensor([[[0.5, -1.0, 2.0]]], dtype=torch.float64)
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4]]], dtype=torch.float64)
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.4, 0.2]], dtype=torch.float64)}
    losses = SetCriterion(3, HungarianMatcher(), {})({"pred_logits": logits, "pred_boxes": boxes}, [target])
    p = torch.sigmoid(logits[0, 0])
    onehot = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    focal = torch.where(onehot == 1, -0.25 * (1 - p) ** 2 * torch.log(p), -0.75 * p**2 * torch.log(1 - p))
    torch.testing.assert_close(losses["loss_ce"], focal.sum())
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.3, dtype=torch.float64))
    # xyxy (0.3, 0.3, 0.7, 0.7) vs (0.4, 0.4, 0.8, 0.6): intersection 0.06, union 0.18, hull 0.2
    giou = 0.06 / 0.18 - (0.2 - 0.18) / 0.2
    torch.testing.assert_close(losses["loss_giou"], torch.tensor(1 - giou, dtype=torch.float64))
    assert losses["class_error"].item() == 100.0  # argmax is class 2, target 1
    # the argmax is the last class, which DETR's "no object" convention does not count: |0 - 1|
    assert losses["cardinality_error"].item() == 1.0


def test_empty_targets_in_one_image():
    outputs, targets = random_problem([0, 3], seed=1)
    criterion = build_criterion(num_classes=3)
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v).all() for v in losses.values())
    total = criterion.total(losses)
    total.backward()
    for head in (outputs, outputs["aux_outputs"][0], outputs["enc_outputs"]):
        assert torch.isfinite(head["pred_logits"].grad).all()
        assert head["pred_logits"].grad[0].abs().sum() > 0  # unmatched image still pushes scores down
        assert head["pred_boxes"].grad[0].abs().sum() == 0  # ... but has no box loss


def test_all_targets_empty():
    outputs, targets = random_problem([0, 0], seed=2)
    criterion = build_criterion(num_classes=3)
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v).all() for v in losses.values())
    for suffix in ("", "_0", "_enc"):
        assert losses[f"loss_bbox{suffix}"].item() == 0 and losses[f"loss_giou{suffix}"].item() == 0
    # num_boxes clamps at 1: loss_ce is the plain sum of the focal loss against all-zero targets
    logits = outputs["pred_logits"]
    p = torch.sigmoid(logits)
    torch.testing.assert_close(losses["loss_ce"], (-0.75 * p**2 * torch.log(1 - p)).sum())
    assert losses["class_error"].item() == 100.0  # official accuracy() of nothing is 0
    criterion.total(losses).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_float32_outputs_with_float64_targets():
    outputs, targets = random_problem([2, 1], seed=3)
    outputs32 = {
        "pred_logits": outputs["pred_logits"].detach().float(),
        "pred_boxes": outputs["pred_boxes"].detach().float(),
    }
    losses32 = build_criterion(num_classes=3)(outputs32, targets)
    losses64 = build_criterion(num_classes=3)({k: outputs[k].detach() for k in outputs32}, targets)
    assert losses32["loss_giou"].dtype == torch.float32
    for name in losses64:
        torch.testing.assert_close(losses32[name].double(), losses64[name].double(), rtol=1e-5, atol=1e-6)


def test_gradcheck_with_fixed_matching():
    outputs, targets = random_problem([2, 1], num_queries=3, seed=4)
    criterion = SetCriterion(3, HungarianMatcher(), weight_dict(1, two_stage=False), losses=("labels", "boxes"))

    def total(logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return criterion.total(criterion({"pred_logits": logits, "pred_boxes": boxes}, targets))

    assert torch.autograd.gradcheck(total, (outputs["pred_logits"], outputs["pred_boxes"]))


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    class FakeDist:
        """Pretend to be rank 0 of 4 processes holding 9 target boxes in all."""

        @staticmethod
        def is_available() -> bool:
            return True

        @staticmethod
        def is_initialized() -> bool:
            return True

        @staticmethod
        def all_reduce(tensor: torch.Tensor) -> None:
            tensor.add_(9 - tensor)

        @staticmethod
        def get_world_size() -> int:
            return 4

    outputs, targets = random_problem([2, 1], seed=5)
    outputs = {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
    local = build_criterion(num_classes=3)(outputs, targets)  # num_boxes 3
    monkeypatch.setattr(criterion_module, "dist", FakeDist)
    distributed = build_criterion(num_classes=3)(outputs, targets)  # num_boxes 9 / 4
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(distributed[name], local[name] * 3 / 2.25)
    torch.testing.assert_close(distributed["cardinality_error"], local["cardinality_error"])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(3, HungarianMatcher(), {}, losses=("labels", "masks"))
    outputs, targets = random_problem([1], seed=6)
    with pytest.raises(ValueError, match="classes"):
        SetCriterion(4, HungarianMatcher(), {})(outputs, targets)


def test_giou_loss_rejects_degenerate_boxes():
    """The box loss checks what it gives torchvision's generalized_box_iou (which does not), with given indices."""
    outputs, targets = random_problem([2], seed=8)
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    criterion = SetCriterion(3, HungarianMatcher(), {})
    assert torch.isfinite(criterion.loss_boxes(outputs, targets, indices, 2.0)["loss_giou"])
    targets[0]["boxes"][1, 2] = -0.05  # negative width
    with pytest.raises(ValueError, match="target boxes has 1 degenerate box"):
        criterion.loss_boxes(outputs, targets, indices, 2.0)
