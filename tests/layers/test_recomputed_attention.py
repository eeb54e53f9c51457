"""Attention that recomputes its probabilities (and qkv) in backward: same values and gradients as autograd through
the plain composition, in float64, and less kept for backward."""

import pytest
import torch
import torch.nn.functional as F
from saved_bytes import saved_bytes

from deformvision.layers.recomputed_attention import qkv_attention, softmax_attention


def _plain_attention(q, k, v, bias, scale):
    logits = q @ k.transpose(-2, -1) * scale
    return (logits if bias is None else logits + bias).softmax(-1) @ v


def _plain_qkv_attention(qkv, bias, scale, batch, heads):
    bw, n, c3 = qkv.shape
    q, k, v = qkv.view(batch, bw // batch, n, 3, heads, -1).permute(3, 0, 1, 4, 2, 5).unbind(0)
    out = _plain_attention(q, k, v, bias, scale)  # B, nW, heads, N, hd
    return out.transpose(-3, -2).reshape(bw, n, c3 // 3)


def _grads(out, inputs):
    torch.manual_seed(1)
    return torch.autograd.grad(out, inputs, torch.randn_like(out), retain_graph=True)


@pytest.mark.parametrize("bias_shape", [None, (1, 3, 5, 7), (2, 3, 5, 7), (3, 1, 7)])
def test_softmax_attention_matches_the_composition_float64(bias_shape):
    torch.manual_seed(0)
    qkv = torch.randn(2, 3, 7, 3, 4, dtype=torch.float64, requires_grad=True)  # q, k, v: views of one tensor
    q, k, v = qkv[:, :, :5, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # q 5 queries, k and v 7 keys
    inputs = [qkv]
    bias = None
    if bias_shape is not None:
        bias = torch.randn(bias_shape, dtype=torch.float64, requires_grad=True)
        inputs.append(bias)
    out = softmax_attention(q, k, v, bias, 0.7)
    ref = _plain_attention(q, k, v, bias, 0.7)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    for g, g_ref in zip(_grads(out, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-13)


def test_softmax_attention_gradcheck():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 3, dtype=torch.float64, requires_grad=True) for n in (4, 5, 5))
    bias = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: softmax_attention(*t, 0.5), (q, k, v, bias))


@pytest.mark.parametrize("batch, bias_shape", [(2, (1, 3, 9, 9)), (2, (4, 3, 9, 9)), (1, (4, 3, 9, 9)), (2, None)])
def test_qkv_attention_matches_the_composition_float64(batch, bias_shape):
    """Batch 1 with a per-window bias: the bias's gradient is then the logits' gradient itself (no summing)."""
    torch.manual_seed(0)
    heads, n, c_in, c = 3, 9, 5, 6
    x = torch.randn(batch * 4, n, c_in, dtype=torch.float64, requires_grad=True)  # 4 windows per image
    weight = torch.randn(3 * c, c_in, dtype=torch.float64, requires_grad=True)
    qkv_bias = torch.randn(3 * c, dtype=torch.float64, requires_grad=True)
    inputs = [x, weight, qkv_bias]
    bias = None
    if bias_shape is not None:
        bias = torch.randn(bias_shape, dtype=torch.float64, requires_grad=True)
        inputs.append(bias)
    qkv = F.linear(x, weight, qkv_bias)
    out = qkv_attention(qkv, x, weight, qkv_bias, bias, 0.6, batch, heads)
    ref = _plain_qkv_attention(qkv, bias, 0.6, batch, heads)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    for g, g_ref in zip(_grads(out, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-13)


def test_qkv_attention_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(4, 4, 3, dtype=torch.float64, requires_grad=True)  # batch 2, 2 windows of 4 tokens
    weight = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    qkv_bias = torch.randn(12, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, qkv_bias, bias):
        return qkv_attention(F.linear(x, weight, qkv_bias), x, weight, qkv_bias, bias, 0.5, 2, 2)

    assert torch.autograd.gradcheck(fn, (x, weight, qkv_bias, bias))


def test_keeps_neither_probabilities_nor_qkv():
    torch.manual_seed(0)
    batch, heads, n, c = 2, 2, 16, 8
    x = torch.randn(batch, n, c, requires_grad=True)
    linear = torch.nn.Linear(c, 3 * c)
    bias = torch.randn(1, heads, n, n, requires_grad=True)
    plain = saved_bytes(lambda: _plain_qkv_attention(linear(x), bias, 0.5, batch, heads))
    recomputed = saved_bytes(lambda: qkv_attention(linear(x), x, linear.weight, linear.bias, bias, 0.5, batch, heads))
    kept = [x, linear.weight, linear.bias, bias]  # the linear layer's own inputs and the (batch-shared) bias
    assert recomputed == sum(t.numel() * 4 for t in kept)
    probs_bytes, qkv_bytes = batch * heads * n * n * 4, batch * n * 3 * c * 4
    assert plain >= recomputed + probs_bytes + qkv_bytes - (bias.numel() + linear.bias.numel()) * 4


def test_rejects_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        softmax_attention(torch.randn(2, 4, 3), torch.randn(2, 5, 2), torch.randn(2, 5, 3), None, 1.0)
    with pytest.raises(ValueError, match=r"must be \(B\*nW, N, 3C\)"):
        qkv_attention(torch.randn(3, 4, 12), torch.randn(3, 4, 5), torch.randn(12, 5), None, None, 1.0, 2, 2)


def test_window_attention_recomputes_qkv_with_the_op_that_made_it():
    """float32 CPU: layers.Linear makes qkv through oneDNN (ops.linear), so the backward must recompute it that way
    too (F.linear, i.e. aten::addmm, gives other float32 roundings and other probabilities than the forward's)."""
    from deformvision.layers import WindowAttention
    from deformvision.ops.linear import onednn_available

    if not onednn_available():
        pytest.skip("this PyTorch has no oneDNN linear: every product is F.linear")
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, window_size=4, shift_size=2).train()
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    with torch.profiler.profile() as prof:
        attn(x).sum().backward()
    names = {event.name for event in prof.events()}
    assert "mkldnn::_linear_pointwise" in names and "aten::addmm" not in names
