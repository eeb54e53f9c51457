"""How the benchmarks measure: median wall time of callables taking turns, and the peak memory of one call.

Time: every callable runs once to warm up, then ``repeats`` rounds in which each runs once, in turn (a busy
machine slows them alike); CUDA work is synchronised around each call.

Peak memory of one call, above what was allocated before it:

- CUDA: ``torch.cuda.max_memory_allocated`` during the call;
- CPU: the peak of live bytes of PyTorch's CPU allocator, from the allocation events of ``torch.profiler``
  (``profile_memory=True``); scratch buffers that MKL/oneDNN/fbgemm allocate internally are not counted
  (the analogue of ``max_memory_allocated``, not of the process RSS).
"""

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def round_times(fns: Sequence[Callable[[], object]], device: str, repeats: int) -> list[list[float]]:
    """Seconds of each of ``repeats`` calls of every function, the functions taking turns (after one warm-up)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            fn_times.append(time.perf_counter() - start)
    return times


def median_times(fns: Sequence[Callable[[], object]], device: str, repeats: int) -> list[float]:
    """Median seconds of each function over ``repeats`` rounds (see :func:`round_times`)."""
    return [statistics.median(fn_times) for fn_times in round_times(fns, device, repeats)]


def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated during one call of ``fn`` above what was allocated before (module docstring)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order (the raw Kineto events:
    # FunctionEvent totals attribute allocations to ops but do not order the frees)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def check_device(device: str) -> None:
    """Refuse a device other than ``cpu`` / ``cuda``, or CUDA on a machine without it (ValueError)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: this machine has no CUDA device (torch.cuda.is_available() is False)")


def check_repeats(repeats: int) -> None:
    """Refuse a number of timed rounds that is not a positive integer (ValueError)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
