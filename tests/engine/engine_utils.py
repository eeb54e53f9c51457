"""Helpers of the engine tests: a tiny generated ImageFolder, a tiny DAT config, subprocess settings."""

import os
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "src" / "deformvision" / "recipes"  # the shipped recipes

# A DAT with ~90k parameters at 32x32 (maps 8/4/2/1): window blocks in stages 1-2, deformable in 3-4.
TINY_DAT = {
    "img_size": 32,
    "dims": [8, 16, 32, 64],
    "depths": [1, 1, 2, 1],
    "heads": [1, 1, 2, 2],
    "groups": [-1, -1, 1, 1],
    "window_sizes": [4, 4, 2, 1],
    "stage_spec": [["L"], ["S"], ["L", "D"], ["D"]],
    "drop_path_rate": 0.0,
}


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """``root/{train,val}/c<k>/<i>.png``: noisy images with a class-dependent mean colour."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(per_class // 2, 2))):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            colour = np.array([255 * (k == c % 3) for c in range(3)], dtype=np.float64)
            for i in range(count):
                pixels = np.clip(0.6 * colour + rng.normal(60, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def tiny_config(data_root: Path, output_dir: Path, **sections: dict) -> dict:
    """A classification config (as a dict) training TINY_DAT on ``data_root`` for 2 short epochs on CPU."""
    config = {
        "model": {"name": "dat_tiny", "kwargs": dict(TINY_DAT)},
        "data": {
            "task": "classification",
            "format": "image_folder",
            "root": str(data_root),
            "img_size": 32,
            "batch_size": 4,
            "num_workers": 0,
        },
        "aug": {
            "scale": [0.5, 1.0],
            "hflip": 0.5,
            "rand_augment": [2, 9],
            "reprob": 0.25,
            "crop_pct": 1.0,
            "mixup": 0.0,
            "cutmix": 0.0,
        },
        "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "no_decay_keywords": ["rpe_table"], "clip_grad": 5.0},
        "schedule": {"name": "cosine", "epochs": 2, "warmup_epochs": 0.5, "warmup_lr": 1.0e-5, "min_lr": 1.0e-5},
        "checkpoint": {"every_steps": 0, "keep": 2},
        "log": {"interval": 1, "progress": False},
        "output_dir": str(output_dir),
        "device": "cpu",
        "deterministic": True,
        "threads": 1,
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values} if isinstance(config.get(name), dict) else values
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: one thread each, this interpreter's packages, no torchrun leftovers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


PYTHON = sys.executable
