"""Training logs: averaged metrics over all processes, JSON lines, console lines and a progress bar."""

import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from deformvision._atomic import append_lines
from deformvision.engine.distributed import all_reduce_sum


class Meters:
    """Sample-weighted sums of scalar values, averaged over every process on :meth:`reduce`.

    ``update(n, loss=..., ...)`` adds ``n * value`` per key (values may be tensors on any device: they
    are only synchronised on reduce). Every process must update the same keys in the same order.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def update(self, n: int, **values: torch.Tensor | float) -> None:
        for key, value in values.items():
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value * n
        self.count += n

    def state_dict(self) -> dict[str, Any]:
        """The running sums as plain floats (for checkpoints)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.count = dict(state["sums"]), state["count"]

    def reduce(self, device: torch.device) -> tuple[dict[str, float], int]:
        """``({key: mean over all samples of all processes}, total samples)``, then reset."""
        keys = list(self.sums)
        local = [torch.as_tensor(self.sums[k], dtype=torch.float64, device=device) for k in keys]
        totals = all_reduce_sum(
            torch.stack([torch.tensor(float(self.count), dtype=torch.float64, device=device), *local])
        ).tolist()
        count = int(totals[0])
        self.sums, self.count = {}, 0
        return {k: v / max(count, 1) for k, v in zip(keys, totals[1:], strict=True)}, count


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``."""
    return str(datetime.timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class RunLogger:
    """Writes log records as JSON lines to ``log.jsonl`` and short lines to stdout (main process only).

    Args:
        run_dir: where ``log.jsonl`` is appended (``None``: no file).
        enabled: ``False`` on processes other than rank 0 (nothing is written or printed).
        progress: show a tqdm bar per epoch (only if stderr is a terminal).
    """

    def __init__(self, run_dir: str | Path | None, enabled: bool = True, progress: bool = True) -> None:
        self.path = Path(run_dir) / "log.jsonl" if run_dir is not None else None
        self.enabled = enabled
        self.use_bar = enabled and progress and sys.stderr.isatty()
        self.bar: tqdm | None = None

    def write(self, record: dict[str, Any], text: str | None = None) -> None:
        """Append ``record`` (with a ``time`` stamp) to the log file and print ``text`` (unless a bar shows).

        The log is append-only, so not replaced atomically: each record is one write of a whole line,
        flushed at once (:func:`~deformvision._atomic.append_lines`); a crash loses at most that line.
        """
        if not self.enabled:
            return
        record = {**record, "time": round(time.time(), 3)}
        if self.path is not None:
            append_lines(self.path, [json.dumps(record)])
        if text is not None:
            self.print(text, quiet_with_bar=True)

    def print(self, text: str, quiet_with_bar: bool = False) -> None:
        """Print on the main process (above the bar if one shows; not at all if ``quiet_with_bar``)."""
        if not self.enabled:
            return
        if self.bar is not None:
            if not quiet_with_bar:
                self.bar.write(text)
        else:
            print(text, flush=True)

    def start_bar(self, total: int, initial: int, description: str) -> None:
        """A bar of ``total`` images, ``initial`` already done (resumed epoch)."""
        if self.use_bar:
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=description,
                unit="img",
                unit_scale=True,
                dynamic_ncols=True,
                leave=False,
            )

    def advance_bar(self, images: int, **postfix: torch.Tensor | float) -> None:
        """Move the bar by ``images`` and show ``postfix`` values (read only when a bar shows: no device sync)."""
        if self.bar is not None:
            self.bar.update(images)
            self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in postfix.items()}, refresh=False)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
