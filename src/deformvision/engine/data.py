"""Deterministic data order and augmentation, independent of the number of processes and workers.

- :class:`EpochSampler` (training): a permutation seeded by ``(seed, epoch)``, cut to whole global
  batches and dealt out to the processes; it can start after the batches a resumed run already did.
- :class:`ShardSampler` (evaluation): every sample exactly once over all processes, no padding.
- :class:`SeededTransform`: each sample's augmentation runs with the global RNGs (torch, numpy,
  ``random``, which torchvision's and timm's transforms draw from) seeded by ``(seed, epoch, index)``,
  so a sample is augmented the same whichever process or worker loads it, and a resumed run repeats it.
"""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from deformvision.data._random import seeded


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy's ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def make_generator(*keys: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with :func:`derive_seed` of ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))


class EpochSampler(Sampler[int]):
    """Training order: per epoch a random permutation shared by all processes, split between them.

    The permutation of ``range(size)`` is drawn from a generator seeded by ``(seed, epoch)`` (in order
    if not ``shuffle``) and truncated to ``num_batches * batch_size * world_size`` samples (whole
    global batches, like ``drop_last``). Process ``rank`` gets every ``world_size``-th sample starting
    at ``rank``, so its ``k``-th batch and the other processes' ``k``-th batches together hold the same
    samples as the ``k``-th batch of one process with the global batch size.

    Call :meth:`set_epoch` before iterating; ``skip_batches`` starts after that many batches of this
    process (resuming mid-epoch).
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        self.global_batch = batch_size * world_size
        if size < self.global_batch:
            raise ValueError(
                f"the training set has {size} samples, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.num_batches = size // self.global_batch
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if not 0 <= skip_batches <= self.num_batches:
            raise ValueError(f"skip_batches must be in 0..{self.num_batches}, got {skip_batches}")
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=make_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.size)
        mine = order[: self.num_batches * self.global_batch][self.rank :: self.world_size]
        return iter(mine[self.skip_batches * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.num_batches - self.skip_batches) * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation order: samples ``rank, rank + world_size, ...`` in order (shards may differ by one)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededTransform(Dataset):
    """``dataset[i]`` passed through ``transform`` with the global RNGs seeded by ``(seed, epoch, i)``.

    ``dataset`` returns un-augmented samples: ``(image, label)`` (``detection=False``: the transform
    gets the image) or ``(image, target)`` (``detection=True``: the transform gets both). The transform
    runs under :func:`~deformvision.data._random.seeded` of :func:`derive_seed` ``(seed, epoch, i)``:
    torch's CPU generator, numpy's global state and ``random`` are seeded for it and restored after it,
    so the caller's RNG streams (checkpointed by the trainer) are untouched. Set the epoch with
    :meth:`set_epoch` before creating the loader's iterator (workers copy the dataset then; so loaders
    must not use ``persistent_workers``).
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., Any], seed: int = 0, detection: bool = False) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.detection = detection
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, target = self.dataset[index]
        with seeded(derive_seed(self.seed, self.epoch, index)):
            if self.detection:
                return self.transform(image, target)
            return self.transform(image), target
