"""Box utilities: format conversions, pairwise IoU / GIoU against hand-computed values, inverse sigmoid."""

import itertools

import pytest
import torch

from deformvision.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
)


def random_xyxy(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    cxcy = torch.rand(n, 2, generator=generator, dtype=dtype)
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 0.5
    return box_cxcywh_to_xyxy(torch.cat((cxcy, wh), dim=1))


def reference_giou(a: list[float], b: list[float]) -> float:
    """GIoU of two xyxy boxes from the definition, in Python floats."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_conversions_known_values():
    cxcywh = torch.tensor([[0.5, 0.4, 0.2, 0.6], [3.0, 2.0, 4.0, 2.0]])
    xyxy = torch.tensor([[0.4, 0.1, 0.6, 0.7], [1.0, 1.0, 5.0, 3.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_area(xyxy), torch.tensor([0.12, 8.0]))


def test_conversion_round_trip_any_leading_shape():
    generator = torch.Generator().manual_seed(0)
    cxcywh = torch.rand(2, 7, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh, rtol=0, atol=1e-15)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy, rtol=0, atol=1e-15)
    assert box_cxcywh_to_xyxy(cxcywh).shape == (2, 7, 4)


def test_box_iou_hand_computed():
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 7.0]])
    iou, union = box_iou(boxes1, boxes2)
    # [0,2]^2 vs [1,3]^2: intersection 1, union 4 + 4 - 1 = 7. [0,1]^2 inside [0,2]^2: 1 / 4.
    expected_iou = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 1 / 4, 0.0]])
    expected_union = torch.tensor([[7.0, 4.0, 6.0], [5.0, 4.0, 3.0]])
    torch.testing.assert_close(iou, expected_iou)
    torch.testing.assert_close(union, expected_union)


def test_giou_identical_boxes_is_one():
    boxes = random_xyxy(6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.diag(generalized_box_iou(boxes, boxes)), torch.ones(6, dtype=torch.float64))


def test_giou_disjoint_known_values():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    # side by side: hull 3, union 2 -> -(3 - 2) / 3; diagonal: hull 9, union 2 -> -7 / 9.
    giou = generalized_box_iou(a, b)
    torch.testing.assert_close(giou, torch.tensor([[-1 / 3, -7 / 9]]))
    assert (giou < 0).all()
    torch.testing.assert_close(generalized_box_iou(b, a), giou.T)


def test_giou_matches_definition_pairwise():
    generator = torch.Generator().manual_seed(2)
    boxes1, boxes2 = random_xyxy(5, generator), random_xyxy(4, generator)
    giou = generalized_box_iou(boxes1, boxes2)
    assert giou.shape == (5, 4)
    for i, j in itertools.product(range(5), range(4)):
        assert giou[i, j].item() == pytest.approx(reference_giou(boxes1[i].tolist(), boxes2[j].tolist()), abs=1e-14)
    assert (giou > -1).all() and (giou <= 1).all()


def test_giou_rejects_degenerate_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(good, torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 0.4, 1.0]]))
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(torch.tensor([[0.0, 0.3, 1.0, 0.2]]), good)
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(torch.tensor([[0.0, float("nan"), 1.0, 1.0]]), good)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        generalized_box_iou(good[0], good)


def test_giou_zero_area_boxes_are_finite_with_finite_gradients():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    line = torch.tensor([[0.5, 0.5, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    giou = generalized_box_iou(point, torch.cat((point.detach(), line)))
    assert torch.isfinite(giou).all()
    assert giou[0, 0] == 0  # identical points: empty union and hull
    giou.sum().backward()
    assert torch.isfinite(point.grad).all()
    assert generalized_box_iou(torch.empty(0, 4), line).shape == (0, 2)


def test_giou_gradcheck():
    generator = torch.Generator().manual_seed(3)
    boxes1 = random_xyxy(3, generator).requires_grad_()
    boxes2 = random_xyxy(2, generator).requires_grad_()
    assert torch.autograd.gradcheck(generalized_box_iou, (boxes1, boxes2))


def test_inverse_sigmoid():
    x = torch.tensor([0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    torch.testing.assert_close(inverse_sigmoid(x), torch.logit(x))
    torch.testing.assert_close(torch.sigmoid(inverse_sigmoid(x)), x)
    # clamped to [0, 1], then both sides to eps: finite at and beyond the ends
    ends = inverse_sigmoid(torch.tensor([-3.0, 0.0, 1.0, 2.0], dtype=torch.float64))
    limit = torch.log(torch.tensor(1e5, dtype=torch.float64))
    torch.testing.assert_close(ends, torch.stack((-limit, -limit, limit, limit)))
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.0]), eps=1e-3), torch.log(torch.tensor([1e-3])))
