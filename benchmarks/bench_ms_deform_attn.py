"""Benchmark of multi-scale deformable attention: every available path against the grid_sample reference.

Workloads (Deformable DETR at 800x1066-ish input, batch 2, d_model 256 = 8 heads x 32 channels, 4 points):

- encoder: value of 4 levels (100, 134), (50, 67), (25, 34), (13, 17) (S = 17,821), one query per value
  position (Lq = S);
- decoder: the same value, 300 queries.

Sampling locations imitate a trained model by default (``--locations realistic``): encoder queries sample
around their own pixel (the official initial offset pattern, 1..4 pixels in 8 directions, plus Gaussian
noise of 2 pixels), decoder queries around uniformly random reference points; attention weights are a
softmax over levels and points. ``--locations uniform`` draws them uniformly in [0, 1] instead (worst case
for cache locality).

Reported per path: forward and forward+backward wall time (median of ``--repeats`` runs after one
warm-up), the speed-up over the reference measured in the same run, and peak memory:

- CUDA: ``torch.cuda.max_memory_allocated`` during the call, minus what was allocated before it;
- CPU: the peak of live tensor bytes allocated by PyTorch's CPU allocator during the call, minus what was
  live before it, computed from the allocation events of ``torch.profiler`` (``profile_memory=True``). It
  counts every tensor the call creates, including those of the sparse kernels, but not scratch buffers
  that MKL/fbgemm allocate internally (the analogue of ``max_memory_allocated``, not of the process RSS).

On CUDA the relative error of the float16/bfloat16 Triton results against the float32 Triton results is
printed too (max |low - fp32| / max |fp32| over the output and each gradient).

The paths take turns within each repeat, so a busy machine slows them alike. On CPU the profiler prints
``USDT: ...`` lines on stderr; the table goes to stdout.

Usage: python benchmarks/bench_ms_deform_attn.py [--device cpu|cuda] [--repeats N] [--locations ...]
       [--threads N] [--workloads encoder,decoder]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable

import torch

from deformvision.ops.msda import ms_deform_attn

LEVELS = [(100, 134), (50, 67), (25, 34), (13, 17)]
BATCH, HEADS, HEAD_DIM, POINTS = 2, 8, 32, 4
DECODER_QUERIES = 300

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(workload: str, locations: str, device: str, dtype: torch.dtype, seed: int = 0) -> Inputs:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(LEVELS, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L, N, M, P = int(sizes.sum()), len(LEVELS), BATCH, HEADS, POINTS
    if workload == "encoder":
        centres = []
        for h, w in LEVELS:
            ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            centres.append(torch.stack([xs.flatten() / w, ys.flatten() / h], -1))
        reference = torch.cat(centres)  # (S, 2) every value position is a query
    else:
        reference = torch.rand(DECODER_QUERIES, 2, generator=g)  # (Lq, 2)
    Lq = reference.shape[0]
    if locations == "uniform":
        loc = torch.rand(N, Lq, M, L, P, 2, generator=g)
    else:
        theta = torch.arange(M) * (2 * math.pi / M)
        direction = torch.stack([theta.cos(), theta.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values  # (M, 2)
        offsets = direction.view(M, 1, 1, 2) * torch.arange(1, P + 1).view(1, 1, P, 1)  # (M, 1, P, 2) pixels
        offsets = offsets + 2.0 * torch.randn(N, Lq, M, L, P, 2, generator=g)
        level_size = spatial_shapes.flip(1).view(L, 1, 2)  # (L, 1, 2) as (W, H)
        loc = reference.view(1, Lq, 1, 1, 1, 2) + offsets / level_size
    weights = torch.randn(N, Lq, M, L * P, generator=g).softmax(-1).view(N, Lq, M, L, P)
    value = torch.randn(N, S, M, HEAD_DIM, generator=g)
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        start_index.to(device),
        loc.to(device, dtype),
        weights.to(device, dtype),
    )


def run_once(inputs: Inputs, backend: str, backward: bool) -> list[torch.Tensor]:
    value, spatial_shapes, start_index, loc, weights = inputs
    if not backward:
        with torch.no_grad():
            return [ms_deform_attn(value, spatial_shapes, start_index, loc, weights, backend=backend)]
    leaves = [t.detach().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], spatial_shapes, start_index, leaves[1], leaves[2], backend=backend)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    return [out.detach(), *grads]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_times(fns: list[Callable[[], object]], device: str, repeats: int) -> list[float]:
    """Median wall time of each function; the functions take turns, so all see the same machine load."""
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
    # every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order (the raw Kineto events:
    # FunctionEvent totals attribute allocations to ops but do not order the frees)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def relative_error(low: list[torch.Tensor], high: list[torch.Tensor]) -> str:
    errors = [
        ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(low, high, strict=True)
    ]
    return " / ".join(f"{e:.1e}" for e in errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default: 3 CPU, 20 CUDA)")
    parser.add_argument("--locations", default="realistic", choices=["realistic", "uniform"])
    parser.add_argument("--workloads", default="encoder,decoder")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    repeats = args.repeats or (3 if device == "cpu" else 20)

    if device == "cpu":
        paths = [("reference", "reference", torch.float32), ("cpu", "cpu", torch.float32)]
    else:
        paths = [("reference fp32", "reference", torch.float32)] + [
            (f"triton {name}", "triton", dtype)
            for name, dtype in [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
        ]

    print(
        f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"locations: {args.locations}, median of {repeats} runs"
    )
    print()
    print(
        "| workload | path | fwd ms | speed-up | fwd+bwd ms | speed-up | fwd peak MiB | fwd+bwd peak MiB | "
        "ref / path memory |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    precision_rows = []
    for workload in args.workloads.split(","):
        inputs = [make_inputs(workload, args.locations, device, dtype) for _, _, dtype in paths]
        forwards = [functools.partial(run_once, x, path[1], False) for x, path in zip(inputs, paths, strict=True)]
        boths = [functools.partial(run_once, x, path[1], True) for x, path in zip(inputs, paths, strict=True)]
        forward_times = median_times(forwards, device, repeats)
        both_times = median_times(boths, device, repeats)
        memory_forward = [peak_memory(fn, device) / 2**20 for fn in forwards]
        memory_both = [peak_memory(fn, device) / 2**20 for fn in boths]
        fp32_results = None
        for i, (name, backend, dtype) in enumerate(paths):
            print(
                f"| {workload} (Lq={inputs[i][3].shape[1]}) | {name} | {forward_times[i] * 1e3:.1f} | "
                f"{forward_times[0] / forward_times[i]:.2f} | {both_times[i] * 1e3:.1f} | "
                f"{both_times[0] / both_times[i]:.2f} | {memory_forward[i]:.0f} | {memory_both[i]:.0f} | "
                f"{memory_both[0] / memory_both[i]:.2f} |",
                flush=True,
            )
            if backend == "triton":
                results = boths[i]()
                if dtype == torch.float32:
                    fp32_results = results
                elif fp32_results is not None:
                    precision_rows.append(f"| {workload} | {name} | {relative_error(results, fp32_results)} |")
    if precision_rows:
        print()
        print("Relative error vs Triton fp32 (output / grad value / grad locations / grad weights):")
        print()
        print("| workload | path | relative error |")
        print("|---|---|---|")
        print("\n".join(precision_rows))


if __name__ == "__main__":
    main()
