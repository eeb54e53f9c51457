"""Instance segmentation in the engine: COCO masks in, torchvision-style detector, COCO bbox + segm out."""

import json

import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from deformvision.data import build_digits_instance
from deformvision.engine import Trainer, build_data, build_loader
from deformvision.engine.config import config_from_dict
from deformvision.engine.data import ShardSampler
from deformvision.engine.instance import InstanceTask

NARROW_DAT = {
    "img_size": 128,
    "dims": [16, 32, 64, 128],
    "depths": [1, 1, 1, 1],
    "heads": [1, 2, 4, 8],
    "groups": [-1, -1, 2, 4],
    "window_sizes": [8, 8, 8, 4],
    "stage_spec": [["L"], ["S"], ["D"], ["D"]],
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    return str(build_digits_instance(tmp_path_factory.mktemp("instance") / "set", num_train=8, num_val=4))


def raw_config(root: str, output_dir) -> dict:
    return {
        "model": {
            "name": "mask_rcnn_dat_tiny",
            "kwargs": {
                "backbone_kwargs": NARROW_DAT,
                "drop_path_rate": 0.0,
                "min_size": 128,
                "max_size": 128,
                "fpn_channels": 32,
                "representation_size": 64,
                "mask_channels": 16,
                "anchor_sizes": [8, 16, 32, 64, 128],
            },
        },
        "data": {
            "task": "instance",
            "format": "coco",
            "root": root,
            "train_split": "train/images",
            "val_split": "val/images",
            "train_annotations": "annotations/train.json",
            "val_annotations": "annotations/val.json",
            "batch_size": 4,
            "num_workers": 0,
        },
        "aug": {"hflip": 0.0, "crop": None},
        "optim": {"lr": 1e-4},
        "schedule": {"epochs": 1, "warmup_epochs": 0},
        "log": {"progress": False},
        "output_dir": str(output_dir),
        "device": "cpu",
        "threads": 1,
    }


class Oracle(nn.Module):
    """Returns each image's ground truth (looked up by size order) as detections with score 1."""

    def __init__(self, truths: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.truths = truths
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for _ in images:
            truth = self.truths[self.calls]
            self.calls += 1
            n = len(truth["labels"])
            outputs.append(
                {
                    "boxes": truth["boxes"],
                    "labels": truth["labels"],
                    "scores": torch.ones(n),
                    "masks": truth["masks"][:, None].float(),
                }
            )
        return outputs


def test_evaluation_scores_the_ground_truth_as_perfect(digits, tmp_path):
    config = config_from_dict(raw_config(digits, tmp_path))
    data = build_data(config, train=False)
    truths = [data.val[i][1] for i in range(len(data.val))]
    assert all(t["masks"].dtype == torch.uint8 and t["masks"].shape[0] == len(t["boxes"]) for t in truths)
    loader = build_loader(data.val, ShardSampler(len(data.val)), config, train=False, device=torch.device("cpu"))
    task = InstanceTask(data.val_annotations, data.label_to_category_id, masks=True)
    metrics = task.evaluate(Oracle(truths), loader, torch.device("cpu"))
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    # the RLE written for the evaluation decodes back to the ground-truth masks
    entries = task.predict(Oracle(truths), loader, torch.device("cpu"))
    first = [e for e in entries if e["image_id"] == int(truths[0]["image_id"])]
    decoded = torch.from_numpy(mask_utils.decode([e["segmentation"] for e in first])).permute(2, 0, 1)
    assert torch.equal(decoded, truths[0]["masks"])


def test_training_loop_runs_and_evaluates(digits, tmp_path):
    trainer = Trainer(config_from_dict(raw_config(digits, tmp_path / "run")))
    assert isinstance(trainer.task, InstanceTask) and trainer.task.iou_types == ("bbox", "segm")
    metrics = trainer.fit()
    assert {"bbox_AP", "segm_AP50"} <= set(metrics) and all(-1.0 <= v <= 1.0 for v in metrics.values())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"loss_classifier", "loss_mask", "loss_objectness"} <= set(log[0])
