"""SegmentationMetric: a hand-computed case, ignored pixels, NumPy bincount property, errors, two processes."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from deformvision.engine.segmentation_eval import SegmentationMetric

# 4 classes; two ignored pixels (255) whose predictions (0 and 3) must count nowhere.
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 255], [3, 3, 255, 1]]])
PRED = torch.tensor([[[0, 1, 1, 1], [0, 2, 1, 0], [2, 3, 3, 1]]])
# (target, pred) pairs of the 10 counted pixels, row by row:
#   (0,0) (0,1) (1,1) (1,1) | (0,0) (2,2) (2,1) | (3,2) (3,3) (1,1)
EXPECTED_CONFUSION = [
    [2, 1, 0, 0],  # target 0: 2 right, 1 predicted as 1
    [0, 3, 0, 0],  # target 1: 3 right
    [0, 1, 1, 0],  # target 2: 1 right, 1 predicted as 1
    [0, 0, 1, 1],  # target 3: 1 right, 1 predicted as 2
]
# IoU = TP / (row + column - TP): rows 3, 3, 2, 2; columns 2, 5, 2, 1
EXPECTED_IOU = [2 / (3 + 2 - 2), 3 / (3 + 5 - 3), 1 / (2 + 2 - 1), 1 / (2 + 1 - 1)]  # 2/3, 3/5, 1/3, 1/2
EXPECTED_ACC = [2 / 3, 3 / 3, 1 / 2, 1 / 2]


def test_hand_computed_case():
    metric = SegmentationMetric(4)
    metric.update(PRED, TARGET)
    assert metric.confusion.tolist() == EXPECTED_CONFUSION
    result = metric.compute()
    assert result["IoU"] == pytest.approx(EXPECTED_IOU)
    assert result["Acc"] == pytest.approx(EXPECTED_ACC)
    assert result["mIoU"] == pytest.approx(0.525)  # (2/3 + 3/5 + 1/3 + 1/2) / 4
    assert result["aAcc"] == pytest.approx(0.7)  # 7 right of 10 counted
    assert result["mAcc"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 1 / 2) / 4)


def test_absent_class_is_nan_and_left_out_of_the_means():
    metric = SegmentationMetric(5)  # class 4 is in neither pred nor target
    metric.update(PRED, TARGET)
    result = metric.compute()
    assert math.isnan(result["IoU"][4]) and math.isnan(result["Acc"][4])
    assert result["IoU"][:4] == pytest.approx(EXPECTED_IOU)
    assert result["mIoU"] == pytest.approx(0.525)
    assert result["mAcc"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 1 / 2) / 4)


def test_class_only_predicted_has_iou_zero_and_counts_in_miou():
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 0]]]))  # class 2 predicted, never a target
    result = metric.compute()
    assert result["IoU"][0] == pytest.approx(0.5) and result["IoU"][2] == 0.0 and math.isnan(result["IoU"][1])
    assert result["mIoU"] == pytest.approx(0.25)
    assert result["Acc"][0] == pytest.approx(0.5) and math.isnan(result["Acc"][2])
    assert result["mAcc"] == pytest.approx(0.5)


def test_ignored_pixels_count_nowhere():
    wrong_where_ignored = PRED.clone()
    wrong_where_ignored[TARGET == 255] = 2  # other predictions on ignored pixels: nothing changes
    a, b = SegmentationMetric(4), SegmentationMetric(4)
    a.update(PRED, TARGET)
    b.update(wrong_where_ignored, TARGET)
    assert torch.equal(a.confusion, b.confusion) and a.confusion.sum() == 10

    only_ignored = SegmentationMetric(4)
    only_ignored.update(PRED, torch.full_like(TARGET, 255))
    result = only_ignored.compute()
    assert only_ignored.confusion.sum() == 0
    assert math.isnan(result["mIoU"]) and math.isnan(result["aAcc"]) and math.isnan(result["mAcc"])


def test_logits_accumulation_and_reset():
    logits = torch.nn.functional.one_hot(PRED, 4).permute(0, 3, 1, 2).float()  # B, K, H, W
    metric = SegmentationMetric(4)
    metric.update(logits, TARGET)
    metric.update(PRED, TARGET)
    assert metric.confusion.tolist() == (2 * torch.tensor(EXPECTED_CONFUSION)).tolist()
    assert metric.compute()["IoU"] == pytest.approx(EXPECTED_IOU)  # ratios unchanged by doubling
    metric.reset()
    assert metric.confusion.sum() == 0


def test_errors_name_the_bad_values():
    metric = SegmentationMetric(4)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\) or ignore_index 255; found 4, 7"):
        metric.update(PRED, torch.tensor([[[0, 4, 7, 1], [0, 2, 2, 255], [3, 3, 255, 1]]]))
    with pytest.raises(ValueError, match=r"pred must hold class indices in \[0, 4\); found -1"):
        metric.update(torch.full_like(PRED, -1), TARGET)
    with pytest.raises(ValueError, match="pred and target must both be"):
        metric.update(PRED[:, :2], TARGET)
    with pytest.raises(ValueError, match="target must hold integer class indices, got dtype torch.float32"):
        metric.update(PRED, TARGET.float())
    with pytest.raises(ValueError, match="logits must have num_classes = 4 channels"):
        metric.update(torch.zeros(1, 3, 3, 4), TARGET)
    with pytest.raises(ValueError, match="ignore_index must not be a class index"):
        SegmentationMetric(300)
    assert metric.confusion.sum() == 0  # failed updates count nothing


def _numpy_metrics(pred: np.ndarray, target: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    valid = target != 255
    confusion = np.bincount(k * target[valid] + pred[valid], minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(float)
    rows, cols = confusion.sum(1), confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (rows + cols - tp)  # 0/0 -> NaN
        acc = tp / rows
    return confusion, {"IoU": iou, "Acc": acc, "aAcc": tp.sum() / valid.sum() if valid.any() else np.nan}


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 6),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31 - 1),
    ignore_fraction=st.sampled_from([0.0, 0.3, 1.0]),
    splits=st.integers(1, 3),
)
def test_matches_numpy_bincount(k, shape, seed, ignore_fraction, splits):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, shape)
    target[rng.random(shape) < ignore_fraction] = 255
    pred = rng.integers(0, k, shape)
    expected_confusion, expected = _numpy_metrics(pred, target, k)

    metric = SegmentationMetric(k)
    for part in np.array_split(np.arange(shape[0]), splits):  # accumulating batches = one batch
        if len(part):
            metric.update(torch.from_numpy(pred[part]), torch.from_numpy(target[part]))
    np.testing.assert_array_equal(metric.confusion.numpy(), expected_confusion)
    result = metric.compute()
    np.testing.assert_allclose(result["IoU"], expected["IoU"], equal_nan=True)
    np.testing.assert_allclose(result["Acc"], expected["Acc"], equal_nan=True)
    np.testing.assert_allclose(result["aAcc"], expected["aAcc"], equal_nan=True)
    for mean_key, key in (("mIoU", "IoU"), ("mAcc", "Acc")):
        defined = expected[key][~np.isnan(expected[key])]
        if defined.size:
            assert result[mean_key] == pytest.approx(defined.mean())
            assert 0.0 <= result[mean_key] <= 1.0
        else:
            assert math.isnan(result[mean_key])


def _two_process_worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = SegmentationMetric(4)
        if rank == 0:
            metric.update(PRED[:, :2], TARGET[:, :2])  # rows 0-1 here, row 2 on the other process
        else:
            metric.update(PRED[:, 2:], TARGET[:, 2:])
        result = metric.compute()
        torch.save({"confusion": metric.reduced_confusion(), "own": metric.confusion, **result}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_sum_their_matrices(tmp_path):
    mp.spawn(_two_process_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    for rank in range(2):
        result = torch.load(tmp_path / f"out.{rank}")
        assert result["confusion"].tolist() == EXPECTED_CONFUSION  # the whole image on every process
        assert result["own"].sum() == (7 if rank == 0 else 3)  # compute() left each local matrix alone
        assert result["IoU"] == pytest.approx(EXPECTED_IOU)
        assert result["mIoU"] == pytest.approx(0.525)
