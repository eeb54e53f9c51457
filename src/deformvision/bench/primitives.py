"""``deformvision.ops.linear`` and ``deformvision.ops.dropout`` against ``F.linear`` and ``F.dropout``.

Rows are the products of DAT-T (batch 8 at 224) and Deformable DETR (one 512x683 image: 7320 encoder
tokens), with the activation each model fuses into them, the DETR FFN's first half as the encoder runs it
(``linear_relu_dropout``) and a dropout of the encoder's residual branches. Passes: ``fwd`` (no
gradients: inference) and ``fwd+bwd`` (gradients of the input, weight and bias). The two take turns in every
repeat (:mod:`~deformvision.bench.measure`); the ratio is PyTorch's time over ours.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from deformvision.bench.measure import check_device, check_repeats, median_times
from deformvision.ops.dropout import dropout
from deformvision.ops.linear import ACTIVATIONS, linear, linear_relu_dropout

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
# (model, layer, tokens, in features, out features, dropout p): linear -> ReLU -> dropout in one call
FFN_ROWS = (("Deformable DETR", "encoder linear1 + ReLU + dropout 0.1", 7320, 256, 1024, 0.1),)
# (model, layer, tokens, features, p)
DROPOUT_ROWS = (("Deformable DETR", "encoder residual dropout 0.1", 7320, 256, 0.1),)
PASSES = ("fwd", "fwd+bwd")


def _product_operands(tokens: int, fan_in: int, fan_out: int, device: str, backward: bool) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, fan_in, generator=g).to(device).requires_grad_(backward)
    weight = (torch.randn(fan_out, fan_in, generator=g) / fan_in**0.5).to(device).requires_grad_(backward)
    bias = torch.randn(fan_out, generator=g).to(device).requires_grad_(backward)
    grad = torch.randn(tokens, fan_out, generator=g).to(device)
    return x, weight, bias, grad


def _linear_calls(row: tuple, device: str, backward: bool) -> list[Callable[[], object]]:
    _, _, tokens, fan_in, fan_out, activation = row
    x, weight, bias, grad = _product_operands(tokens, fan_in, fan_out, device, backward)
    torch_activation = ACTIVATIONS[activation]
    return [
        lambda: _run(lambda: linear(x, weight, bias, activation), grad, backward, (x, weight, bias)),
        lambda: _run(lambda: torch_activation(F.linear(x, weight, bias)), grad, backward, (x, weight, bias)),
    ]


def _ffn_calls(row: tuple, device: str, backward: bool) -> list[Callable[[], object]]:
    _, _, tokens, fan_in, fan_out, p = row
    x, weight, bias, grad = _product_operands(tokens, fan_in, fan_out, device, backward)
    return [
        lambda: _run(lambda: linear_relu_dropout(x, weight, bias, p), grad, backward, (x, weight, bias)),
        lambda: _run(lambda: F.dropout(F.relu(F.linear(x, weight, bias)), p), grad, backward, (x, weight, bias)),
    ]


def _dropout_calls(row: tuple, device: str, backward: bool) -> list[Callable[[], object]]:
    _, _, tokens, features, p = row
    x = torch.randn(tokens, features, device=device).requires_grad_(backward)
    grad = torch.randn(tokens, features, device=device)
    return [
        lambda: _run(lambda: dropout(x, p), grad, backward, (x,)),
        lambda: _run(lambda: F.dropout(x, p), grad, backward, (x,)),
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
    rows = [(row, f"{row[2]} x {row[3]} -> {row[4]} ({row[5]})", _linear_calls) for row in LINEAR_ROWS]
    rows += [(row, f"{row[2]} x {row[3]} -> {row[4]}", _ffn_calls) for row in FFN_ROWS]
    rows += [(row, f"{row[2]} x {row[3]}", _dropout_calls) for row in DROPOUT_ROWS]
    for row, size, calls in rows:
        for pass_name in PASSES:
            ours, theirs = median_times(calls(row, device, pass_name == "fwd+bwd"), device, repeats)
            print(
                f"| {row[0]} | {row[1]} | {size} | {pass_name} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} "
                f"| {theirs / ours:.2f} |",
                flush=True,
            )
