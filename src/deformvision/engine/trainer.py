"""The training loop: epochs of optimizer steps, evaluation, logs and resumable checkpoints.

One :class:`Trainer` serves every task (:mod:`~deformvision.engine.classification`,
:mod:`~deformvision.engine.detection`) on one CPU, one GPU or many processes under ``torchrun``.

Exact resumption: the data order is a function of ``(seed, epoch)`` and each sample's and batch's
augmentation of ``(seed, epoch, index)``, so only the position in the epoch, the weights, optimizer,
scheduler, scaler, EMA and the global RNG states (dropout, stochastic depth) need saving. Resuming
from a checkpoint of step ``k`` then repeats the uninterrupted run bit for bit in deterministic CPU mode.
"""

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deformvision.engine.amp import autocast, grad_scaler, resolve_amp
from deformvision.engine.budget import Budget
from deformvision.engine.builders import build_data, build_loader, build_model, build_task, compile_model
from deformvision.engine.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_weights,
)
from deformvision.engine.config import TrainConfig
from deformvision.engine.data import EpochSampler, ShardSampler, make_generator
from deformvision.engine.distributed import all_gather_objects, all_reduce_sum, barrier, init_distributed
from deformvision.engine.ema import ModelEma
from deformvision.engine.logger import Meters, RunLogger, format_duration
from deformvision.engine.optim import build_optimizer, build_scheduler
from deformvision.engine.run_dir import (
    FINAL_EMA_WEIGHTS,
    FINAL_WEIGHTS,
    check_output_dir,
    check_resume_config,
    checkpoint_to_resume,
    run_weights,
    start_run,
)
from deformvision.models import load_checkpoint, read_state_dict

STATE_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (third-party code draws from the legacy global state)
    random.seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """Deterministic algorithms (and no cuDNN autotuning) or the fastest ones."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class Trainer:
    """Trains ``config`` from scratch, from ``model.checkpoint`` weights, or resumed from ``config.resume``.

    The model is initialised from ``seed`` (the same on every process); training randomness is then
    seeded with ``seed + rank``. Batch size is per process; the learning rates are scaled by
    ``global batch / optim.lr_ref_batch`` when that is set. Only rank 0 writes files.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.dist = init_distributed(config.device)
        self.device = self.dist.device
        self.amp = resolve_amp(self.device, config.amp)
        configure_determinism(config.deterministic)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.run_dir = Path(config.output_dir)
        if self.dist.is_main:  # nothing is written to the run directory before the run is fully set up
            check_output_dir(self.run_dir, config.resume, config.overwrite)
        self.log = RunLogger(self.run_dir, enabled=self.dist.is_main, progress=config.log.progress)
        self.checkpoints = CheckpointManager(self.run_dir, keep=config.checkpoint.keep)

        if self.dist.is_main:  # the built-in datasets are written once, before the others read them
            self.data = build_data(config)
        barrier()
        if not self.dist.is_main:
            self.data = build_data(config)
        seed_everything(config.seed)
        self.model = build_model(config, self.data.num_classes).to(self.device)
        self.task = build_task(config, self.data, self.model)
        self.ema = ModelEma(self.model, config.ema.decay) if config.ema.enabled else None
        self.ddp_model: nn.Module = self.model
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.ddp_model = compile_model(self.ddp_model, config.compile)  # the training steps
        self.eval_model = compile_model(self.model, config.compile)  # evaluation of the (non-EMA) model

        batch_size, world_size = config.data.batch_size, self.dist.world_size
        self.global_batch = batch_size * world_size
        self.sampler = EpochSampler(
            len(self.data.train), batch_size, seed=config.seed, rank=self.dist.rank, world_size=world_size
        )
        self.loader = build_loader(self.data.train, self.sampler, config, train=True, device=self.device)
        val_sampler = ShardSampler(len(self.data.val), self.dist.rank, world_size)
        self.val_loader = build_loader(self.data.val, val_sampler, config, train=False, device=self.device)
        self.steps_per_epoch = self.sampler.num_batches
        agree = self._mean_over_processes if world_size > 1 else None
        self.budget = Budget(config.schedule, self.steps_per_epoch, agree)

        optim = config.optim
        lr_scale = self.global_batch / optim.lr_ref_batch if optim.lr_ref_batch else 1.0
        self.optimizer = build_optimizer(self.model, optim, lr_scale)
        # warmup_lr and min_lr are given at the same batch size as lr: as factors of it they scale with it
        self.scheduler = build_scheduler(
            self.optimizer, config.schedule, self.steps_per_epoch, base_lr=optim.lr, progress=self.budget.progress
        )
        self.scaler = grad_scaler(self.device, self.amp)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

        self.epoch, self.batches_done, self.global_step = 0, 0, 0
        self.epoch_meters = Meters()  # the current epoch's logged values (saved with mid-epoch checkpoints)
        seed_everything(config.seed + self.dist.rank)
        if config.resume is not None:
            self._resume(config.resume)
        if self.dist.is_main:
            start_run(self.run_dir, config)
        barrier()

    # ----------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward-pass precision context of this run."""
        return autocast(self.device, self.amp)

    def fit(self) -> dict[str, float]:
        """Train until the run's epochs (or its budget) are done; return the last evaluation's metrics.

        A budget spent mid-epoch ends that epoch early: it is evaluated, logged and checkpointed as the last.
        """
        config = self.config
        self.log.print(
            f"training {config.model.name} on {len(self.data.train)} samples, {self.dist.world_size} process(es) "
            f"on {self.device}, global batch {self.global_batch}, {self.steps_per_epoch} steps/epoch, "
            f"{self.budget.describe()} -> {self.run_dir}"
        )
        metrics: dict[str, float] = {}
        while not self.budget.spent(self.global_step):
            epoch_start = time.perf_counter()
            self.budget.start()
            train_metrics = self._train_epoch()
            self.budget.stop()
            complete = self.batches_done == self.steps_per_epoch
            last = self.budget.spent(self.global_step)
            metrics = self.evaluate() if last or (self.epoch + 1) % config.eval_every == 0 else {}
            record = {
                "type": "epoch",
                "epoch": self.epoch,
                "global_step": self.global_step,
                **{f"train_{k}": v for k, v in train_metrics.items()},
                **{f"val_{k}": v for k, v in metrics.items()},
                "epoch_time_s": round(time.perf_counter() - epoch_start, 3),
            }
            summary = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("type", "epoch"))
            self.log.write(record, f"epoch {self._epoch_text()}: {summary}")
            if complete:
                self.epoch, self.batches_done = self.epoch + 1, 0
            self._save(epoch_complete=complete)
        if self.dist.is_main:
            save_weights(self.model.state_dict(), self.run_dir / FINAL_WEIGHTS)
            if self.ema is not None:
                save_weights(self.ema.module.state_dict(), self.run_dir / FINAL_EMA_WEIGHTS)
        barrier()
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Metrics of the model (and ``ema_*`` of the EMA weights) on the validation set."""
        metrics = self.task.evaluate(self.eval_model, self.val_loader, self.device, self.autocast)
        if self.ema is not None:
            ema_metrics = self.task.evaluate(self.ema.module, self.val_loader, self.device, self.autocast)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        return metrics

    @property
    def train_seconds(self) -> float:
        """Seconds of training so far (evaluation and checkpoints not counted; earlier sessions included)."""
        return self.budget.seconds

    # ----------------------------------------------------------------------------------------------
    def _epoch_text(self) -> str:
        """``"3/15"``, or ``"3"`` for runs bounded by a budget."""
        return f"{self.epoch + 1}" if self.budget.has_budget else f"{self.epoch + 1}/{self.config.schedule.epochs}"

    def _train_epoch(self) -> dict[str, float]:
        """Run the epoch's remaining steps (those the budget allows); return its averaged logged values."""
        config, epoch = self.config, self.epoch
        self.sampler.set_epoch(epoch, self.batches_done)
        self.data.train.set_epoch(epoch)
        self.ddp_model.train()
        interval = Meters()
        interval_start = time.perf_counter()
        self.log.start_bar(
            self.steps_per_epoch * self.global_batch,
            self.batches_done * self.global_batch,
            f"epoch {self._epoch_text()}",
        )
        for batch in self.loader:
            if self.budget.spent(self.global_step):
                break
            lr = max(group["lr"] for group in self.optimizer.param_groups)  # the main rate of this step
            logs, grad_norm = self._step(batch)
            self.batches_done += 1
            clip_logs = {"grad_norm": grad_norm} if grad_norm is not None else {}  # the same keys on every process
            interval.update(self.task.batch_size(batch), **logs, **clip_logs)
            self.epoch_meters.update(self.task.batch_size(batch), **logs)
            self.log.advance_bar(self.global_batch, loss=logs["loss"], lr=lr)
            last = self.batches_done == self.steps_per_epoch or self.budget.spent(self.global_step)
            if self.batches_done % config.log.interval == 0 or last:
                values, count = interval.reduce(self.device)
                elapsed = time.perf_counter() - interval_start
                self._log_step(values, count, elapsed, lr)
                interval_start = time.perf_counter()
            every = config.checkpoint.every_steps
            if every and self.global_step % every == 0 and not last:
                self.budget.stop()
                self._save(epoch_complete=False)
                self.budget.start()
        self.log.close_bar()
        values, _ = self.epoch_meters.reduce(self.device)
        return values

    def _step(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One optimizer step; returns the logged values and the gradient norm before clipping."""
        generator = make_generator(self.config.seed, self.epoch, self.batches_done, self.dist.rank)
        with self.autocast():
            loss, logs = self.task.train_loss(self.ddp_model, batch, self.device, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch} step {self.batches_done}: {logs}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.config.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.budget.tick()  # the clock of this step's schedule and of the next step's stop check
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.global_step += 1
        return logs, grad_norm

    def _log_step(self, values: dict[str, float], count: int, elapsed: float, lr: float) -> None:
        progress = self.budget.progress(self.global_step)
        eta = self.budget.seconds * (1.0 - progress) / progress if 0.0 < progress < 1.0 else 0.0
        record = {
            "type": "train",
            "epoch": self.epoch,
            "step": self.batches_done,
            "global_step": self.global_step,
            "lr": lr,
            **values,
            "throughput": round(count / max(elapsed, 1e-9), 2),
            "eta_s": round(eta, 1),
        }
        text = (
            f"epoch {self.epoch + 1} step {self.batches_done}/{self.steps_per_epoch} loss {values['loss']:.4f} "
            f"lr {lr:.3e} {record['throughput']:.1f} img/s eta {format_duration(record['eta_s'])}"
        )
        self.log.write(record, text)

    # ----------------------------------------------------------------------------------------------
    def _training_state(self, epoch_complete: bool) -> dict[str, Any]:
        scheduler_state = self.scheduler.state_dict()
        scheduler_state["lr_lambdas"] = [None] * len(self.optimizer.param_groups)  # the schedule comes from config
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_complete": epoch_complete,
            "global_step": self.global_step,
            "train_seconds": self.budget.seconds,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            # per process, in rank order: RNG states and the running sums of the epoch's logged values
            "rng": all_gather_objects(capture_rng_state()),
            "epoch_meters": all_gather_objects(self.epoch_meters.state_dict()),
            "sampler": {
                "seed": self.config.seed,
                "world_size": self.dist.world_size,
                "batch_size": self.config.data.batch_size,
                "steps_per_epoch": self.steps_per_epoch,
            },
        }

    def _save(self, epoch_complete: bool) -> None:
        state = self._training_state(epoch_complete)
        if self.dist.is_main:
            self.checkpoints.save(self.model.state_dict(), state, self.global_step)

    def _resume(self, location: str) -> None:
        """Load the newest checkpoint at ``location`` (``"auto"``: this run's directory, if it has one)."""
        found = checkpoint_to_resume(self.run_dir, location)
        if found is None:
            self.log.print(f"no checkpoint in {self.run_dir}: starting from scratch")
            return
        weights, state_path = found
        check_resume_config(state_path, self.config)
        state = load_training_state(state_path)
        self._check_compatible(state, state_path)
        self.model.load_state_dict(read_state_dict(weights))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
            if not state["epoch_complete"]:
                self.epoch_meters.load_state_dict(state["epoch_meters"][self.dist.rank])
        self.global_step = state["global_step"]
        self.budget.done_seconds = state.get("train_seconds", 0.0)  # absent from checkpoints of before budgets
        self.budget.tick()
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.log.print(f"resumed from {weights.name} (epoch {self.epoch + 1}, step {self.batches_done} of it)")

    def _mean_over_processes(self, value: float) -> float:
        total = all_reduce_sum(torch.tensor(value, dtype=torch.float64, device=self.device))
        return total.item() / self.dist.world_size

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{path} has training state version {state.get('version')}, expected {STATE_VERSION}")
        saved = state["sampler"]
        now = {
            "seed": self.config.seed,
            "world_size": self.dist.world_size,
            "batch_size": self.config.data.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
        }
        if not state["epoch_complete"] and saved != now:
            raise ValueError(
                f"cannot resume mid-epoch from {path}: it was saved with {saved}, this run has {now}; "
                "use the same seed, processes and batch size (or resume from an epoch-end checkpoint)"
            )
        if saved["steps_per_epoch"] != now["steps_per_epoch"]:
            self.log.print(
                f"warning: steps per epoch changed from {saved['steps_per_epoch']} to "
                f"{now['steps_per_epoch']}; the schedule continues by step count"
            )


def train(config: TrainConfig) -> dict[str, float]:
    """Train (or resume) a run described by ``config``; return the final evaluation metrics."""
    return Trainer(config).fit()


def evaluate(config: TrainConfig, weights: str | Path | None = None) -> dict[str, float]:
    """Evaluate ``weights`` (default ``config.model.checkpoint``) on ``config``'s validation set.

    ``weights`` may be a weights file (ours or official) or a run directory (its final weights, else its
    newest checkpoint). Runs on one process or under torchrun.
    """
    dist_info = init_distributed(config.device)
    amp = resolve_amp(dist_info.device, config.amp)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = build_data(config, train=False)
    model = build_model(config, data.num_classes)
    if weights is not None:
        path = Path(weights)
        load_checkpoint(model, run_weights(path) if path.is_dir() else path)
    model.to(dist_info.device)
    task = build_task(config, data, model)
    loader = build_loader(
        data.val,
        ShardSampler(len(data.val), dist_info.rank, dist_info.world_size),
        config,
        train=False,
        device=dist_info.device,
    )
    return task.evaluate(
        compile_model(model, config.compile), loader, dist_info.device, lambda: autocast(dist_info.device, amp)
    )
