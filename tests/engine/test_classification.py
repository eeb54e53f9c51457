"""The classification loss with timm's Mixup: seeded by the step's generator, consistent soft targets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_utils import tiny_config
from timm.data import Mixup
from torch import nn

from deformvision.engine import build_data, build_model, build_task
from deformvision.engine.classification import ClassificationTask
from deformvision.engine.config import config_from_dict


class _Recorder(nn.Module):
    """Logits from the mean of each image, and the images it was given."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(1, num_classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return self.head(images.mean((1, 2, 3))[:, None])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    return images, torch.arange(4)  # image i is constant i + 1, label i


def _loss(task: ClassificationTask, model: nn.Module, seed: int) -> torch.Tensor:
    return task.train_loss(model, _batch(), torch.device("cpu"), torch.Generator().manual_seed(seed))[0]


def test_mixup_is_seeded_by_the_generator_and_matches_its_soft_targets() -> None:
    torch.manual_seed(0)
    model = _Recorder(4)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, mode="batch", label_smoothing=0.1, num_classes=4)
    task = ClassificationTask(4, mixup)
    np.random.seed(7)  # noqa: NPY002
    expected_numpy = np.random.rand()  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    first, again, other = _loss(task, model, 0), _loss(task, model, 0), _loss(task, model, 1)
    assert np.random.rand() == expected_numpy  # noqa: NPY002  (the global state is restored)
    assert first == again and first != other

    images = _batch()[0]
    mixed = model.seen[0]
    lam = ((mixed[0, 0, 0, 0] - images[3, 0, 0, 0]) / (images[0, 0, 0, 0] - images[3, 0, 0, 0])).item()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    smooth = torch.full((4, 4), 0.1 / 4) + 0.9 * torch.eye(4)
    targets = lam * smooth + (1 - lam) * smooth.flip(0)
    logits = model.head(mixed.mean((1, 2, 3))[:, None])
    expected = -(targets * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(first, expected)


def test_mixup_needs_an_even_batch(image_folder, tmp_path) -> None:
    raw = tiny_config(image_folder, tmp_path, data={"batch_size": 3}, aug={"mixup": 0.8})
    config = config_from_dict(raw)
    data = build_data(config)
    with pytest.raises(ValueError, match="data.batch_size must be even, got 3"):
        build_task(config, data, build_model(config, data.num_classes))
