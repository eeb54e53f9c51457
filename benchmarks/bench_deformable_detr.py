"""Benchmark of Deformable DETR R50 on CPU: ours against Hugging Face transformers' ``DeformableDetr``.

Both models are full size (d_model 256, 6 + 6 layers, FFN 1024, 4 levels, 4 points, 300 queries, 91
classes) with the same random weights: a randomly initialised Hugging Face ``DeformableDetrForObjectDetection``
(its own ResNet-50 backbone, every floating tensor perturbed so that no zero-initialised head hides work)
is loaded into ours through :meth:`DeformableDETR.checkpoint_filter`. Variants: multi-scale, box refinement,
two-stage (with box refinement).

Cases, on one ``(1, 3, H, W)`` image with a padded bottom/right strip (so masks and valid ratios matter):

- inference: ``eval()``, ``torch.no_grad()``, the forward pass;
- train step: ``train()`` (dropout 0.1), forward, the Hungarian-matched loss with auxiliary (and two-stage
  encoder) losses for 5 target boxes, backward. Hugging Face computes its loss inside ``forward`` from
  ``labels``; ours with :class:`SetCriterion` and the official weights. The trainable parameters are the
  same in both: Hugging Face freezes its whole ResNet backbone (its name filter matches no parameter of the
  transformers ResNet), so ours is frozen the same way.

The two models take turns within each repeat (a busy machine slows both alike). Reported: median wall time
and spread (min - max) over ``--repeats`` runs after one warm-up, the ratio Hugging Face / ours, and the
peak of live bytes of PyTorch's CPU allocator during one run above what was live before it (from the
allocation events of ``torch.profiler``; scratch buffers of MKL/oneDNN are not counted).

Usage: python benchmarks/bench_deformable_detr.py [--size 512x683] [--threads 1,2] [--repeats 5]
       [--variants multi_scale,box_refine,two_stage] [--cases inference,train]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import transformers

from deformvision.models import create_model
from deformvision.models.deformable_detr.criterion import SetCriterion, weight_dict, weighted_loss
from deformvision.models.deformable_detr.matcher import HungarianMatcher

NUM_CLASSES, NUM_QUERIES, NUM_TARGETS = 91, 300, 5
VARIANTS = {  # name -> (our model, Hugging Face flags)
    "multi_scale": ("deformable_detr_r50", {}),
    "box_refine": ("deformable_detr_r50_box_refine", {"with_box_refine": True}),
    "two_stage": ("deformable_detr_r50_two_stage", {"with_box_refine": True, "two_stage": True}),
}


def build_pair(variant: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The Hugging Face model of ``variant`` (random, perturbed) and ours with the same weights."""
    name, flags = VARIANTS[variant]
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage2", "stage3", "stage4"]),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=NUM_CLASSES,
        num_queries=NUM_QUERIES,
        two_stage_num_proposals=NUM_QUERIES,
        auxiliary_loss=True,
        **flags,
    )
    torch.manual_seed(0)
    theirs = transformers.DeformableDetrForObjectDetection(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in [*theirs.named_parameters(), *theirs.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if key.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))
    ours = create_model(name, num_classes=NUM_CLASSES, num_queries=NUM_QUERIES)
    ours.load_state_dict(ours.checkpoint_filter(theirs.state_dict()))
    frozen = sum(p.numel() for p in theirs.model.backbone.parameters() if not p.requires_grad)
    if frozen == sum(p.numel() for p in theirs.model.backbone.parameters()):
        ours.backbone.requires_grad_(False)
    trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, theirs)]
    if trainable[0] != trainable[1]:
        raise RuntimeError(f"trainable parameters differ: ours {trainable[0]}, Hugging Face {trainable[1]}")
    return ours, theirs


def make_batch(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """One image whose bottom/right 10% are padding, its mask (True = padding) and 5 target boxes."""
    g = torch.Generator().manual_seed(2)
    images = torch.randn(1, 3, height, width, generator=g)
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[:, height - height // 10 :] = True
    mask[:, :, width - width // 10 :] = True
    images[:, :, mask[0]] = 0
    centres = 0.2 + 0.6 * torch.rand(NUM_TARGETS, 2, generator=g)
    sizes = 0.05 + 0.2 * torch.rand(NUM_TARGETS, 2, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (NUM_TARGETS,), generator=g)
    return images, mask, [{"labels": labels, "boxes": torch.cat([centres, sizes], 1)}]


def cases(
    ours: torch.nn.Module, theirs: torch.nn.Module, batch: tuple, two_stage: bool
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """case -> (ours, Hugging Face) zero-argument functions."""
    images, mask, targets = batch
    pixel_mask = (~mask).long()
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    weights = weight_dict(len(ours.transformer.decoder.layers), two_stage)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(), weights)

    def ours_inference() -> object:
        ours.eval()
        with torch.no_grad():
            return ours(images, mask)

    def theirs_inference() -> object:
        theirs.eval()
        with torch.no_grad():
            return theirs(pixel_values=images, pixel_mask=pixel_mask)

    def ours_train() -> object:
        ours.train()
        ours.zero_grad(set_to_none=True)
        loss = weighted_loss(criterion(ours(images, mask), targets), weights)
        loss.backward()
        return loss.item()

    def theirs_train() -> object:
        theirs.train()
        theirs.zero_grad(set_to_none=True)
        loss = theirs(pixel_values=images, pixel_mask=pixel_mask, labels=hf_labels).loss
        loss.backward()
        return loss.item()

    return {"inference": (ours_inference, theirs_inference), "train": (ours_train, theirs_train)}


def timings(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Wall times of each function over ``repeats`` turns (one warm-up each first)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return times


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak live bytes of the CPU allocator during ``fn`` above those live before it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512x683", help="image HxW")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cases", default="inference,train")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    height, width = (int(x) for x in args.size.split("x"))
    batch = make_batch(height, width)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, image {height}x{width}")
    print(f"median (min - max) of {args.repeats} runs, ours and Hugging Face interleaved")
    print()
    print("| variant | case | threads | ours ms | HF ms | HF / ours | ours peak MiB | HF peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        ours, theirs = build_pair(variant)
        fns = cases(ours, theirs, batch, VARIANTS[variant][1].get("two_stage", False))
        for case in args.cases.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                ours_t, theirs_t = timings(list(fns[case]), args.repeats)
                memory = ["-", "-"] if args.no_memory else [f"{peak_memory(fn) / 2**20:.0f}" for fn in fns[case]]
                spread = [
                    f"{statistics.median(t) * 1e3:.0f} ({min(t) * 1e3:.0f} - {max(t) * 1e3:.0f})"
                    for t in (ours_t, theirs_t)
                ]
                ratio = statistics.median(theirs_t) / statistics.median(ours_t)
                print(
                    f"| {variant} | {case} | {threads} | {spread[0]} | {spread[1]} | {ratio:.2f} | "
                    f"{memory[0]} | {memory[1]} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
