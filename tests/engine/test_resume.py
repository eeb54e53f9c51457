"""Resuming from any checkpoint repeats the uninterrupted run exactly (in-process, deterministic CPU)."""

import json
import shutil

import pytest
import torch
from engine_utils import tiny_config
from safetensors.torch import load_file

from deformvision.engine import Trainer
from deformvision.engine.config import config_from_dict
from deformvision.engine.trainer import FINAL_EMA_WEIGHTS, FINAL_WEIGHTS


def _log(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["type"] == kind]


def _point_at(run_dir, step: int) -> None:
    """Make checkpoint ``step`` the newest, as if the run had died right after writing it."""
    stem = f"checkpoints/step_{step:09d}"
    for path in (run_dir / "checkpoints").iterdir():
        if int(path.name.split(".")[0].removeprefix("step_")) > step:
            path.unlink()
    record = {"weights": f"{stem}.safetensors", "state": f"{stem}.state.pt", "global_step": step}
    (run_dir / "last_checkpoint.json").write_text(json.dumps(record))
    for name in (FINAL_WEIGHTS, FINAL_EMA_WEIGHTS):
        (run_dir / name).unlink()


@pytest.fixture(scope="module")
def reference_run(image_folder, tmp_path_factory):
    """Two epochs of 6 steps with every source of randomness on, a checkpoint after every step."""
    run_dir = tmp_path_factory.mktemp("reference")
    raw = tiny_config(
        image_folder,
        run_dir,
        aug={"mixup": 0.8, "cutmix": 1.0},
        ema={"enabled": True, "decay": 0.9},
        checkpoint={"every_steps": 1, "keep": 100},
    )
    raw["model"]["kwargs"]["drop_path_rate"] = 0.2
    trainer = Trainer(config_from_dict(raw))
    assert trainer.steps_per_epoch == 6
    metrics = trainer.fit()
    return raw, run_dir, metrics


@pytest.mark.parametrize("step", [3, 6, 8])  # mid-epoch 1, end of epoch 1, mid-epoch 2
def test_resume_reproduces_the_uninterrupted_run(reference_run, tmp_path, step):
    raw, reference_dir, reference_metrics = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    _point_at(run_dir, step)
    metrics = Trainer(config_from_dict({**raw, "output_dir": str(run_dir), "resume": "auto"})).fit()

    for name in (FINAL_WEIGHTS, FINAL_EMA_WEIGHTS):
        expected, got = load_file(reference_dir / name), load_file(run_dir / name)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    assert metrics == reference_metrics
    # the resumed run logged the same losses for the steps it repeated
    reference_losses = {r["global_step"]: r["loss"] for r in _log(reference_dir)}
    resumed = [r for r in _log(run_dir) if r["time"] > _log(reference_dir)[-1]["time"]]
    assert [r["global_step"] for r in resumed] == list(range(step + 1, 13))
    assert all(r["loss"] == reference_losses[r["global_step"]] for r in resumed)
    reference_epochs = {r["epoch"]: r for r in _log(reference_dir, "epoch")}
    for record in _log(run_dir, "epoch")[len(reference_epochs) :]:  # epochs finished after resuming, same logs
        expected = reference_epochs[record["epoch"]]
        assert {k: v for k, v in record.items() if k not in ("time", "epoch_time_s")} == {
            k: v for k, v in expected.items() if k not in ("time", "epoch_time_s")
        }


def test_resume_mid_epoch_with_another_batch_size_is_refused(reference_run, tmp_path):
    raw, reference_dir, _ = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    _point_at(run_dir, 3)
    raw = {**raw, "output_dir": str(run_dir), "resume": str(run_dir), "data": {**raw["data"], "batch_size": 2}}
    with pytest.raises(ValueError, match="changed: data.batch_size: 4 -> 2"):  # the run's config.yaml says 4
        Trainer(config_from_dict(raw))
    (run_dir / "config.yaml").unlink()  # checkpoints alone: the sampler state saved with them refuses it
    with pytest.raises(ValueError, match="cannot resume mid-epoch"):
        Trainer(config_from_dict(raw))
