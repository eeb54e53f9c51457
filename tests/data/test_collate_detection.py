"""collate_detection pads to the largest image and marks the padding."""

import pytest
import torch

from deformvision.data import collate_detection


def test_pads_and_masks() -> None:
    a, b = torch.rand(3, 4, 6), torch.rand(3, 5, 3)
    targets = [{"labels": torch.tensor([1])}, {"labels": torch.tensor([2, 3])}]
    images, mask, out_targets = collate_detection([(a, targets[0]), (b, targets[1])])
    assert images.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6) and mask.dtype == torch.bool
    assert torch.equal(images[0, :, :4, :6], a) and torch.equal(images[1, :, :5, :3], b)
    assert images[0, :, 4:].abs().sum() == 0 and images[1, :, :, 3:].abs().sum() == 0
    assert (~mask[0]).sum() == 24 and mask[0, 4:].all() and not mask[0, :4].any()
    assert (~mask[1]).sum() == 15 and mask[1, :, 3:].all() and not mask[1, :, :3].any()
    assert out_targets == targets


def test_empty_batch() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])
