"""Training memory and time with and without ``set_grad_checkpointing()``, side by side.

Prints a markdown table: for each model, one forward+backward step (median of ``--repeats`` after a
warm-up) and the peak memory it needs (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak
resident memory above what the process held before the warm-up step, each row in a fresh subprocess
so rows do not share a peak). The gradients themselves are equal (tests/models/test_dat_timm.py,
tests/models/test_resnet.py).

    python benchmarks/bench_grad_checkpointing.py --models dat_tiny resnet50 --batch 8 --size 224
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import deformvision as dv


def measure(name: str, checkpointing: bool, batch: int, size: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = dv.create_model(name).to(device).train()
    if checkpointing:
        model.set_grad_checkpointing()
    x = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    # the baseline is the model and the input; the peak adds activations and gradients (equal in size either way)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"seconds": statistics.median(times), "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dat_tiny", "resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--row", nargs=2, metavar=("MODEL", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:  # one measurement, in this (fresh) process
        result = measure(args.row[0], args.row[1] == "1", args.batch, args.size, args.device, args.repeats)
        print(json.dumps(result))
        return

    print(f"device {args.device}, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads\n")
    print("| model | plain ms | checkpointed ms | time ratio | plain peak MiB | checkpointed peak MiB | memory ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        rows = []
        for checkpointing in ("0", "1"):
            command = [sys.executable, __file__, "--row", name, checkpointing, "--batch", str(args.batch),
                       "--size", str(args.size), "--repeats", str(args.repeats), "--device", args.device]  # fmt: skip
            rows.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
        plain, ckpt = rows
        print(
            f"| {name} | {plain['seconds'] * 1e3:.0f} | {ckpt['seconds'] * 1e3:.0f} | "
            f"{ckpt['seconds'] / plain['seconds']:.2f} | {plain['peak'] / 2**20:.0f} | {ckpt['peak'] / 2**20:.0f} | "
            f"{ckpt['peak'] / max(plain['peak'], 1):.2f} |"
        )


if __name__ == "__main__":
    main()
