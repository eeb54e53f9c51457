"""The decisions about a run directory: what it holds, whether a run may start there, what it resumes from
and when its config is saved (the checkpoint files themselves are read and written by
:mod:`~deformvision.engine.checkpoint`).

A training run writes ``config.yaml``, ``log.jsonl``, ``checkpoints/`` with ``last_checkpoint.json`` and
the final weights into its ``output_dir``. Nothing of an earlier run there is touched unless the user
says so:

- a new run (no ``resume``) into a directory that holds a run is refused, unless ``overwrite`` is set,
  which deletes the earlier run's files, but only once the new run has been fully set up (config,
  data, model, optimizer);
- a resumed run must have the configuration it was saved with, apart from the keys that do not change
  what is trained (:data:`RESUME_SAFE_KEYS`): a changed learning rate or schedule would otherwise be
  silently replaced by the restored one. The refusal lists every changed key;
- ``config.yaml`` is written (atomically) once the run is set up and any checkpoint restored
  (:func:`start_run`), so a refused run leaves the directory as it was.
"""

import shutil
from pathlib import Path
from typing import Any

import yaml

from deformvision.engine.checkpoint import CHECKPOINT_DIR, POINTER, find_checkpoint
from deformvision.engine.config import TrainConfig, config_to_dict, save_config

RUN_CONFIG = "config.yaml"
FINAL_WEIGHTS = "model_final.safetensors"
FINAL_EMA_WEIGHTS = "model_ema_final.safetensors"
RUN_FILES = (RUN_CONFIG, "log.jsonl", POINTER, CHECKPOINT_DIR, FINAL_WEIGHTS, FINAL_EMA_WEIGHTS, "metrics.json")
# Dotted config keys (or prefixes ending in ".") a resumed run may change: where and how fast it runs,
# what it prints, how it is evaluated; not what it trains.
RESUME_SAFE_KEYS = (
    "output_dir",
    "resume",
    "overwrite",
    "threads",
    "device",
    "log.",
    "eval_every",
    "checkpoint.keep",
    "checkpoint.every_steps",
    "data.root",
    "data.num_workers",
    "data.pin_memory",
    "data.eval_batch_size",
)


def existing_run_files(run_dir: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``run_dir`` (empty if it does not exist)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_output_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one (see the module docstring).

    Raises:
        ValueError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set, or both are.
    """
    if resume is not None and overwrite:
        raise ValueError("give either --resume (continue the run) or --overwrite (replace it), not both")
    found = existing_run_files(run_dir)
    if found and resume is None and not overwrite:
        raise ValueError(
            f"output_dir {run_dir} already holds a run ({', '.join(found)}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output-dir"
        )


def checkpoint_to_resume(run_dir: Path, resume: str) -> tuple[Path, Path] | None:
    """``(weights, state)`` of the checkpoint ``resume`` names: a run directory or its pointer, or ``"auto"``
    (``run_dir``'s newest checkpoint; ``None`` if it has none: the run starts from scratch).

    Raises:
        FileNotFoundError: ``resume`` (not ``"auto"``) does not exist or holds no checkpoint.
        ValueError: its pointer is damaged.
    """
    if resume == "auto":
        return find_checkpoint(run_dir) if run_dir.is_dir() else None
    found = find_checkpoint(resume)
    if found is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {resume}")
    return found


def check_resume_config(state_path: Path, config: TrainConfig) -> None:
    """Refuse to resume the checkpoint whose training state is ``state_path`` with another ``config`` than
    its run's (``<run>/config.yaml``, beside ``checkpoints/``; nothing to check if the run has none).

    Raises:
        ValueError: as :func:`check_resumed_config`.
    """
    saved_config = state_path.parent.parent / RUN_CONFIG  # <run>/checkpoints/<step>.state.pt
    if saved_config.is_file():
        check_resumed_config(saved_config, config_to_dict(config))


def start_run(run_dir: Path, config: TrainConfig) -> None:
    """Make ``run_dir`` the new run's: delete an earlier run's files if ``config.overwrite``, save the config."""
    if config.overwrite:
        remove_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / RUN_CONFIG)


def run_weights(run_dir: Path) -> Path:
    """The weights a finished or interrupted run offers: its final weights, else its newest checkpoint's.

    Raises:
        FileNotFoundError: ``run_dir`` has neither.
    """
    if (run_dir / FINAL_WEIGHTS).is_file():
        return run_dir / FINAL_WEIGHTS
    found = find_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"run directory {run_dir} has no {FINAL_WEIGHTS} and no checkpoint")
    return found[0]


def remove_run(run_dir: Path) -> None:
    """Delete the files of an earlier run in ``run_dir`` (what :data:`RUN_FILES` names, nothing else)."""
    for name in existing_run_files(run_dir):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(raw, dict):
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: raw}


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: saved -> current"`` for every dotted key whose value differs, except :data:`RESUME_SAFE_KEYS`."""
    old, new = _flatten(saved), _flatten(current)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if any(key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in RESUME_SAFE_KEYS):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changes.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return changes


def check_resumed_config(saved_config: Path, current: dict[str, Any]) -> None:
    """Refuse to resume with a configuration other than the one the run was saved with.

    Raises:
        ValueError: keys other than :data:`RESUME_SAFE_KEYS` differ (all are listed), or the saved
            ``config.yaml`` cannot be read.
    """
    try:
        saved = yaml.safe_load(saved_config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the config of the run to resume, {saved_config}: {err}") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{saved_config} is not a config (a YAML mapping)")
    changes = changed_keys(saved, current)
    if changes:
        raise ValueError(
            f"cannot resume with another configuration than the run's ({saved_config}); changed: "
            + "; ".join(changes)
            + ". Resume with the same settings, or start a new run (another --output-dir, or --overwrite)"
        )
