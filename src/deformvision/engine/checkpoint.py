"""Crash-safe, resumable training checkpoints.

A checkpoint is two files in ``<run>/checkpoints/``: ``step_<global step>.safetensors`` (the model
weights, loadable with ``create_model(name, checkpoint=...)``) and ``step_<global step>.state.pt``
(everything else needed to continue exactly: optimizer, scheduler, gradient scaler, EMA weights,
epoch and position in it, RNG states of every process, sampler settings). ``<run>/last_checkpoint.json``
names the newest complete pair.

Every file is written with :func:`deformvision._atomic.atomic_write` (a temporary name in the same folder,
flushed to disk and renamed over its target), and the pointer is replaced only after both files are
complete. A crash at any moment (even SIGKILL) leaves the previous checkpoint and pointer intact; stale
temporary files are removed by the next save. Training states are read with ``weights_only=True``.
"""

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from deformvision._atomic import atomic_write, remove_stale_temporaries, write_json_atomic

POINTER = "last_checkpoint.json"
CHECKPOINT_DIR = "checkpoints"


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict as safetensors, atomically (tensors copied to contiguous CPU memory)."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), numpy and Python's ``random``, as tensors and tuples."""
    np_state = np.random.get_state()  # noqa: NPY002  (the legacy global state is what code may draw from)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    random.setstate(state["python"])


class CheckpointManager:
    """Saves checkpoints of a run directory and finds the newest one.

    Args:
        run_dir: the run's output directory.
        keep: how many checkpoints to keep (older ones are deleted after a new one is complete).
    """

    def __init__(self, run_dir: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / CHECKPOINT_DIR
        self.keep = keep

    def save(self, weights: dict[str, torch.Tensor], state: dict[str, Any], step: int) -> Path:
        """Write the checkpoint of global step ``step``; return the pointer's path.

        A step saved again (a run restarted from an older checkpoint) gets new names (``step_<step>-1``...):
        the pair the pointer names is never overwritten, so a crash cannot leave it half old, half new.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)  # left by a killed save
        base = stem = f"step_{step:09d}"
        again = 0
        while any(self.folder.glob(f"{stem}.*")):  # this step was saved before
            again += 1
            stem = f"{base}-{again}"
        save_weights(weights, self.folder / f"{stem}.safetensors")
        atomic_write(self.folder / f"{stem}.state.pt", lambda tmp: torch.save(state, tmp))
        record = {
            "weights": f"{CHECKPOINT_DIR}/{stem}.safetensors",
            "state": f"{CHECKPOINT_DIR}/{stem}.state.pt",
            "global_step": step,
            "epoch": state.get("epoch"),
            "epoch_complete": state.get("epoch_complete"),
        }
        pointer = self.run_dir / POINTER
        write_json_atomic(pointer, record, indent=2)
        self._prune(keep_stem=stem)
        return pointer

    def _prune(self, keep_stem: str) -> None:
        stems = sorted({p.name.split(".")[0] for p in self.folder.glob("step_*")})
        for stem in stems[: -self.keep]:
            if stem != keep_stem:
                for path in self.folder.glob(f"{stem}.*"):
                    path.unlink(missing_ok=True)


def find_checkpoint(location: str | Path) -> tuple[Path, Path] | None:
    """``(weights, state)`` paths of the newest checkpoint at ``location``, or ``None`` if it has none.

    ``location`` is a run directory or its ``last_checkpoint.json``.

    Raises:
        FileNotFoundError: ``location`` does not exist, or the pointer names missing files.
    """
    location = Path(location)
    if not location.exists():
        raise FileNotFoundError(f"no run directory or checkpoint pointer at {location}")
    pointer = location / POINTER if location.is_dir() else location
    if not pointer.is_file():
        return None
    try:
        record = json.loads(pointer.read_text())
        weights, state = pointer.parent / record["weights"], pointer.parent / record["state"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"checkpoint pointer {pointer} is damaged ({type(err).__name__}: {err}); it should be JSON with "
            f"'weights' and 'state' paths: repair it or point --resume at a checkpoint's files"
        ) from err
    for path in (weights, state):
        if not path.is_file():
            raise FileNotFoundError(f"{pointer} names {path}, which does not exist")
    return weights, state


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a ``*.state.pt`` file (tensors and plain Python values only).

    Raises:
        ValueError: the file is truncated, damaged or not a training state; the message names it.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...: all mean "this file is not usable"
        raise ValueError(f"cannot read training state {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"training state {path} holds a {type(state).__name__}, expected a dict")
    return state
