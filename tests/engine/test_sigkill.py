"""A training process killed with SIGKILL mid-epoch resumes to the same final weights (subprocesses)."""

import json
import signal
import subprocess
import time

import torch
from engine_utils import PYTHON, subprocess_env, tiny_config, write_config
from safetensors.torch import load_file

from deformvision.engine.trainer import FINAL_WEIGHTS

KILL_AFTER_STEP = 3  # kill once a checkpoint of this global step (or later) exists
TOTAL_STEPS = 3 * 6  # 3 epochs of 6 steps


def _train(config_path, *extra):
    command = [PYTHON, "-m", "deformvision.cli", "train", str(config_path), *extra]
    return subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _newest_step(run_dir) -> int:
    pointer = run_dir / "last_checkpoint.json"
    try:
        return json.loads(pointer.read_text())["global_step"]
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet (the rename is atomic: never partial)
        return -1


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(image_folder, tmp_path):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    raw = tiny_config(
        image_folder,
        killed_dir,
        schedule={"epochs": 3},
        checkpoint={"every_steps": 1, "keep": 2},
        aug={"mixup": 0.8, "cutmix": 1.0},
    )
    raw["model"]["kwargs"]["drop_path_rate"] = 0.2
    config_path = write_config(tmp_path / "config.yaml", raw)

    reference = _train(config_path, "--output-dir", str(reference_dir))  # the uninterrupted run, alongside
    victim = _train(config_path)
    deadline = time.monotonic() + 120
    while _newest_step(killed_dir) < KILL_AFTER_STEP and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    output, _ = victim.communicate()
    killed_at = _newest_step(killed_dir)
    assert victim.returncode == -signal.SIGKILL, output
    assert not (killed_dir / FINAL_WEIGHTS).exists() and KILL_AFTER_STEP <= killed_at < TOTAL_STEPS, killed_at

    resumed = _train(config_path, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resumed from step_" in output
    assert reference.wait(timeout=300) == 0, reference.communicate()[0]

    expected, got = load_file(reference_dir / FINAL_WEIGHTS), load_file(killed_dir / FINAL_WEIGHTS)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bitwise
