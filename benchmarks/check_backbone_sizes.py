"""Run every DAT variant as a ``features_only`` backbone at detection and classification sizes.

For each (variant, input size, batch) one forward and backward pass runs in a fresh subprocess and
the table reports whether it worked, the output strides, the time and the process's peak resident
memory (CPU) or peak allocated memory (CUDA). The official DAT crashes or silently uses a wrong shift
mask at every size but its construction size; ours must work everywhere.

    python benchmarks/check_backbone_sizes.py                       # all variants, all sizes, batch 1 and 3
    python benchmarks/check_backbone_sizes.py --models dat_tiny --sizes 800x1216 --grad-checkpointing
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import deformvision as dv

SIZES = ["224x224", "256x256", "320x224", "512x512", "800x1216"]


def run_one(model_name: str, size: str, batch: int, device: str, grad_checkpointing: bool) -> dict:
    h, w = (int(v) for v in size.split("x"))
    model = dv.create_model(model_name, features_only=True, out_indices=(0, 1, 2, 3)).to(device)
    model.set_grad_checkpointing(grad_checkpointing)
    x = torch.randn(batch, 3, h, w, device=device)
    start = time.perf_counter()
    features = model(x)
    sum(f.float().mean() for f in features).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    info = model.feature_info
    shapes_ok = all(
        f.shape == (batch, c, h // r, w // r)
        for f, c, r in zip(features, info.channels(), info.reduction(), strict=True)
    )
    grads_ok = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return {"ok": shapes_ok and grads_ok, "seconds": time.perf_counter() - start, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=dv.list_models("dat_*"))
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="HxW")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        model_name, size, batch = args.worker.split(":")
        print(json.dumps(run_one(model_name, size, int(batch), args.device, args.grad_checkpointing)))
        return

    print(f"features_only forward+backward on {args.device}, grad checkpointing {args.grad_checkpointing}\n")
    print("| model | input | batch | result | seconds | peak MiB |")
    print("|---|---|---|---|---|---|")
    for model_name in args.models:
        for size in args.sizes:
            for batch in args.batch_sizes:
                cmd = [sys.executable, __file__, "--device", args.device, "--worker", f"{model_name}:{size}:{batch}"]
                if args.grad_checkpointing:
                    cmd.append("--grad-checkpointing")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    error = (proc.stderr.strip().splitlines() or ["killed"])[-1][:80]
                    print(f"| {model_name} | {size} | {batch} | FAILED: {error} | - | - |", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                result = "ok" if r["ok"] else "WRONG SHAPES OR NON-FINITE GRADIENTS"
                print(
                    f"| {model_name} | {size} | {batch} | {result} | {r['seconds']:.1f} | {r['peak'] / 2**20:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
