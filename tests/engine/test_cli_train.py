"""The ``train`` and ``eval`` subcommands."""

import json
import subprocess

import pytest
from engine_utils import CONFIGS, PYTHON, TINY_DAT, subprocess_env, tiny_config, write_config

from deformvision.cli import main


def test_train_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--set KEY=VALUE",
        "--epochs",
        "--resume",
        "--output-dir",
        "--device",
        "--deterministic",
        "--no-progress",
        "torchrun --nproc_per_node",
        "train dat_digits",
        "unknown key",
    ):
        assert text in out, text


def test_eval_help(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--model" in out and "top-1" in out and "dat_tiny" in out


def test_print_config_applies_overrides_then_flags(capsys):
    argv = [
        "train",
        str(CONFIGS / "dat_digits.yaml"),
        "--set",
        "optim.lr=1e-2",
        "schedule.epochs=9",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--resume",
        "--no-progress",
        "--print-config",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "epochs: 4" in out and "batch_size: 8" in out
    assert "resume: auto" in out and "progress: false" in out


def test_unknown_key_is_a_clear_error(capsys):
    assert main(["train", str(CONFIGS / "dat_digits.yaml"), "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "deformvision train: error: unknown config key(s) optim.lrr; valid keys of optim: name, lr" in err
    assert main(["train", "missing.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["eval", "--model", "dat_tiny"]) == 2
    assert "no weights" in capsys.readouterr().err


def test_train_on_builtin_digits_then_eval(tmp_path, capsys):
    """One short epoch of `deformvision train` on the built-in digits set, in a subprocess; then `eval`."""
    run_dir = tmp_path / "run"
    command = [
        PYTHON,
        "-m",
        "deformvision.cli",
        "train",
        str(CONFIGS / "dat_digits.yaml"),
        "--epochs",
        "1",
        "--output-dir",
        str(run_dir),
        "--set",
        f"data.root={tmp_path / 'digits'}",
        "data.batch_size=128",
        "schedule.warmup_epochs=0",
        "model.kwargs.dims=[16,32,64,128]",
        "model.kwargs.depths=[1,1,2,1]",
        "model.kwargs.stage_spec=[[L],[S],[L,D],[D]]",
    ]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1438 samples" in result.stdout and "epoch 1/1:" in result.stdout
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    epoch = records[-1]
    assert epoch["type"] == "epoch" and epoch["val_count"] == 359 and epoch["val_top1"] > 10.0  # above chance
    train_records = [r for r in records if r["type"] == "train"]
    assert train_records and {"loss", "lr", "throughput", "eta_s", "grad_norm"} <= set(train_records[0])
    assert (run_dir / "model_final.safetensors").is_file() and (run_dir / "config.yaml").is_file()

    # eval the run directory with the saved config: the same accuracy as the last epoch
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(run_dir / "config.yaml"),
                "--checkpoint",
                str(run_dir),
                "--output",
                str(tmp_path / "metrics.json"),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] == pytest.approx(epoch["val_top1"]) and metrics["count"] == 359
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_eval_without_a_config(image_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_folder, run_dir, schedule={"epochs": 1}))
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    argv = [
        "eval",
        "--model",
        "dat_tiny",
        "--checkpoint",
        str(run_dir / "model_final.safetensors"),
        "--data",
        str(image_folder),
        "--img-size",
        "32",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--set",
        f"model.kwargs={json.dumps(TINY_DAT)}",
        "aug.crop_pct=1.0",
    ]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    last = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert metrics["top1"] == pytest.approx(last["val_top1"]) and metrics["count"] == 12
