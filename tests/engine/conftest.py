"""Fixtures of the engine tests."""

from pathlib import Path

import pytest
import torch
from engine_utils import make_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder of 32x32 images: 8 per class in ``train``, 4 in ``val``."""
    return make_image_folder(tmp_path_factory.mktemp("image_folder"))


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Trainers set the thread count and deterministic mode process-wide: undo it after each test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
