"""``F.linear`` with an optional fused ReLU or GELU, through oneDNN on the CPU.

On the CPU, PyTorch's ``F.linear`` is one MKL matrix product on an output into which the bias was first
copied, and an activation after it is one more pass over that output. oneDNN's matmul primitive (the one
``torch.compile`` uses for linear layers on the CPU, ``torch.ops.mkldnn._linear_pointwise``) adds the bias
and applies ReLU/GELU while it writes the output. At the sizes of DAT and Deformable DETR a float32 product
is 1.1-1.6x faster that way on one thread (1.05-1.3x with its backward), and a fused GELU costs about a fifth
of a separate one (``deformvision bench primitives`` prints the table). GELU is fused only when no gradient is
needed: its backward needs its input, which the fused call does not keep.

:func:`linear` takes that path for float32 CPU tensors whenever PyTorch was built with oneDNN, and is
differentiable there (:class:`_OneDNNLinear`). In every other case -- other devices or dtypes, autocast,
``torch.compile`` (Inductor chooses its own kernels), tracing, an active ``TorchDispatchMode`` (the FLOP
counter, fake tensors), a PyTorch without the op -- it is exactly ``activation(F.linear(x, weight, bias))``.
"""

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from deformvision.ops._eager_cpu import eager_cpu
from deformvision.ops.dropout import dropout, scaled_keep_mask

ACTIVATIONS = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu}  # name -> PyTorch's function


@cache
def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's fused linear op and it agrees with ``F.linear`` on a small case."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((3, 8), (5, 8), (5,)))
    try:
        out = op(x, weight, bias, "none", [], "")
    except RuntimeError:
        return False
    return bool(torch.allclose(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5))


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    """``activation(x @ weight.T + bias)`` in one oneDNN call; ``x``: ``(..., in)``, ``weight``: ``(out, in)``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


def _check_fit(x: Tensor, weight: Tensor) -> None:
    if x.dim() == 0 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit: need x (..., in) and weight (out, in)"
        )


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _use_onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.dim() >= 2
        and x.numel() > 0
        and weight.numel() > 0
        and eager_cpu(x)
        and not torch.is_autocast_enabled("cpu")  # autocast casts the product: F.linear must see it
        and onednn_available()
    )


class _OneDNNLinear(torch.autograd.Function):
    """``activation(x @ weight.T + bias)`` for ``activation`` ``none`` or ``relu`` (ReLU's backward needs
    only its output), keeping ``x``, ``weight`` (and the ReLU output) for backward as ``F.linear`` does.

    With dropout ``p`` > 0 (after a ReLU only) the ReLU output is multiplied in place by a dropout mask
    (``1 / (1 - p)`` or 0) that is not kept: an output element is positive exactly where the ReLU passed it
    and the mask kept it, so the output alone gives the backward (``grad / (1 - p)`` there, else 0).

    Backward: the input gradient ``grad @ weight`` through oneDNN too (faster than MKL at these sizes), the
    weight gradient ``grad.T @ x`` through ``torch.mm`` (MKL is faster for that long reduction).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, p: float) -> Tensor:
        if p > 0 and activation != "relu":
            raise ValueError(
                f"dropout in the fused linear needs activation 'relu' (its backward reads the mask "
                f"off the output), got {activation!r}"
            )
        out = _onednn(x, weight, bias, activation)  # (..., out)
        if p > 0:
            out.mul_(scaled_keep_mask(out, p))
        ctx.save_for_backward(x, weight, out if activation == "relu" else None)
        ctx.has_bias = bias is not None
        ctx.dropout_scale = 1.0 / (1.0 - p)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, relu_out = ctx.saved_tensors
        if relu_out is not None:
            grad_out = torch.ops.aten.threshold_backward(grad_out, relu_out, 0)  # 0 where clipped or dropped
            if ctx.dropout_scale != 1.0:
                grad_out.mul_(ctx.dropout_scale)
        need_x, need_weight, need_bias, _, _ = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_x = _onednn(grad_out, weight.t(), None, "none")  # (..., in)
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        if need_weight:
            grad_weight = grad_2d.t().mm(x.reshape(-1, x.shape[-1]))  # (out, in)
        if need_bias and ctx.has_bias:
            grad_bias = grad_2d.sum(0)  # (out,)
        return grad_x, grad_weight, grad_bias, None, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none") -> Tensor:
    """``activation(F.linear(x, weight, bias))``, through oneDNN for float32 CPU tensors (module docstring).

    Args:
        x: ``(..., in)``.
        weight: ``(out, in)``.
        bias: ``(out,)`` or ``None``.
        activation: ``"none"``, ``"relu"`` or ``"gelu"`` (exact, erf-based GELU).

    Returns:
        ``(..., out)``. Values agree with ``F.linear`` to float32 rounding (the products are summed in
        another order); gradients flow to all three tensors.

    Example:
        >>> x, weight, bias = torch.randn(4, 8), torch.randn(16, 8), torch.randn(16)
        >>> torch.allclose(linear(x, weight, bias, "relu"), F.relu(F.linear(x, weight, bias)), atol=1e-5)
        True
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    _check_fit(x, weight)
    if not _use_onednn(x, weight, bias):
        return ACTIVATIONS[activation](F.linear(x, weight, bias))
    if not _needs_grad(x, weight, bias):
        return _onednn(x, weight, bias, activation)
    if activation == "gelu":  # GELU's backward needs its input, which the fused call does not keep
        return F.gelu(_OneDNNLinear.apply(x, weight, bias, "none", 0.0))
    return _OneDNNLinear.apply(x, weight, bias, activation, 0.0)


def linear_relu_dropout(x: Tensor, weight: Tensor, bias: Tensor | None, p: float) -> Tensor:
    """``F.dropout(F.relu(F.linear(x, weight, bias)), p, training=True)`` (a transformer FFN's first half).

    On the oneDNN path with gradients it keeps, besides ``x`` and ``weight``, only its output: no ReLU output
    and no dropout mask (see :class:`_OneDNNLinear`); the mask is drawn as :func:`deformvision.ops.dropout`
    draws it. ``p = 0`` is ``linear(x, weight, bias, "relu")``.

    Example:
        >>> x, weight = torch.randn(1000, 8), torch.randn(64, 8)
        >>> y = linear_relu_dropout(x, weight, None, 0.5)
        >>> bool((y >= 0).all()), bool(((y == 0) & (F.linear(x, weight) > 0)).any())
        (True, True)
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a dropout probability in [0, 1) (1 would zero the FFN), got {p!r}")
    _check_fit(x, weight)
    if p == 0:
        return linear(x, weight, bias, "relu")
    if _needs_grad(x, weight, bias) and _use_onednn(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias, "relu", float(p))
    return dropout(linear(x, weight, bias, "relu"), p)
