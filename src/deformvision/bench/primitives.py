"""``deformvision.ops.linear`` and ``deformvision.ops.dropout`` against ``F.linear`` and ``F.dropout``.

Rows are the products of DAT-T (batch 8 at 224) and Deformable DETR (one 512x683 image: 7320 encoder
tokens), with the activation each model fuses into them, and the DETR FFN's dropout. Passes: ``fwd`` (no
gradients: inference) and ``fwd+bwd`` (gradients of the input, weight and bias). The two take turns in every
repeat (:mod:`~deformvision.bench.measure`); the ratio is PyTorch's time over ours.
"""

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from deformvision.bench.measure import check_device, check_repeats, round_times
from deformvision.ops.dropout import dropout
from deformvision.ops.linear import linear

# (model, layer, tokens, in features, out features, activation)
LINEAR_ROWS = (
    ("DAT-T", "stage 1 fc1", 8 * 56 * 56, 96, 384, "gelu"),
    ("DAT-T", "stage 1 fc2", 8 * 56 * 56, 384, 96, "none"),
    ("DAT-T", "stage 1 qkv", 8 * 56 * 56, 96, 288, "none"),
    ("DAT-T", "stage 3 fc1", 8 * 14 * 14, 384, 1536, "gelu"),
    ("DAT-T", "stage 3 fc2", 8 * 14 * 14, 1536, 384, "none"),
    ("Deformable DETR", "encoder linear1", 7320, 256, 1024, "relu"),
    ("Deformable DETR", "encoder linear2", 7320, 1024, 256, "none"),
    ("Deformable DETR", "encoder value_proj", 7320, 256, 256, "none"),
)
DROPOUT_ROW = ("Deformable DETR", "encoder FFN dropout 0.1", 7320, 1024)
PASSES = ("fwd", "fwd+bwd")
_TORCH_ACTIVATION = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu}


def _linear_calls(shape: tuple, device: str, backward: bool) -> list[Callable[[], object]]:
    _, _, tokens, fan_in, fan_out, activation = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, fan_in, generator=g).to(device).requires_grad_(backward)
    weight = (torch.randn(fan_out, fan_in, generator=g) / fan_in**0.5).to(device).requires_grad_(backward)
    bias = torch.randn(fan_out, generator=g).to(device).requires_grad_(backward)
    grad = torch.randn(tokens, fan_out, generator=g).to(device)

    def theirs() -> object:
        return _run(lambda: _TORCH_ACTIVATION[activation](F.linear(x, weight, bias)), grad, backward, (x, weight, bias))

    def ours() -> object:
        return _run(lambda: linear(x, weight, bias, activation), grad, backward, (x, weight, bias))

    return [ours, theirs]


def _dropout_calls(device: str, backward: bool) -> list[Callable[[], object]]:
    _, _, tokens, features = DROPOUT_ROW
    x = torch.randn(tokens, features, device=device).requires_grad_(backward)
    grad = torch.randn(tokens, features, device=device)
    return [
        lambda: _run(lambda: dropout(x, 0.1), grad, backward, (x,)),
        lambda: _run(lambda: F.dropout(x, 0.1), grad, backward, (x,)),
    ]


def _run(forward: Callable[[], torch.Tensor], grad: torch.Tensor, backward: bool, leaves: tuple) -> object:
    if not backward:
        with torch.no_grad():
            return forward()
    for leaf in leaves:
        leaf.grad = None
    out = forward()
    out.backward(grad)
    return out


def run(device: str = "cpu", repeats: int = 5) -> None:
    """Print the table: per row and pass, the median ms of ours and of PyTorch's, and the ratio."""
    check_device(device)
    check_repeats(repeats)
    print(
        f"deformvision.ops linear/dropout vs torch.nn.functional on {device} ({torch.get_num_threads()} threads, "
        f"torch {torch.__version__}), median of {repeats}\n"
    )
    print("| model | layer | tokens x in -> out | pass | ours ms | torch ms | torch / ours |")
    print("|---|---|---|---|---:|---:|---:|")
    rows = [(shape, f"{shape[2]} x {shape[3]} -> {shape[4]} ({shape[5]})") for shape in LINEAR_ROWS]
    rows.append((DROPOUT_ROW, f"{DROPOUT_ROW[2]} x {DROPOUT_ROW[3]}"))
    for shape, size in rows:
        for pass_name in PASSES:
            backward = pass_name == "fwd+bwd"
            fns = _dropout_calls(device, backward) if shape is DROPOUT_ROW else _linear_calls(shape, device, backward)
            ours, theirs = (statistics.median(t) for t in round_times(fns, device, repeats))
            print(
                f"| {shape[0]} | {shape[1]} | {size} | {pass_name} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} "
                f"| {theirs / ours:.2f} |",
                flush=True,
            )
