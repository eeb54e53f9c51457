"""Peak memory and time of one backbone forward + backward, with and without gradient checkpointing.

Works for every model with ``set_grad_checkpointing`` (``dat_tiny``..., ``resnet50``...); the gradients
are the same either way (tests/models/test_dat_timm.py, tests/models/test_resnet.py).

Each setting runs in a fresh subprocess. On CUDA the peak is ``torch.cuda.max_memory_allocated``
during the step over the memory allocated before it; on CPU it is the process's peak resident set size
(``ru_maxrss``) over its resident set once the model and input are built, with glibc told to return
every block over 64 KiB to the system when freed (``MALLOC_MMAP_THRESHOLD_``), so that the resident
set follows the live tensors. The forward pass also reports the bytes autograd saves for backward.

    python benchmarks/bench_grad_checkpointing.py --model resnet50 --size 800x1216 --batch 1
    python benchmarks/bench_grad_checkpointing.py --model resnet50 --classifier --size 224x224 --batch 16
    python benchmarks/bench_grad_checkpointing.py --model dat_tiny --classifier --size 224x224 --batch 8
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

import deformvision as dv


def resident_bytes() -> int:
    """The current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    h, w = (int(v) for v in args.size.split("x"))
    kwargs = {"num_classes": 10} if args.classifier else {"features_only": True, "out_indices": (1, 2, 3)}
    model = dv.create_model(args.model, **kwargs).to(args.device).train()
    model.set_grad_checkpointing(args.grad_checkpointing)
    x = torch.randn(args.batch, 3, h, w, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    loss = out.logsumexp(-1).sum() if args.classifier else sum(f.square().mean() for f in out)
    loss.backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"seconds": time.perf_counter() - start, "peak_bytes": peak, "saved_bytes": sum(saved.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", choices=dv.list_models("dat_*") + dv.list_models("resnet*"))
    parser.add_argument("--classifier", action="store_true", help="the classifier instead of the backbone (C3-C5)")
    parser.add_argument("--size", default="800x1216", help="HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grad-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args)))
        return
    what = "classifier" if args.classifier else "backbone, stages 1-3 (strides 8-32)"
    print(f"{args.model} {what}, batch {args.batch} at {args.size}, {args.device}")
    results = {}
    for enable in (False, True):
        command = [sys.executable, __file__, "--child", *sys.argv[1:]] + (["--grad-checkpointing"] if enable else [])
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        results[enable] = json.loads(output.strip().splitlines()[-1])
        r = {k: v / 2**20 if k.endswith("bytes") else v for k, v in results[enable].items()}
        print(
            f"  grad checkpointing {'on ' if enable else 'off'}: peak {r['peak_bytes']:6.0f} MiB, saved for backward "
            f"{r['saved_bytes']:6.0f} MiB, {r['seconds']:.2f} s"
        )
    saved = 1 - results[True]["peak_bytes"] / results[False]["peak_bytes"]
    print(f"  peak memory saved: {saved:.0%}")


if __name__ == "__main__":
    main()
