"""Benchmark of deformvision.ops.deform_conv2d against torchvision.ops.deform_conv2d, side by side.

Default workload: input (2, 256, 64, 64), 3x3 kernel, 256 output channels, stride 1, padding 1, offsets
of a couple of pixels (Gaussian, std 2), one offset group, one thread, float32 on the CPU.

For forward and forward+backward (gradients of input, offset, weight, bias and mask), with and without
mask, the two ops take turns in every repeat (so a busy machine slows both alike); the table gives the
median wall time of each, the speed-up (torchvision's time / ours) and the peak memory of one call:

- CPU: the peak of live bytes allocated by PyTorch's CPU allocator during the call, minus what was live
  before it, from the allocation events of ``torch.profiler`` (``profile_memory=True``); internal scratch
  buffers of MKL/oneDNN are not counted;
- CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before it.

The forward rows run with inputs that do not require gradients (inference); "fwd (grad)" is the forward
pass alone with inputs that do (what a training step's forward costs).

Usage: python benchmarks/bench_deform_conv.py [--threads 1] [--repeats 7] [--batch 2] [--channels 256]
       [--out-channels 256] [--size 64] [--offset-groups 1] [--device cpu|cuda] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from deformvision.ops.deform_conv import deform_conv2d

OPS = {"deformvision": deform_conv2d, "torchvision": torchvision.ops.deform_conv2d}


def make_inputs(args: argparse.Namespace) -> list[torch.Tensor]:
    """input, offset, weight, bias, mask."""
    g = torch.Generator().manual_seed(0)
    n, c, s, o, og = args.batch, args.channels, args.size, args.out_channels, args.offset_groups
    dtype = getattr(torch, args.dtype)
    tensors = [
        torch.randn(n, c, s, s, generator=g),
        2.0 * torch.randn(n, 2 * og * 9, s, s, generator=g),
        torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5),
        torch.randn(o, generator=g),
        torch.rand(n, og * 9, s, s, generator=g),
    ]
    return [t.to(device=args.device, dtype=dtype) for t in tensors]


def make_call(op: Callable, tensors: list[torch.Tensor], use_mask: bool, mode: str) -> Callable[[], object]:
    """A closure running one forward (``fwd``, ``fwd_grad``) or forward+backward (``fwd_bwd``) of ``op``."""
    grad = mode != "fwd"
    leaves = [t.detach().clone().requires_grad_(grad) for t in tensors]
    x, offset, weight, bias, mask = leaves

    def call() -> object:
        for t in leaves:
            t.grad = None
        out = op(x, offset, weight, bias, (1, 1), (1, 1), (1, 1), mask if use_mask else None)
        if mode == "fwd_bwd":
            out.sum().backward()
        return out

    return call


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_times(fns: list[Callable[[], object]], device: str, repeats: int) -> list[float]:
    """Median wall time of each function; the functions take turns in every repeat."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(fn_times) for fn_times in times]


def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated during ``fn`` above what was allocated before (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--out-channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--offset-groups", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tensors = make_inputs(args)
    print(
        f"input ({args.batch}, {args.channels}, {args.size}, {args.size}), 3x3 kernel, {args.out_channels} out "
        f"channels, offset_groups={args.offset_groups}, {args.dtype} on {args.device}, {args.threads} thread(s), "
        f"median of {args.repeats}"
    )
    header = f"{'pass':<11} {'mask':<5} {'deformvision ms':>16} {'torchvision ms':>15} {'speed-up':>9}"
    if not args.no_memory:
        header += f" {'ours peak MB':>13} {'tv peak MB':>11}"
    print(header)
    print("-" * len(header))
    for mode in ("fwd", "fwd_grad", "fwd_bwd"):
        for use_mask in (False, True):
            calls = [make_call(op, tensors, use_mask, mode) for op in OPS.values()]
            ours, theirs = median_times(calls, args.device, args.repeats)
            row = (
                f"{mode.replace('_', '+').replace('+grad', ' (grad)'):<11} {'yes' if use_mask else 'no':<5} "
                f"{ours * 1e3:>16.1f} {theirs * 1e3:>15.1f} {theirs / ours:>8.2f}x"
            )
            if not args.no_memory:
                memory = [peak_memory(call, args.device) / 2**20 for call in calls]
                row += f" {memory[0]:>13.1f} {memory[1]:>11.1f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
