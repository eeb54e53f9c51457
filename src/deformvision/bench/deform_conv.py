"""``deform_conv2d`` against ``torchvision.ops.deform_conv2d``, side by side.

Workload: input ``(batch, channels, size, size)``, a 3x3 kernel with ``out_channels`` outputs, stride 1,
padding 1, offsets of a couple of pixels (Gaussian, std 2), ``offset_groups`` offset groups. For forward
(inputs without gradients: inference), "fwd (grad)" (the forward alone with inputs that require gradients:
what a training step's forward costs) and forward+backward (gradients of input, offset, weight, bias and
mask), with and without mask, the two ops take turns in every repeat; the table gives the median time of
each, the speed-up (torchvision's time / ours) and the peak memory of one call
(:mod:`~deformvision.bench.measure`).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision

from deformvision.bench.measure import check_device, check_repeats, median_times, peak_memory
from deformvision.ops.deform_conv import deform_conv2d

OPS = {"deformvision": deform_conv2d, "torchvision": torchvision.ops.deform_conv2d}
MODES = ("fwd", "fwd_grad", "fwd_bwd")
DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class Workload:
    """The sizes of one deformable convolution (3x3 kernel, stride 1, padding 1)."""

    batch: int = 2
    channels: int = 256
    out_channels: int = 256
    size: int = 64
    offset_groups: int = 1

    def __post_init__(self) -> None:
        for name in ("batch", "channels", "out_channels", "size", "offset_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.channels % self.offset_groups:
            raise ValueError(f"channels ({self.channels}) must be divisible by offset_groups ({self.offset_groups})")


def make_inputs(workload: Workload, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """input, offset, weight, bias, mask (seeded)."""
    g = torch.Generator().manual_seed(0)
    n, c, s, o, og = workload.batch, workload.channels, workload.size, workload.out_channels, workload.offset_groups
    tensors = [
        torch.randn(n, c, s, s, generator=g),
        2.0 * torch.randn(n, 2 * og * 9, s, s, generator=g),
        torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5),
        torch.randn(o, generator=g),
        torch.rand(n, og * 9, s, s, generator=g),
    ]
    return [t.to(device=device, dtype=dtype) for t in tensors]


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


def run(
    workload: Workload,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 7,
    memory: bool = True,
) -> None:
    """Print the comparison table of ``workload`` on ``device`` (``repeats`` timed rounds)."""
    check_device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_repeats(repeats)
    tensors = make_inputs(workload, device, getattr(torch, dtype))
    w = workload
    print(
        f"input ({w.batch}, {w.channels}, {w.size}, {w.size}), 3x3 kernel, {w.out_channels} out channels, "
        f"offset_groups={w.offset_groups}, {dtype} on {device}, {torch.get_num_threads()} thread(s), "
        f"median of {repeats}"
    )
    header = f"{'pass':<11} {'mask':<5} {'deformvision ms':>16} {'torchvision ms':>15} {'speed-up':>9}"
    if memory:
        header += f" {'ours peak MB':>13} {'tv peak MB':>11}"
    print(header)
    print("-" * len(header))
    for mode in MODES:
        for use_mask in (False, True):
            calls = [make_call(op, tensors, use_mask, mode) for op in OPS.values()]
            ours, theirs = median_times(calls, device, repeats)
            name = mode.replace("_", "+").replace("+grad", " (grad)")
            row = (
                f"{name:<11} {'yes' if use_mask else 'no':<5} "
                f"{ours * 1e3:>16.1f} {theirs * 1e3:>15.1f} {theirs / ours:>8.2f}x"
            )
            if memory:
                peaks = [peak_memory(call, device) / 2**20 for call in calls]
                row += f" {peaks[0]:>13.1f} {peaks[1]:>11.1f}"
            print(row, flush=True)
