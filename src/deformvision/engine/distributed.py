"""Running one command on one CPU, one GPU or many processes (``torchrun``).

``torchrun --nproc_per_node N`` (and multi-node ``torchrun --nnodes ... --rdzv-endpoint ...``) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process;
:func:`init_distributed` reads them and joins the process group (``nccl`` on GPUs, ``gloo`` on CPUs).
Without them the run is a single process and every helper here is a no-op.
"""

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> the local rank's GPU if CUDA is available, else the CPU; ``"cuda"`` -> the local rank's GPU.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        local_rank: this process's index on its machine (torchrun's ``LOCAL_RANK``).

    Raises:
        ValueError: ``name`` is none of these.
        RuntimeError: the device does not exist on this machine (no CUDA, fewer GPUs, no MPS).
    """
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available on this machine")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index >= count:
            raise RuntimeError(
                f"device {name!r} (local rank {local_rank}) resolves to {device} but this machine has {count} "
                f"CUDA device(s): cuda:0 to cuda:{count - 1}"
            )
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    The backend is ``nccl`` when this process runs on a GPU, else ``gloo``. Calling it again when the
    group already exists only returns the information.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, resolved)


def destroy_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all processes (a new tensor; float64 for exact counts)."""
    total = values.detach().clone()
    if is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` in a single process)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_objects(obj: Any) -> list[Any] | None:
    """The objects of all processes, in rank order, on rank 0; ``None`` on the others."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] | None = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
