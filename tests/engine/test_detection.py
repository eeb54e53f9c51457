"""The detection engine end to end: Deformable DETR (small transformer) on a tiny digits detection set."""

import json

import pytest
import torch

from deformvision.data import build_digits_detection, collate_detection
from deformvision.engine import Trainer, build_data, build_model, build_task, evaluate
from deformvision.engine.coco_eval import STAT_NAMES
from deformvision.engine.config import config_from_dict

SMALL_DETR = {
    "num_queries": 10,
    "d_model": 32,
    "num_heads": 2,
    "dim_feedforward": 32,
    "enc_layers": 1,
    "dec_layers": 2,
    "enc_n_points": 2,
    "dec_n_points": 2,
}


@pytest.fixture(scope="module")
def detection_config(tmp_path_factory):
    root = build_digits_detection(
        tmp_path_factory.mktemp("digits") / "set",
        canvas=64,
        num_train=4,
        num_val=3,
        object_size=(10, 28),
        max_objects=3,
    )
    run_dir = tmp_path_factory.mktemp("run")
    return {
        "model": {"name": "deformable_detr_r50", "kwargs": dict(SMALL_DETR)},
        "data": {
            "task": "detection",
            "format": "coco",
            "root": str(root),
            "train_split": "train/images",
            "val_split": "val/images",
            "train_annotations": "annotations/train.json",
            "val_annotations": "annotations/val.json",
            "batch_size": 2,
            "num_workers": 0,
        },
        "aug": {"scales": [64, 80, 96], "max_size": 160, "crop": [48, 64], "crop_resize": [64, 80], "val_size": 80},
        "optim": {
            "lr": 2e-4,
            "backbone_lr": 2e-5,
            "lr_mults": {"sampling_offsets": 0.1, "reference_points": 0.1},
            "weight_decay": 1e-4,
            "no_decay_1d": False,
            "clip_grad": 0.1,
        },
        "schedule": {"name": "step", "epochs": 1, "lr_drop": [1], "warmup_epochs": 0},
        "log": {"interval": 1, "progress": False},
        "output_dir": str(run_dir),
        "device": "cpu",
        "threads": 1,
    }


def test_train_one_epoch_and_evaluate(detection_config, capsys):
    trainer = Trainer(config_from_dict(detection_config))
    assert trainer.data.num_classes == 10 and trainer.steps_per_epoch == 2
    assert {g["role"] for g in trainer.optimizer.param_groups} == {
        "backbone",
        "base",
        "sampling_offsets",
        "reference_points",
    }
    metrics = trainer.fit()
    assert list(metrics) == list(STAT_NAMES) and all(-1 <= v <= 1 for v in metrics.values())
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out

    records = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert [r["global_step"] for r in steps] == [1, 2]
    assert {"loss", "loss_ce", "loss_bbox", "loss_giou", "class_error", "grad_norm", "lr", "eta_s"} <= set(steps[0])
    assert records[-1]["type"] == "epoch" and records[-1]["val_AP"] == metrics["AP"]

    # the eval entry point on the run directory gives the same numbers
    assert evaluate(config_from_dict(detection_config), trainer.run_dir) == pytest.approx(metrics)


def test_loss_weights_cover_every_decoder_layer(detection_config):
    config = config_from_dict(detection_config)
    data = build_data(config, train=False)
    model = build_model(config, data.num_classes)
    task = build_task(config, data, model)
    weights = task.criterion.weight_dict
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_0"} <= set(weights)
    assert "loss_ce_1" not in weights and weights["loss_bbox_0"] == 5.0

    batch = collate_detection([data.val[0], data.val[1]])
    loss, logs = task.train_loss(model, batch, torch.device("cpu"), torch.Generator())
    loss.backward()
    assert torch.isfinite(loss) and logs["loss"] == loss.detach()
    assert model.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad is not None
