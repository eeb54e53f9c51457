"""Runs bounded by a step or time budget: where they stop, the schedule over the budget, the CLI, the demo recipe."""

import json
import math

import pytest
import torch
from engine_utils import tiny_config, write_config

from deformvision.cli import main
from deformvision.demo import demo_recipe
from deformvision.engine import budget as budget_module
from deformvision.engine.budget import Budget
from deformvision.engine.checkpoint import find_checkpoint, load_training_state
from deformvision.engine.config import ConfigError, ScheduleConfig, config_from_dict
from deformvision.engine.optim import build_scheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_the_largest_fraction_of_the_budgets(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = Budget(ScheduleConfig(epochs=300, max_steps=100, max_seconds=10.0), steps_per_epoch=7)
    assert budget.describe() == "10 s or 100 steps"
    budget.start()
    clock.now += 2.0
    budget.tick()
    assert budget.progress(50) == 0.5  # steps lead (time: 0.2)
    assert budget.progress(10) == pytest.approx(0.2)  # time leads
    budget.stop()
    clock.now += 1000.0  # evaluation, checkpoints: not counted
    budget.start()
    clock.now += 7.0
    budget.tick()
    assert budget.seconds == pytest.approx(9.0) and not budget.spent(10) and budget.spent(100)
    clock.now += 1.0
    assert not budget.spent(10)  # the clock is read at ticks only
    budget.tick()
    assert budget.spent(10)


def test_without_a_budget_the_run_is_its_epochs():
    budget = Budget(ScheduleConfig(epochs=3), steps_per_epoch=5)
    assert budget.describe() == "3 epochs"
    assert budget.progress(6) == 6 / 15 and not budget.spent(14) and budget.spent(15)


def test_processes_agree_on_the_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = Budget(ScheduleConfig(max_seconds=10.0), steps_per_epoch=5, agree=lambda seconds: seconds + 1.0)
    budget.start()
    clock.now += 4.0
    budget.tick()
    assert budget.progress(0) == pytest.approx(0.5)  # the agreed 5 s, not this process's 4 s


def test_the_demo_recipe_schedule_is_warmup_then_a_tenth_for_the_last_fifth():
    """The recipes' schedule against the demo's former rule: (step + 1) / 50 warmup, x0.1 from 80% of the run."""
    raw = demo_recipe("detection")["schedule"]
    config = config_from_dict({"schedule": {**raw, "max_seconds": 0.0, "max_steps": 120}}).schedule
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=7, base_lr=1e-3)
    for step in range(120):
        expected = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 if step / 120 >= 0.8 else 1.0)
        assert math.isclose(optimizer.param_groups[0]["lr"], expected, rel_tol=1e-12), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.max_steps=-1", "schedule.max_steps = -1: must be >= 0"),
        ("schedule.max_seconds=-5", r"schedule.max_seconds = -5.0: must be >= 0"),
        ("schedule.warmup_steps=-2", "schedule.warmup_steps = -2: must be >= 0"),
        ("schedule.lr_drop_at=[0.5,1.0]", r"schedule.lr_drop_at = \[0.5, 1.0\]: every value must be in \(0, 1\)"),
    ],
)
def test_bad_budgets_are_refused(override, message):
    key, value = override.split("=")
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=message):
        config_from_dict({section: {name: json.loads(value)}})


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_train_cli_stops_at_a_step_budget_mid_epoch(image_folder, tmp_path):
    """24 images, batch 4: 6 steps per epoch; a budget of 4 steps ends the first epoch early, and the cosine
    schedule runs over the 4 steps (not over the 2 configured epochs)."""
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_config(image_folder, run))
    assert main(["train", str(config), "--set", "schedule.max_steps=4", "--no-progress"]) == 0
    steps = [r for r in _log(run) if r["type"] == "train"]
    assert [r["global_step"] for r in steps] == [1, 2, 3, 4]
    warmup_factor, min_factor = 1e-5 / 1e-3, 1e-5 / 1e-3  # the tiny config's warmup_lr, min_lr and lr
    expected = [warmup_factor + (1 - warmup_factor) * s / 3 for s in range(3)]  # warmup: 0.5 epoch = 3 steps
    expected.append(min_factor + 0.5 * (1 - min_factor) * (1 + math.cos(math.pi * 3 / 4)))
    assert [r["lr"] for r in steps] == pytest.approx([1e-3 * f for f in expected], rel=1e-9)
    epoch = [r for r in _log(run) if r["type"] == "epoch"]
    assert len(epoch) == 1 and "val_top1" in epoch[0]  # the last (partial) epoch is evaluated
    pointer = json.loads((run / "last_checkpoint.json").read_text())
    assert pointer["global_step"] == 4 and pointer["epoch_complete"] is False
    state = load_training_state(find_checkpoint(run)[1])
    assert state["train_seconds"] > 0 and (run / "model_final.safetensors").is_file()


def test_train_cli_stops_at_a_time_budget(image_folder, tmp_path):
    run = tmp_path / "run"
    # no RandAugment: over many epochs it draws a posterize that timm refuses (bits < 1), a bug of its own
    raw = tiny_config(image_folder, run, log={"interval": 100}, aug={"rand_augment": None})
    config = write_config(tmp_path / "c.yaml", raw)
    argv = ["train", str(config), "--set", "schedule.max_seconds=0.5", "schedule.epochs=1000", "--no-progress"]
    assert main(argv) == 0
    state = load_training_state(find_checkpoint(run)[1])
    assert 0 < state["global_step"] < 1000 * 6 and state["train_seconds"] >= 0.5
