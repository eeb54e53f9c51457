"""Data order and augmentation seeding: independent of the number of processes, workers and resumption."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deformvision.data import ImageFolder, build_classification_transforms, build_detection_transforms
from deformvision.engine.data import EpochSampler, SeededTransform, ShardSampler, derive_seed


def test_epoch_sampler_splits_each_global_batch_between_processes():
    single = EpochSampler(50, batch_size=12, seed=3)
    ranks = [EpochSampler(50, batch_size=4, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        order = list(single)
        assert len(order) == len(single) == 48 and len(set(order)) == 48  # 4 whole global batches, no repeats
        per_rank = [list(s) for s in ranks]
        for step in range(4):
            together = sorted(i for indices in per_rank for i in indices[4 * step : 4 * step + 4])
            assert together == sorted(order[12 * step : 12 * step + 12])
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first  # a new order every epoch
    single.set_epoch(0)
    assert list(single) == first  # ... that depends only on (seed, epoch)


def test_epoch_sampler_skips_done_batches_and_checks_sizes():
    sampler = EpochSampler(20, batch_size=4, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip_batches=3)
    assert list(sampler) == full[12:] and len(sampler) == 8
    with pytest.raises(ValueError, match="skip_batches"):
        sampler.set_epoch(2, skip_batches=6)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochSampler(7, batch_size=4, world_size=2)
    assert list(EpochSampler(6, 2, shuffle=False)) == list(range(6))


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_seeded_transform_is_independent_of_order_and_workers(image_folder):
    transform = build_classification_transforms(True, 32, rand_augment=(2, 9), reprob=0.5)
    dataset = SeededTransform(ImageFolder(image_folder / "train"), transform, seed=5)
    dataset.set_epoch(1)
    forward = [dataset[i][0] for i in range(6)]
    backward = [dataset[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    loader = DataLoader(dataset, batch_size=3, sampler=range(6), num_workers=2)
    assert torch.equal(torch.cat([images for images, _ in loader]), torch.stack(forward))
    dataset.set_epoch(2)
    assert not torch.equal(dataset[0][0], forward[0])  # another epoch, another augmentation
    assert derive_seed(5, 1, 0) != derive_seed(5, 0, 1) and 0 <= derive_seed(1, 2, 3) < 2**63


def test_seeded_transform_leaves_the_global_rngs_alone(image_folder):
    """The trainer checkpoints the global RNGs: loading a sample in the main process must not move them."""
    transform = build_classification_transforms(True, 32, rand_augment=(2, 9), reprob=1.0)
    dataset = SeededTransform(ImageFolder(image_folder / "train"), transform, seed=0)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)  # noqa: NPY002
    expected = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)  # noqa: NPY002
    for i in range(4):
        dataset[i]
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]  # noqa: NPY002


class _OneScene(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        pixels = np.zeros((60, 100, 3), np.uint8)
        pixels[20:50, 10:30] = 255
        return Image.fromarray(pixels), {"boxes": torch.tensor([[10.0, 20.0, 30.0, 50.0]]), "labels": torch.tensor([1])}


def test_seeded_detection_transform_depends_only_on_seed_epoch_and_index():
    transform = build_detection_transforms(
        True, scales=(32, 48, 64, 80), max_size=140, crop=(24, 56), crop_resize=(50, 60, 70)
    )
    dataset = SeededTransform(_OneScene(), transform, seed=1, detection=True)
    first = [dataset[i] for i in range(4)]
    again = [dataset[i] for i in reversed(range(4))][::-1]
    for (x, t), (y, u) in zip(first, again, strict=True):
        assert torch.equal(x, y) and torch.equal(t["boxes"], u["boxes"])
    assert len({tuple(x.shape) for x, _ in first}) > 1  # the same image, augmented differently per index
