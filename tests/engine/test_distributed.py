"""Two processes under torchrun (gloo, CPU) train like one process with the same global batch.

The data order is split between processes so that the two local batches of a step together are the
single process's batch, each sample's augmentation is seeded by ``(seed, epoch, index)`` whatever
process loads it, and DDP averages the gradients of the two halves: with a model free of BatchNorm
(DAT has LayerNorm only), no Mixup (it mixes within a local batch) and no stochastic depth (it draws
from each process's RNG), the runs differ only by floating-point summation order.
"""

import json
import shutil
import subprocess

import pytest
import torch
from engine_utils import PYTHON, subprocess_env, tiny_config, write_config
from safetensors.torch import load_file

from deformvision.engine.trainer import FINAL_WEIGHTS


def _run(command: list[str]) -> str:
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _train(config_path, processes: int, *extra: str) -> str:
    launcher = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return _run([*launcher, "-m", "deformvision.cli", "train", str(config_path), *extra])


def _records(run_dir, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_two_processes_match_one_and_resume(image_folder, tmp_path):
    single_dir, ddp_dir, resumed_dir = tmp_path / "single", tmp_path / "ddp", tmp_path / "resumed"
    raw = tiny_config(
        image_folder,
        single_dir,
        data={"batch_size": 8},
        schedule={"epochs": 2},
        checkpoint={"every_steps": 1, "keep": 100},
    )
    config_path = write_config(tmp_path / "config.yaml", raw)
    _run([PYTHON, "-m", "deformvision.cli", "train", str(config_path)])

    # 2 processes x 4 = the same global batch of 8
    output = _train(config_path, 2, "--output-dir", str(ddp_dir), "--batch-size", "4")
    assert "2 process(es)" in output and "global batch 8" in output

    single, ddp = _records(single_dir, "train"), _records(ddp_dir, "train")
    assert [r["global_step"] for r in single] == [r["global_step"] for r in ddp] == list(range(1, 7))
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=1e-5, abs=1e-6)
    assert [r["lr"] for r in ddp] == pytest.approx([r["lr"] for r in single], rel=1e-12)
    single_epochs, ddp_epochs = _records(single_dir, "epoch"), _records(ddp_dir, "epoch")
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "val_count"):
        assert [r[key] for r in ddp_epochs] == pytest.approx([r[key] for r in single_epochs], rel=1e-5), key
    expected, got = load_file(single_dir / FINAL_WEIGHTS), load_file(ddp_dir / FINAL_WEIGHTS)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)

    # the 2-process checkpoint of step 4 (mid-epoch 2) resumes, under torchrun again, to the same weights
    (resumed_dir / "checkpoints").mkdir(parents=True)
    for path in (ddp_dir / "checkpoints").glob("step_000000004.*"):
        shutil.copy(path, resumed_dir / "checkpoints" / path.name)
    record = json.loads((ddp_dir / "last_checkpoint.json").read_text())
    record.update(weights="checkpoints/step_000000004.safetensors", state="checkpoints/step_000000004.state.pt")
    (resumed_dir / "last_checkpoint.json").write_text(json.dumps(record))
    output = _train(config_path, 2, "--output-dir", str(resumed_dir), "--batch-size", "4", "--resume")
    assert "resumed from step_000000004" in output
    resumed = _records(resumed_dir, "train")
    assert [(r["global_step"], r["loss"]) for r in resumed] == [(r["global_step"], r["loss"]) for r in ddp[4:]]
    expected, got = load_file(ddp_dir / FINAL_WEIGHTS), load_file(resumed_dir / FINAL_WEIGHTS)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
