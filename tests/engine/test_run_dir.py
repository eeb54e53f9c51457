"""A run directory's files are never lost silently: refused overwrites, validated resumes, damaged files."""

import json
from pathlib import Path

import pytest
import torch
from engine_utils import make_image_folder, tiny_config

from deformvision.engine import Trainer
from deformvision.engine.checkpoint import CheckpointManager, find_checkpoint, load_training_state
from deformvision.engine.config import config_from_dict
from deformvision.engine.run_dir import changed_keys, run_weights


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[dict, Path]:
    """A 1-epoch run with a checkpoint: (its raw config, its directory)."""
    root = tmp_path_factory.mktemp("run_dir")
    raw = tiny_config(make_image_folder(root / "data", per_class=4), root / "run", schedule={"epochs": 1})
    Trainer(config_from_dict(raw)).fit()
    return raw, root / "run"


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_new_run_over_an_earlier_one_is_refused(finished_run):
    raw, run_dir = finished_run
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="already holds a run .*config.yaml.*pass --resume .* --overwrite"):
        Trainer(config_from_dict(raw))
    assert snapshot(run_dir) == before


def test_a_failing_setup_writes_nothing(finished_run):
    raw, run_dir = finished_run
    before = snapshot(run_dir)
    broken = {**raw, "overwrite": True, "data": {**raw["data"], "num_classes": 2}}  # the data has 3 classes
    with pytest.raises(ValueError, match="data.num_classes=2 but the dataset has 3 labels"):
        Trainer(config_from_dict(broken))
    assert snapshot(run_dir) == before


def test_resume_with_a_changed_schedule_is_refused_with_the_changed_keys(finished_run):
    raw, run_dir = finished_run
    before = snapshot(run_dir)
    changed = {**raw, "resume": "auto", "optim": {**raw["optim"], "lr": 5e-3}, "threads": 2}
    with pytest.raises(ValueError, match=r"changed: optim.lr: 0.001 -> 0.005\. Resume with the same settings"):
        Trainer(config_from_dict(changed))
    assert snapshot(run_dir) == before
    Trainer(config_from_dict({**raw, "resume": "auto", "threads": 2}))  # threads may change


def test_overwrite_replaces_the_earlier_run(finished_run, tmp_path):
    raw, run_dir = finished_run
    copy = tmp_path / "copy"
    for name, data in snapshot(run_dir).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / "checkpoints" / "step_000000099.safetensors").write_bytes(b"stale")
    trainer = Trainer(config_from_dict({**raw, "output_dir": str(copy), "overwrite": True}))
    assert sorted(p.name for p in copy.iterdir()) == ["config.yaml"]  # the earlier run's files are gone
    trainer.fit()
    assert not (copy / "checkpoints" / "step_000000099.safetensors").exists()
    with pytest.raises(ValueError, match="either --resume .* or --overwrite .*, not both"):
        Trainer(config_from_dict({**raw, "output_dir": str(copy), "overwrite": True, "resume": "auto"}))


def test_damaged_pointer_and_state_name_the_file(finished_run, tmp_path):
    _, run_dir = finished_run
    weights, state = find_checkpoint(run_dir)
    pointer = tmp_path / "last_checkpoint.json"
    pointer.write_text('{"weights": "x.safetensors"')  # truncated
    with pytest.raises(ValueError, match=f"checkpoint pointer {pointer} is damaged"):
        find_checkpoint(pointer)
    pointer.write_text(json.dumps({"weights": "x.safetensors"}))
    with pytest.raises(ValueError, match="is damaged .*KeyError"):
        find_checkpoint(pointer)
    truncated = tmp_path / "step.state.pt"
    truncated.write_bytes(state.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"cannot read training state {truncated}"):
        load_training_state(truncated)


def test_changed_keys_ignores_only_the_safe_ones():
    saved = {"optim": {"lr": 1.0}, "log": {"interval": 1}, "data": {"root": "a", "batch_size": 4}, "seed": 0}
    current = {"optim": {"lr": 1.0}, "log": {"interval": 5}, "data": {"root": "b", "batch_size": 8}, "seed": 1}
    assert changed_keys(saved, current) == ["data.batch_size: 4 -> 8", "seed: 0 -> 1"]


def test_run_weights_are_the_final_ones_else_the_newest_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no model_final.safetensors and no checkpoint"):
        run_weights(tmp_path)
    CheckpointManager(tmp_path).save({"w": torch.zeros(1)}, {"epoch": 0}, step=3)
    assert run_weights(tmp_path) == tmp_path / "checkpoints" / "step_000000003.safetensors"
    (tmp_path / "model_final.safetensors").write_bytes(b"")
    assert run_weights(tmp_path) == tmp_path / "model_final.safetensors"
