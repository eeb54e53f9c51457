"""Random draws for the data pipeline, all from one optional :class:`torch.Generator`.

Every random transform takes ``generator`` in its call. ``None`` means torch's default generator,
which :class:`torch.utils.data.DataLoader` seeds in each worker with ``base_seed + worker_id``
(``base_seed`` drawn from the main process's generator, or from the loader's ``generator=``), so a
run is reproducible after ``torch.manual_seed(seed)`` whatever the number of workers. Pass a
generator to make a single call reproducible on its own (as the tests do).
"""

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    """A float drawn uniformly from ``[low, high)``."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def log_uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    """A float whose logarithm is uniform in ``[log(low), log(high))`` (``0 < low <= high``)."""
    return math.exp(uniform(math.log(low), math.log(high), generator))


def randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer drawn uniformly from ``low..high``, both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def coin(p: float, generator: torch.Generator | None) -> bool:
    """``True`` with probability ``p``."""
    return torch.rand((), generator=generator).item() < p


def normal(mean: float, std: float, generator: torch.Generator | None) -> float:
    """A float drawn from ``N(mean, std^2)``."""
    return mean + std * torch.randn((), generator=generator).item()


def choice(items: Sequence[T], generator: torch.Generator | None) -> T:
    """One element of ``items``, each equally likely."""
    return items[randint(0, len(items) - 1, generator)]


def beta(alpha: float, generator: torch.Generator | None) -> float:
    """A draw from the symmetric ``Beta(alpha, alpha)`` distribution (``alpha > 0``).

    torch's Beta sampler takes no generator, so a seed is drawn from ``generator`` and numpy samples.
    """
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
