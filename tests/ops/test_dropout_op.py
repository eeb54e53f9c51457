"""deformvision.ops.dropout / layers.Dropout: F.dropout's distribution and scaling, exact gradients, the
plain path where it must be."""

import pytest
import torch
import torch.nn.functional as F

from deformvision.layers import Dropout
from deformvision.ops import dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_scaling_and_gradient(p):
    torch.manual_seed(0)
    x = (torch.rand(400, 500) + 0.5).requires_grad_()  # no zeros: a zero output is a dropped element
    out = dropout(x, p)
    kept = out != 0
    # 200k Bernoulli(1 - p) draws: the kept fraction is within 5 standard deviations of 1 - p
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    grad = torch.randn_like(x)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / (1 - p), 0.0))


def test_masks_differ_between_calls_and_follow_the_seed():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), a)
    assert not torch.equal(a, b)


def test_identity_and_plain_cases():
    x = torch.randn(10, 10)
    assert torch.equal(dropout(x, 0.3, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    layer = Dropout(0.5, inplace=True)
    y = x.clone()
    assert layer(y) is y  # F.dropout's in-place path


def test_bad_p():
    for p in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="p must be a probability in"):
            dropout(torch.ones(3), p)


def test_layer_matches_module_semantics():
    layer = Dropout(0.25)
    assert isinstance(layer, torch.nn.Dropout)
    x = torch.randn(50, 50)
    assert torch.equal(layer.eval()(x), F.dropout(x, 0.25, training=False))
    assert ((layer.train()(x) == 0).float().mean() - 0.25).abs() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_the_drop_probability(dtype):
    """A bfloat16 uniform number steps by 2^-8, so `rand >= 0.1` in bfloat16 would drop ~0.102: half precision must
    draw as F.dropout does (4M draws: within 5 standard deviations of p)."""
    torch.manual_seed(0)
    n, p = 4_000_000, 0.1
    dropped = (dropout(torch.ones(n, dtype=dtype), p) == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_cpu_autocast_keeps_the_fast_mask():
    """Autocast does not cast dropout: a float32 tensor under CPU autocast still gets the uniform-float mask,
    which draws other numbers than F.dropout's bernoulli_ for the same seed."""
    x = torch.ones(1000)
    torch.manual_seed(5)
    plain = dropout(x, 0.5)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(under_autocast, plain) and not torch.equal(plain, F.dropout(x, 0.5))
