"""PostProcess: top-k over queries x classes, labels and query indices, absolute xyxy boxes."""

import pytest
import torch

from deformvision.models.deformable_detr.postprocess import PostProcess


def hand_built() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two images, 3 queries, 2 classes; scores chosen so the ranking is easy to read off."""
    scores = torch.tensor(
        [
            [[0.10, 0.90], [0.80, 0.05], [0.30, 0.70]],  # image 0
            [[0.60, 0.20], [0.15, 0.25], [0.95, 0.40]],  # image 1
        ],
        dtype=torch.float64,
    )
    boxes = torch.tensor(
        [
            [[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5], [0.1, 0.2, 0.2, 0.2]],
            [[0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.2, 0.2], [0.6, 0.4, 0.4, 0.2]],
        ],
        dtype=torch.float64,
    )
    target_sizes = torch.tensor([[100, 200], [50, 80]])  # (height, width)
    return {"pred_logits": torch.logit(scores), "pred_boxes": boxes}, target_sizes


def test_hand_built_example():
    outputs, target_sizes = hand_built()
    results = PostProcess(num_select=3)(outputs, target_sizes)
    assert len(results) == 2
    first, second = results

    # image 0: 0.90 (query 0, class 1), 0.80 (query 1, class 0), 0.70 (query 2, class 1)
    torch.testing.assert_close(first["scores"], torch.tensor([0.90, 0.80, 0.70], dtype=torch.float64))
    assert first["labels"].tolist() == [1, 0, 1]
    assert first["labels"].dtype == torch.int64
    # cxcywh -> xyxy, times (w, h, w, h) = (200, 100, 200, 100)
    expected = torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 100.0, 100.0], [0.0, 10.0, 40.0, 30.0]])
    torch.testing.assert_close(first["boxes"], expected.double())

    # image 1: 0.95 (query 2, class 0), 0.60 (query 0, class 0), 0.40 (query 2, class 1): a query may repeat
    torch.testing.assert_close(second["scores"], torch.tensor([0.95, 0.60, 0.40], dtype=torch.float64))
    assert second["labels"].tolist() == [0, 0, 1]
    query2 = [32.0, 15.0, 64.0, 25.0]  # (0.4, 0.3, 0.8, 0.5) * (80, 50, 80, 50)
    torch.testing.assert_close(second["boxes"], torch.tensor([query2, [0.0, 0.0, 80.0, 50.0], query2]).double())


def test_default_top_100_and_brute_force():
    generator = torch.Generator().manual_seed(0)
    batch, num_queries, num_classes = 2, 40, 7
    outputs = {
        "pred_logits": torch.randn(batch, num_queries, num_classes, generator=generator),
        "pred_boxes": torch.rand(batch, num_queries, 4, generator=generator) * 0.5 + 0.25,
    }
    sizes = [(480, 640), (333, 500)]
    results = PostProcess()(outputs, sizes)  # a list of (h, w) works too
    for b, result in enumerate(results):
        assert result["scores"].shape == result["labels"].shape == (100,) and result["boxes"].shape == (100, 4)
        assert (result["scores"][:-1] >= result["scores"][1:]).all()
        ranked = sorted(
            (
                (torch.sigmoid(outputs["pred_logits"][b, q, c]).item(), q, c)
                for q in range(num_queries)
                for c in range(num_classes)
            ),
            reverse=True,
        )[:100]
        assert result["labels"].tolist() == [c for _, _, c in ranked]
        height, width = sizes[b]
        for k, (score, q, _) in enumerate(ranked):
            cx, cy, w, h = outputs["pred_boxes"][b, q].tolist()
            expected = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            assert result["scores"][k].item() == pytest.approx(score)
            assert result["boxes"][k].tolist() == pytest.approx(expected, rel=1e-5)


def test_fewer_candidates_than_num_select():
    outputs, target_sizes = hand_built()
    results = PostProcess()(outputs, target_sizes)
    assert all(r["scores"].shape == (6,) for r in results)


def test_target_sizes_are_validated():
    outputs, target_sizes = hand_built()
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()(outputs, target_sizes[:1])
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()(outputs, torch.tensor([100, 200]))
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()(outputs, torch.ones(2, 4))
    with pytest.raises(ValueError, match="num_select"):
        PostProcess(num_select=0)
