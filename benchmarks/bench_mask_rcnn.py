"""Mask R-CNN DAT-T beside torchvision's Mask R-CNN ResNet-50-FPN: training step and inference time and memory.

Both models are randomly initialised with the same number of classes (80 object classes: ours takes 80,
torchvision's 81 with its background), take the same ``(3, H, W)`` images in ``[0, 1]`` (default 800x1333,
which both models' transforms keep: min_size 800, max_size 1333) and the same targets (5 boxes with masks).

- train: ``model(images, targets)``, sum of the losses, backward (no optimizer step);
- infer: ``model(images)`` in eval mode without gradients. The mask head runs on the detections that
  pass the score threshold (up to 100 per image), and random models differ there (DAT-T's give none at
  0.05, R50's 100): both are built with ``box_score_thresh=0`` so that both run it on 100 per image.

Each (model, pass) runs in a fresh subprocess: median wall time over ``--repeats`` runs after
``--warmup`` runs, and peak memory. On CUDA the peak is ``torch.cuda.max_memory_allocated`` over what
was allocated before the runs; on CPU the process's peak resident set size over its resident set once
model and inputs are built (glibc told to return freed blocks over 64 KiB, ``MALLOC_MMAP_THRESHOLD_``).

    python benchmarks/bench_mask_rcnn.py --batch 1 --repeats 2
    python benchmarks/bench_mask_rcnn.py --device cuda --batch 2 --repeats 5 --grad-checkpointing
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torchvision

import deformvision as dv

MODELS = ("mask_rcnn_dat_tiny", "maskrcnn_resnet50_fpn")
NUM_CLASSES = 80


def resident_bytes() -> int:
    """The current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(name: str, grad_checkpointing: bool) -> torch.nn.Module:
    kwargs = {"box_score_thresh": 0.0}  # every random model then keeps 100 detections per image
    if name == "maskrcnn_resnet50_fpn":  # random init, no downloads; torchvision's labels include background
        return torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, **kwargs
        )
    model = dv.create_model(name, num_classes=NUM_CLASSES, **kwargs)
    model.set_grad_checkpointing(grad_checkpointing)
    return model


def make_inputs(batch: int, height: int, width: int, device: str, label_offset: int):
    """``batch`` images ``(3, height, width)`` and targets of 5 boxes each, labels shifted by ``label_offset``."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=generator).to(device))
        xy = torch.rand(5, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
        wh = (torch.rand(5, 2, generator=generator) * 0.3 + 0.05) * torch.tensor([width, height])
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(5, height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist(), strict=True):
            mask[y0:y1, x0:x1] = 1
        labels = torch.randint(0, NUM_CLASSES, (5,), generator=generator) + label_offset
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def run_one(args: argparse.Namespace) -> dict:
    """Time and peak memory of one (model, pass), in this process."""
    torch.manual_seed(0)
    height, width = args.size
    model = build(args.model, args.grad_checkpointing).to(args.device)
    images, targets = make_inputs(args.batch, height, width, args.device, int(args.model == "maskrcnn_resnet50_fpn"))
    model.train(args.mode == "train")
    detections = []

    def step() -> None:
        if args.mode == "train":
            losses = model(images, targets)
            sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                detections[:] = model(images)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    if args.device.startswith("cuda"):
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    count = sum(len(d["boxes"]) for d in detections) / max(len(detections), 1) if detections else None
    return {"seconds": statistics.median(times), "peak": peak, "detections": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grad-checkpointing", action="store_true", help="DAT blocks recomputed in backward")
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)  # a child process's row
    parser.add_argument("--mode", choices=("train", "infer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model:
        print(json.dumps(run_one(args)))
        return

    rows = {}
    for mode in ("train", "infer"):
        for model in MODELS:
            command = [
                sys.executable,
                __file__,
                "--model",
                model,
                "--mode",
                mode,
                "--size",
                *map(str, args.size),
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
                "--warmup",
                str(args.warmup),
                "--device",
                args.device,
            ]
            command += ["--grad-checkpointing"] if args.grad_checkpointing else []
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if result.returncode != 0:
                sys.exit(f"{model} {mode} failed:\n{result.stderr[-3000:]}")
            rows[model, mode] = json.loads(result.stdout.strip().splitlines()[-1])

    height, width = args.size
    print(
        f"device {args.device}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch} of {height}x{width}, median of {args.repeats} "
        f"after {args.warmup} warm-up, grad checkpointing {args.grad_checkpointing}\n"
    )
    ours, ref = MODELS
    print(f"| pass | {ours} s | peak MiB | {ref} s | peak MiB | time ratio (DAT/R50) | memory ratio | detections/img |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode in ("train", "infer"):
        a, b = rows[ours, mode], rows[ref, mode]
        dets = "" if a["detections"] is None else f"{a['detections']:.0f} / {b['detections']:.0f}"
        print(
            f"| {mode} | {a['seconds']:.2f} | {a['peak'] / 2**20:.0f} | {b['seconds']:.2f} | {b['peak'] / 2**20:.0f} "
            f"| {a['seconds'] / b['seconds']:.2f} | {a['peak'] / max(b['peak'], 1):.2f} | {dets} |"
        )


if __name__ == "__main__":
    main()
