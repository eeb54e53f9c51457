"""``fc2(gelu(fc1(x)))`` that keeps less for backward: the GELU output is recomputed, not stored.

Autograd through ``Linear -> GELU -> Linear`` stores the hidden pre-activation (for GELU's backward)
*and* the hidden activation (for ``fc2``'s weight gradient): two tensors of the MLP's widest size.
:func:`linear_gelu_linear` stores only the first and recomputes the GELU in the backward pass, which
costs one elementwise GELU and saves a quarter of a transformer block's activations at ratio 4.
Forward values and gradients are those of the plain composition. The products go through
:func:`deformvision.ops.linear` (oneDNN on float32 CPU tensors).
"""

import torch
import torch.nn.functional as F

from deformvision.ops.linear import linear


class _LinearGeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        h = linear(x, w1, b1)  # ..., hidden
        ctx.save_for_backward(x, h, w1, w2)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return linear(F.gelu(h), w2, b2)

    @staticmethod
    def backward(ctx, grad_out):
        x, h, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad_out2d = grad_out.reshape(-1, grad_out.shape[-1])  # N, out
        grad_w2 = grad_b2 = grad_x = grad_w1 = grad_b1 = None
        if need_w2:
            a = F.gelu(h)  # recomputed: not kept by the forward pass
            grad_w2 = grad_out2d.t().mm(a.reshape(-1, a.shape[-1]))  # out, hidden
        if need_b2 and ctx.has_bias[1]:
            grad_b2 = grad_out2d.sum(0)
        if need_x or need_w1 or need_b1:
            grad_h = torch.ops.aten.gelu_backward(linear(grad_out, w2.t()), h)  # ..., hidden
            grad_h2d = grad_h.reshape(-1, grad_h.shape[-1])  # N, hidden
            if need_w1:
                grad_w1 = grad_h2d.t().mm(x.reshape(-1, x.shape[-1]))  # hidden, in
            if need_b1 and ctx.has_bias[0]:
                grad_b1 = grad_h2d.sum(0)
            if need_x:
                grad_x = linear(grad_h, w1.t())  # ..., in
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def linear_gelu_linear(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
) -> torch.Tensor:
    """``F.linear(F.gelu(F.linear(x, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)`` with exact GELU.

    Same values and gradients as the composition; for backward it keeps ``x`` and the hidden
    pre-activation only (the GELU output is recomputed). No dropout between the layers.

    Shape:
        - ``x``: ``(..., in)``; ``fc1_weight``: ``(hidden, in)``; ``fc2_weight``: ``(out, hidden)``
        - Output: ``(..., out)``
    """
    if x.shape[-1] != fc1_weight.shape[1] or fc1_weight.shape[0] != fc2_weight.shape[1]:
        raise ValueError(
            f"shapes do not chain: x {tuple(x.shape)}, fc1_weight {tuple(fc1_weight.shape)}, "
            f"fc2_weight {tuple(fc2_weight.shape)}; need x[-1] == fc1_weight[1] and fc1_weight[0] == fc2_weight[1]"
        )
    return _LinearGeluLinear.apply(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
