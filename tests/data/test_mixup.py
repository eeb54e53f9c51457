"""Mixup/CutMix: soft targets sum to 1 and the image mixing matches the target weights."""

import pytest
import torch

from deformvision.data import Mixup, smooth_one_hot


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(batch: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(1, batch + 1, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, size, size)
    return images.contiguous(), torch.arange(batch)  # image i is constant i + 1, label i


def test_smooth_one_hot() -> None:
    targets = smooth_one_hot(torch.tensor([0, 2]), 4, smoothing=0.1)
    torch.testing.assert_close(targets[0], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    torch.testing.assert_close(targets.sum(1), torch.ones(2))
    assert torch.equal(smooth_one_hot(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))


@pytest.mark.parametrize("seed", range(5))
def test_mixup_matches_lambda(seed: int) -> None:
    images, labels = _batch()
    mixed, targets = Mixup(cutmix_alpha=0.0, label_smoothing=0.0, num_classes=4)(images, labels, generator=_g(seed))
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    lam = targets[0, 0].item()  # labels are distinct, so the own-label weight is lambda
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    assert torch.equal(images, _batch()[0])  # the input is not modified


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_area_matches_lambda(seed: int) -> None:
    images, labels = _batch()
    mixed, targets = Mixup(mixup_alpha=0.0, label_smoothing=0.0, num_classes=4)(images, labels, generator=_g(seed))
    lam = targets[0, 0].item()
    pasted = mixed != images  # pixels taken from the mirrored image
    assert torch.equal(mixed[pasted], images.flip(0)[pasted])
    assert pasted[0, 0].float().mean().item() == pytest.approx(1 - lam)
    assert torch.equal(pasted[0], pasted[1])  # one box for the whole batch
    rows, cols = pasted[0, 0].any(1).sum(), pasted[0, 0].any(0).sum()
    assert pasted[0, 0].sum() == rows * cols  # a rectangle


def test_default_mixing_with_smoothing() -> None:
    images, labels = _batch(batch=5)
    mixup = Mixup(num_classes=7)
    out, targets = mixup(images, labels, generator=_g(0))
    again, targets_again = mixup(images, labels, generator=_g(0))
    assert torch.equal(out, again) and torch.equal(targets, targets_again)
    torch.testing.assert_close(targets.sum(1), torch.ones(5))
    assert targets.min() >= 0.1 / 7 - 1e-6  # smoothing mass everywhere
    assert out.shape == images.shape and targets.shape == (5, 7)


def test_prob_zero_only_smooths() -> None:
    images, labels = _batch()
    out, targets = Mixup(prob=0.0, num_classes=4)(images, labels, generator=_g(0))
    assert torch.equal(out, images)
    torch.testing.assert_close(targets, smooth_one_hot(labels, 4, 0.1))
