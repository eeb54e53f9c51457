"""Atomic checkpoint files, the checkpoint manager and RNG state capture."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deformvision._atomic import atomic_write
from deformvision.engine import checkpoint as ckpt
from deformvision.engine.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    find_checkpoint,
    load_training_state,
    restore_rng_state,
    save_weights,
)


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((4, 3), value), "layer.bias": torch.arange(4.0) + value}


def test_atomic_write_crash_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(_weights(1.0), path)

    def crash(tmp):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert torch.equal(load_file(path)["layer.weight"], torch.full((4, 3), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left


def test_crash_while_saving_a_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(_weights(1.0), {"epoch": 0, "global_step": 5}, step=5)

    def half_save(tensors, filename, metadata=None):  # safetensors dies after writing part of the file
        with open(filename, "wb") as f:
            f.write(b"\x00" * 16)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", half_save)
    with pytest.raises(OSError, match="disk full"):
        manager.save(_weights(2.0), {"epoch": 0, "global_step": 6}, step=6)
    weights, state = find_checkpoint(tmp_path)
    assert weights.name == "step_000000005.safetensors"
    assert torch.equal(load_file(weights)["layer.bias"], torch.arange(4.0) + 1.0)
    assert load_training_state(state)["global_step"] == 5
    assert not list(tmp_path.rglob(".*tmp-*"))

    monkeypatch.undo()
    (tmp_path / "checkpoints" / ".step_000000007.safetensors.tmp-999").write_bytes(b"left by a SIGKILL")
    manager.save(_weights(3.0), {"epoch": 1, "global_step": 7}, step=7)
    assert not list(tmp_path.rglob(".*tmp-*"))  # stale temporary files are cleaned by the next save


def test_manager_keeps_the_newest_and_points_to_the_last(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 10):
        manager.save(_weights(float(step)), {"epoch": step, "epoch_complete": False, "global_step": step}, step)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"step_{s:09d}.{ext}" for s in (2, 10) for ext in ("safetensors", "state.pt")]
    record = json.loads((tmp_path / "last_checkpoint.json").read_text())
    assert record["global_step"] == 10 and record["epoch"] == 10
    weights, state = find_checkpoint(tmp_path / "last_checkpoint.json")
    assert weights == tmp_path / "checkpoints" / "step_000000010.safetensors"
    assert find_checkpoint(tmp_path / "checkpoints") is None  # a folder without a pointer
    with pytest.raises(FileNotFoundError):
        find_checkpoint(tmp_path / "nowhere")


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    torch.save({"rng": capture_rng_state()}, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    restore_rng_state(load_training_state(tmp_path / "state.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])  # noqa: NPY002
    assert random.random() == expected[2]


def test_a_step_saved_again_gets_new_names_so_the_pointed_pair_is_never_overwritten(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(_weights(1.0), {"epoch": 0, "global_step": 4}, step=4)
    first = find_checkpoint(tmp_path)

    def no_state(obj, f):  # the second save dies after its weights are written
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", no_state)
    with pytest.raises(OSError, match="disk full"):
        manager.save(_weights(2.0), {"epoch": 0, "global_step": 4}, step=4)
    assert find_checkpoint(tmp_path) == first  # the pointer's pair is whole and unchanged
    assert torch.equal(load_file(first[0])["layer.weight"], torch.full((4, 3), 1.0))
    monkeypatch.undo()
    manager.save(_weights(3.0), {"epoch": 0, "global_step": 4}, step=4)
    weights, state = find_checkpoint(tmp_path)
    assert weights.name.startswith("step_000000004-") and load_training_state(state)["global_step"] == 4
    assert torch.equal(load_file(weights)["layer.weight"], torch.full((4, 3), 3.0))
    assert not first[0].exists()  # pruned once the new pair is complete (keep=1)
