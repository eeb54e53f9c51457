"""Seeding the global random state that torchvision's and timm's transforms draw from.

``torchvision.transforms.v2`` draws from torch's default CPU generator; timm's transforms also from
Python's ``random`` and numpy's legacy global state, and timm's ``Mixup`` from numpy's. None of them
takes a generator, so a reproducible call runs inside :func:`seeded`, which seeds those three from one
integer and afterwards puts back what they held before. The surrounding code (a training loop whose
RNG state is checkpointed, DataLoader workers) is then unaffected by how many draws a call made.
"""

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator, ``random`` and numpy's global state seeded by ``seed``.

    The three states are restored on exit (also on an exception). CUDA generators are neither seeded
    nor touched: the data transforms run on the CPU.
    """
    torch_state = torch.default_generator.get_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002  (the legacy global state is what timm draws from)
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


def seed_from(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from ``generator`` (to run a block under :func:`seeded`)."""
    return int(torch.randint(0, 2**63 - 1, (), generator=generator))
