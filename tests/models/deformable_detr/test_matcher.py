"""HungarianMatcher: official matchings on the golden outputs, optimality, batching, empty targets, bad boxes."""

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deformvision.models.deformable_detr.matcher import HungarianMatcher

FIXTURES = Path(__file__).parents[2] / "fixtures" / "detr"
VARIANTS = ["multi_scale", "box_refine", "two_stage"]


@pytest.fixture(scope="module", params=VARIANTS)
def golden(request) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"{request.param}.safetensors")


def golden_targets(golden: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"labels": golden[f"targets.{b}.labels"], "boxes": golden[f"targets.{b}.boxes"]} for b in range(2)]


def golden_outputs(golden: dict[str, torch.Tensor], prefix: str, tag: str) -> dict[str, torch.Tensor]:
    return {"pred_logits": golden[f"{prefix}pred_logits.{tag}"], "pred_boxes": golden[f"{prefix}pred_boxes.{tag}"]}


def assert_matches(indices: list[tuple[torch.Tensor, torch.Tensor]], golden: dict[str, torch.Tensor], key: str):
    assert len(indices) == 2
    for b, (src, tgt) in enumerate(indices):
        assert src.dtype == tgt.dtype == torch.int64
        assert torch.equal(src, golden[f"{key}.{b}.src"]), (key, b)
        assert torch.equal(tgt, golden[f"{key}.{b}.tgt"]), (key, b)


def random_problem(sizes: list[int], num_queries: int = 7, num_classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(len(sizes), num_queries, num_classes, generator=generator, dtype=torch.float64),
        "pred_boxes": torch.rand(len(sizes), num_queries, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.2,
    }
    targets = [
        {
            "labels": torch.randint(num_classes, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.2,
        }
        for n in sizes
    ]
    return outputs, targets


@pytest.mark.parametrize("tag", ["f64", "f32"])
def test_golden_matchings(golden, tag):
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)
    targets = golden_targets(golden)
    assert_matches(matcher(golden_outputs(golden, "", tag), targets), golden, "match")
    assert_matches(matcher(golden_outputs(golden, "aux.0.", tag), targets), golden, "match_aux.0")
    if "enc_outputs.pred_logits.f64" in golden:
        binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
        assert_matches(matcher(golden_outputs(golden, "enc_outputs.", tag), binary), golden, "match_enc")


def test_cost_matrix_entry_by_hand():
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=3)
    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    target_boxes = torch.tensor([[0.45, 0.6, 0.3, 0.3]], dtype=torch.float64)
    cost = matcher.cost_matrix(logits, boxes, torch.tensor([1]), target_boxes)
    p = torch.sigmoid(torch.tensor(-1.2, dtype=torch.float64))
    focal = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p**2 * -torch.log(1 - p + 1e-8)
    l1 = 0.05 + 0.1 + 0.1 + 0.1
    # xyxy (0.4, 0.3, 0.6, 0.7) vs (0.3, 0.45, 0.6, 0.75): intersection 0.2 x 0.25, union 0.08 + 0.09 - 0.05,
    # hull 0.3 x 0.45
    giou = 0.05 / 0.12 - (0.135 - 0.12) / 0.135
    torch.testing.assert_close(cost, (5 * l1 + 2 * focal - 3 * giou).reshape(1, 1))


def test_assignment_is_optimal():
    outputs, targets = random_problem([3], num_queries=5, seed=1)
    matcher = HungarianMatcher()
    ((src, tgt),) = matcher(outputs, targets)
    cost = matcher.cost_matrix(
        outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]["labels"], targets[0]["boxes"]
    )
    best = min(sum(cost[q, j].item() for j, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
    assert cost[src, tgt].sum().item() == pytest.approx(best, abs=1e-12)
    assert torch.equal(src, src.sort().values)
    assert sorted(tgt.tolist()) == [0, 1, 2]


def test_batched_equals_per_image():
    sizes = [2, 5, 0, 1]
    outputs, targets = random_problem(sizes, seed=2)
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    for b in range(len(sizes)):
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, [targets[b]])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
        assert len(batched[b][0]) == sizes[b]


def test_empty_targets():
    matcher = HungarianMatcher()
    outputs, targets = random_problem([0, 3], seed=3)
    indices = matcher(outputs, targets)
    assert indices[0][0].shape == indices[0][1].shape == (0,)
    assert indices[0][0].dtype == indices[0][1].dtype == torch.int64
    assert len(indices[1][0]) == 3
    outputs, targets = random_problem([0, 0], seed=3)
    for src, tgt in matcher(outputs, targets):
        assert src.shape == tgt.shape == (0,) and src.dtype == tgt.dtype == torch.int64


def test_more_targets_than_queries():
    outputs, targets = random_problem([6], num_queries=4, seed=4)
    ((src, tgt),) = HungarianMatcher()(outputs, targets)
    assert src.tolist() == [0, 1, 2, 3]
    assert len(set(tgt.tolist())) == 4


def test_no_grad_and_float32_targets_cast():
    outputs, targets = random_problem([2, 3], seed=5)
    outputs = {k: v.float().requires_grad_() for k, v in outputs.items()}
    indices = HungarianMatcher()(outputs, targets)  # float64 targets with float32 predictions
    assert all(not src.requires_grad for src, _ in indices)
    assert outputs["pred_logits"].grad is None


def test_invalid_arguments():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    outputs, targets = random_problem([1, 1], seed=6)
    with pytest.raises(ValueError, match="batch"):
        HungarianMatcher()(outputs, targets[:1])


@pytest.mark.parametrize(
    ("where", "box"),
    [("target", [0.5, 0.5, -0.1, 0.2]), ("target", [0.5, 0.5, 0.2, -0.1]), ("pred", [0.5, 0.5, float("nan"), 0.2])],
)
def test_degenerate_boxes_raise(where, box):
    """torchvision's generalized_box_iou does not check its boxes; the matcher does, naming the culprit."""
    outputs, targets = random_problem([2], seed=7)
    if where == "target":
        targets[0]["boxes"][1] = torch.tensor(box, dtype=torch.float64)
    else:
        outputs["pred_boxes"][0, 3] = torch.tensor(box, dtype=torch.float64)
    name = "target boxes" if where == "target" else "pred_boxes"
    with pytest.raises(ValueError, match=f"{name} has 1 degenerate box"):
        HungarianMatcher()(outputs, targets)
