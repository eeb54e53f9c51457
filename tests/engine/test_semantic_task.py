"""Semantic segmentation in the engine: data, training loop and mIoU evaluation on the built-in digits maps."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deformvision.data import build_digits_semantic
from deformvision.engine import Trainer, build_data, build_loader, build_task
from deformvision.engine.config import config_from_dict
from deformvision.engine.data import ShardSampler

NARROW_DAT = {
    "dims": [16, 32, 64, 128],
    "depths": [1, 1, 2, 2],
    "heads": [1, 2, 4, 8],
    "groups": [-1, -1, 2, 4],
    "window_sizes": [8, 8, 8, 4],
    "stage_spec": [["L"], ["S"], ["L", "D"], ["L", "D"]],
    "img_size": 128,
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    return str(build_digits_semantic(tmp_path_factory.mktemp("semantic") / "set", num_train=8, num_val=4))


def raw_config(root: str, output_dir, **aug) -> dict:
    return {
        "model": {"name": "semantic_fpn_dat_tiny", "kwargs": {"backbone_kwargs": NARROW_DAT, "drop_path_rate": 0.0}},
        "data": {
            "task": "semantic",
            "format": "segmentation_folder",
            "num_classes": 11,
            "root": root,
            "batch_size": 4,
            "eval_batch_size": 1,
            "num_workers": 0,
        },
        "aug": {"seg_scale": [256, 128], "seg_crop": [128, 128], "hflip": 0.0, **aug},
        "optim": {"lr": 1e-3},
        "schedule": {"epochs": 1, "warmup_epochs": 0},
        "log": {"progress": False},
        "output_dir": str(output_dir),
        "device": "cpu",
        "threads": 1,
    }


class Constant(nn.Module):
    """Predicts class ``label`` everywhere."""

    def __init__(self, label: int, num_classes: int = 11) -> None:
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], self.num_classes, *images.shape[-2:])
        logits[:, self.label] = 1.0
        return logits


@pytest.mark.parametrize("inference", ["whole", "slide"])
def test_evaluation_counts_pixels_of_the_original_label_maps(digits, tmp_path, inference):
    """Images are evaluated at half size (seg_scale 128x64); the logits go back to the 128x128 label maps."""
    config = config_from_dict(
        raw_config(
            digits, tmp_path, seg_scale=[128, 64], seg_crop=[48, 48], seg_inference=inference, slide_stride=[32, 32]
        )
    )
    data = build_data(config, train=False)
    assert data.val[0][0].shape == (3, 64, 64) and data.val[0][1].shape == (128, 128)
    loader = build_loader(data.val, ShardSampler(len(data.val)), config, train=False, device=torch.device("cpu"))
    task = build_task(config, data, Constant(0))
    labels = np.stack([np.array(Image.open(p)) for p in sorted(Path(digits, "val", "labels").glob("*.png"))])
    background = (labels == 0).mean()
    present = len(np.unique(labels))  # classes in the targets: IoU 0 for all but the background
    metrics = task.evaluate(Constant(0), loader, torch.device("cpu"))
    assert metrics["aAcc"] == pytest.approx(background)
    assert metrics["mIoU"] == pytest.approx(background / present)
    assert metrics["mAcc"] == pytest.approx(1.0 / present)


def test_training_loop_runs_and_evaluates(digits, tmp_path):
    trainer = Trainer(config_from_dict(raw_config(digits, tmp_path / "run")))
    metrics = trainer.fit()
    assert set(metrics) == {"mIoU", "aAcc", "mAcc"} and 0.0 <= metrics["mIoU"] <= 1.0
    assert (tmp_path / "run" / "model_final.safetensors").is_file()
