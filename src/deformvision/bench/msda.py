"""Multi-scale deformable attention: every available path against the grid_sample reference.

Workloads (Deformable DETR at 800x1066-ish input, batch 2, d_model 256 = 8 heads x 32 channels, 4 points):

- encoder: value of 4 levels (100, 134), (50, 67), (25, 34), (13, 17) (S = 17,821), one query per value
  position (Lq = S);
- decoder: the same value, 300 queries.

Sampling locations imitate a trained model by default (``realistic``): encoder queries sample around their
own pixel (the official initial offset pattern, 1..4 pixels in 8 directions, plus Gaussian noise of 2
pixels), decoder queries around uniformly random reference points; attention weights are a softmax over
levels and points. ``uniform`` draws them uniformly in [0, 1] instead (worst case for cache locality).

Paths: on the CPU the reference and our CPU kernels; on CUDA the reference, our Triton kernels in float32,
float16 and bfloat16, and the official CUDA op (``MultiScaleDeformableAttention``, built from the
Deformable DETR repository) where it is installed. Per path: forward and forward+backward median time, the
speed-up over the reference measured in the same run, and peak memory (:mod:`~deformvision.bench.measure`).
On CUDA the relative error of the float16/bfloat16 results against float32 Triton is printed too.
"""

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable

import torch

from deformvision.bench.measure import check_device, check_repeats, median_times, peak_memory
from deformvision.ops.msda import ms_deform_attn

LEVELS = [(100, 134), (50, 67), (25, 34), (13, 17)]
BATCH, HEADS, HEAD_DIM, POINTS = 2, 8, 32, 4
DECODER_QUERIES = 300
WORKLOADS = ("encoder", "decoder")
LOCATIONS = ("realistic", "uniform")
OFFICIAL_MODULE = "MultiScaleDeformableAttention"  # the official CUDA extension (models/ops/setup.py)
OFFICIAL_IM2COL_STEP = 64  # the official MSDeformAttn's default

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
    """The output (and with ``backward`` the gradients of value, locations and weights) of one path."""
    if backend == "official":
        return _run_official(inputs, backward)
    value, spatial_shapes, start_index, loc, weights = inputs
    if not backward:
        with torch.no_grad():
            return [ms_deform_attn(value, spatial_shapes, start_index, loc, weights, backend=backend)]
    leaves = [t.detach().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], spatial_shapes, start_index, leaves[1], leaves[2], backend=backend)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    return [out.detach(), *grads]


def _run_official(inputs: Inputs, backward: bool) -> list[torch.Tensor]:
    """The official CUDA extension's forward (and backward, given a gradient of ones)."""
    official = importlib.import_module(OFFICIAL_MODULE)
    value, spatial_shapes, start_index, loc, weights = inputs
    args = (value, spatial_shapes, start_index, loc, weights)
    out = official.ms_deform_attn_forward(*args, OFFICIAL_IM2COL_STEP)
    if not backward:
        return [out]
    grads = official.ms_deform_attn_backward(*args, torch.ones_like(out), OFFICIAL_IM2COL_STEP)
    return [out, *grads]


def relative_error(low: list[torch.Tensor], high: list[torch.Tensor]) -> str:
    """max |low - high| / max |high| of each pair, as text."""
    errors = [
        ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(low, high, strict=True)
    ]
    return " / ".join(f"{e:.1e}" for e in errors)


def paths(device: str) -> list[tuple[str, str, torch.dtype]]:
    """(name, backend, dtype) of every path measured on ``device``; the reference first."""
    if device == "cpu":
        return [("reference", "reference", torch.float32), ("cpu", "cpu", torch.float32)]
    found = [("reference fp32", "reference", torch.float32)]
    found += [
        (f"triton {name}", "triton", dtype)
        for name, dtype in [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
    ]
    if importlib.util.find_spec(OFFICIAL_MODULE) is not None:
        found.append(("official CUDA fp32", "official", torch.float32))
    return found


def run(
    device: str = "cpu",
    repeats: int = 3,
    locations: str = "realistic",
    workloads: tuple[str, ...] = WORKLOADS,
) -> None:
    """Print the comparison table on ``device`` (``repeats`` timed rounds per case)."""
    check_device(device)
    check_repeats(repeats)
    if locations not in LOCATIONS:
        raise ValueError(f"locations must be one of {', '.join(LOCATIONS)}, got {locations!r}")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        raise ValueError(f"workloads must be among {', '.join(WORKLOADS)}, got {', '.join(workloads) or 'none'}")
    measured = paths(device)
    print(
        f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"locations: {locations}, median of {repeats} runs\n"
    )
    print(
        "| workload | path | fwd ms | speed-up | fwd+bwd ms | speed-up | fwd peak MiB | fwd+bwd peak MiB | "
        "ref / path memory |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    precision_rows = []
    for workload in workloads:
        inputs = [make_inputs(workload, locations, device, dtype) for _, _, dtype in measured]
        backends = [backend for _, backend, _ in measured]
        calls: dict[bool, list[Callable[[], list[torch.Tensor]]]] = {
            backward: [functools.partial(run_once, x, b, backward) for x, b in zip(inputs, backends, strict=True)]
            for backward in (False, True)
        }
        forward_times = median_times(calls[False], device, repeats)
        both_times = median_times(calls[True], device, repeats)
        memory_forward = [peak_memory(fn, device) / 2**20 for fn in calls[False]]
        memory_both = [peak_memory(fn, device) / 2**20 for fn in calls[True]]
        fp32_results = None
        for i, (name, backend, dtype) in enumerate(measured):
            print(
                f"| {workload} (Lq={inputs[i][3].shape[1]}) | {name} | {forward_times[i] * 1e3:.1f} | "
                f"{forward_times[0] / forward_times[i]:.2f} | {both_times[i] * 1e3:.1f} | "
                f"{both_times[0] / both_times[i]:.2f} | {memory_forward[i]:.0f} | {memory_both[i]:.0f} | "
                f"{memory_both[0] / memory_both[i]:.2f} |",
                flush=True,
            )
            if backend == "triton":
                results = calls[True][i]()
                if dtype == torch.float32:
                    fp32_results = results
                elif fp32_results is not None:
                    precision_rows.append(f"| {workload} | {name} | {relative_error(results, fp32_results)} |")
    if precision_rows:
        print("\nRelative error vs Triton fp32 (output / grad value / grad locations / grad weights):\n")
        print("| workload | path | relative error |")
        print("|---|---|---|")
        print("\n".join(precision_rows))
