"""``softmax(q k^T * scale + bias) v`` that keeps no attention probabilities for backward: they are recomputed.

Autograd through the explicit composition stores the ``(N, M)`` probabilities of every head (for the softmax's
backward and the weight gradient of ``probs @ v``) besides ``q``, ``k`` and ``v``; the CPU math kernel of
``scaled_dot_product_attention`` with a bias that needs a gradient stores as much. :func:`softmax_attention`
keeps ``q``, ``k``, ``v`` and the bias only (when ``q``, ``k``, ``v`` are views of one ``qkv`` tensor, that
tensor once) and recomputes the logits and the softmax in the backward pass, as FlashAttention does, in plain
PyTorch ops: one more ``q k^T`` and softmax per call. Forward values are those of the composition (same ops in
the same order); gradients are computed with the same kernels in the same order as autograd's.

:func:`qkv_attention` goes one step further for window attention: it keeps the ``qkv`` linear layer's input (kept by
that layer anyway) instead of ``qkv`` and recomputes ``qkv`` too. The helpers (:func:`attention_probs`,
:func:`softmax_backward`, :func:`qk_backward`, :func:`bias_grad`) are shared with the deformable attention's function,
which recomputes its position bias as well (``layers/deformable_attention.py``).
"""

import torch

from deformvision.ops.linear import linear


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + bias)`` over the last dim: ``(..., N, d), (..., M, d)`` -> ``(..., N, M)``."""
    logits = q @ k.transpose(-2, -1) * scale  # ..., N, M
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1)


def softmax_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    need_v: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recompute the probabilities of ``out = softmax(q k^T * scale + bias) @ v`` and go back through the softmax.

    Shape: ``grad_out`` ``(..., N, d_v)``, q ``(..., N, d)``, k ``(..., M, d)``, v ``(..., M, d_v)``.

    Returns:
        The gradient of the logits ``(..., N, M)`` (that of the bias before summing over its broadcast dims) and
        ``grad_v`` (``None`` unless ``need_v``). Same kernels as autograd's backward of the composition.
    """
    probs = attention_probs(q, k, bias, scale)  # ..., N, M: recomputed, not kept by the forward pass
    grad_v = probs.transpose(-2, -1) @ grad_out if need_v else None  # ..., M, d_v
    grad_logits = torch.ops.aten._softmax_backward_data(grad_out @ v.transpose(-2, -1), probs, -1, probs.dtype)
    return grad_logits, grad_v


def qk_backward(
    grad_logits: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, needs: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``grad_q, grad_k`` of ``logits = q k^T * scale``; scales ``grad_logits`` in place (take the bias's gradient
    from it first)."""
    grad_scaled = grad_logits.mul_(scale)  # through "* scale", as autograd (in place: one N x M buffer less)
    grad_q = grad_scaled @ k if needs[0] else None  # ..., N, d
    grad_k = grad_scaled.transpose(-2, -1) @ q if needs[1] else None  # ..., M, d
    return grad_q, grad_k


def bias_grad(grad_logits: torch.Tensor, bias: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
    """The bias's gradient: ``grad_logits`` summed over the bias's broadcast dims, never a view of it."""
    if bias is None or not needed:
        return None
    grad = grad_logits.sum_to_size(bias.shape)
    return grad.clone() if grad.numel() == grad_logits.numel() else grad  # nothing summed: a view, copy it


class _SoftmaxAttention(torch.autograd.Function):
    """Keeps ``q, k, v, bias``; recomputes the ``(..., N, M)`` logits and probabilities in backward."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        ctx.save_for_backward(q, k, v, bias)
        ctx.scale = scale
        return attention_probs(q, k, bias, scale) @ v  # ..., N, d_v

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias = ctx.saved_tensors
        grad_logits, grad_v = softmax_backward(grad_out, q, k, v, bias, ctx.scale, ctx.needs_input_grad[2])
        grad_bias = bias_grad(grad_logits, bias, ctx.needs_input_grad[3])
        grad_q, grad_k = qk_backward(grad_logits, q, k, ctx.scale, ctx.needs_input_grad[:2])
        return grad_q, grad_k, grad_v, grad_bias, None


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """``softmax(q @ k^T * scale + bias) @ v``, the probabilities recomputed in backward instead of kept.

    No dropout. ``q``, ``k``, ``v`` may be strided views (of one ``qkv`` tensor: then only that is kept).

    Shape:
        - ``q``: ``(..., N, d)``; ``k``: ``(..., M, d)``; ``v``: ``(..., M, d_v)`` (same leading dims);
          ``bias``: broadcastable to ``(..., N, M)``, or ``None``
        - Output: ``(..., N, d_v)``
    """
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2] or not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit (..., N/M, d)")
    return _SoftmaxAttention.apply(q, k, v, bias, scale)


def _split_heads(qkv: torch.Tensor, batch: int, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B*nW, N, 3C)`` -> q, k, v views ``(B, nW, heads, N, C/heads)``."""
    bw, n, c3 = qkv.shape
    qkv = qkv.view(batch, bw // batch, n, 3, num_heads, c3 // (3 * num_heads))  # B, nW, N, 3, heads, hd
    return qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)


class _QKVAttention(torch.autograd.Function):
    """Attention of the output of a ``qkv`` linear layer that keeps neither the probabilities nor ``qkv``.

    Kept: the linear layer's input ``x`` (which that layer keeps anyway), its weight and bias, and the attention
    bias. Recomputed in backward: ``qkv = ops.linear(x, weight, qkv_bias)`` (the op of ``layers.Linear``, which made
    it), the logits and the probabilities. The gradient goes to ``qkv`` only; the layer's own backward takes it on to
    ``x``, the weight and the bias.
    """

    @staticmethod
    def forward(ctx, qkv, x, weight, qkv_bias, bias, scale, batch, num_heads):
        # qkv: B*nW, N, 3C (= ops.linear(x, weight, qkv_bias)); x: B*nW, N, C_in; bias: broadcastable to
        # (B, nW, heads, N, N)
        q, k, v = _split_heads(qkv, batch, num_heads)  # B, nW, heads, N, hd
        out = attention_probs(q, k, bias, scale) @ v  # B, nW, heads, N, hd
        ctx.save_for_backward(x, weight, qkv_bias, bias)
        ctx.args = scale, batch, num_heads
        return out.transpose(-3, -2).reshape(qkv.shape[0], qkv.shape[1], -1)  # B*nW, N, C (heads concatenated)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, qkv_bias, bias = ctx.saved_tensors
        scale, batch, num_heads = ctx.args
        qkv = linear(x, weight, qkv_bias)  # B*nW, N, 3C: recomputed by the op that made it (layers.Linear's)
        q, k, v = _split_heads(qkv, batch, num_heads)  # B, nW, heads, N, hd
        grad_out = grad_out.reshape(*q.shape[:2], q.shape[3], num_heads, -1).transpose(-3, -2)  # B, nW, heads, N, hd
        grad_qkv = torch.empty_like(qkv)  # B*nW, N, 3C, filled head by head below
        grad_q_slot, grad_k_slot, grad_v_slot = _split_heads(grad_qkv, batch, num_heads)
        grad_logits, grad_v = softmax_backward(grad_out, q, k, v, bias, scale, need_v=True)  # B, nW, heads, N, N
        grad_v_slot.copy_(grad_v)
        del grad_v, v
        grad_bias = bias_grad(grad_logits, bias, ctx.needs_input_grad[4])
        grad_q, grad_k = qk_backward(grad_logits, q, k, scale, (True, True))
        grad_q_slot.copy_(grad_q)
        grad_k_slot.copy_(grad_k)
        return grad_qkv, None, None, None, grad_bias, None, None, None


def qkv_attention(
    qkv: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float,
    batch: int,
    num_heads: int,
) -> torch.Tensor:
    """Multi-head ``softmax(q k^T * scale + bias) v`` of ``qkv = ops.linear(x, weight, qkv_bias)``, keeping neither
    the probabilities nor ``qkv`` for backward (both recomputed from ``x``, which the linear layer keeps anyway).

    ``qkv`` must be exactly ``deformvision.ops.linear(x, weight, qkv_bias)`` (the output of the caller's
    ``layers.Linear``): the backward pass recomputes it that way. Channels of ``qkv`` are ``(3, heads, hd)``, as
    in timm/Swin. No dropout.

    Shape:
        - ``qkv``: ``(B*nW, N, 3C)`` (``nW`` windows per image, or 1); ``x``: ``(B*nW, N, C_in)``;
          ``bias``: broadcastable to ``(B, nW, heads, N, N)``, or ``None``
        - Output: ``(B*nW, N, C)``, heads concatenated along the channels
    """
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * num_heads) or qkv.shape[0] % batch or x.shape[:2] != qkv.shape[:2]:
        raise ValueError(
            f"qkv {tuple(qkv.shape)} and x {tuple(x.shape)} must be (B*nW, N, 3C) and (B*nW, N, C_in) "
            f"with 3 * num_heads ({num_heads}) dividing 3C and batch ({batch}) dividing B*nW"
        )
    return _QKVAttention.apply(qkv, x, weight, qkv_bias, bias, scale, batch, num_heads)
